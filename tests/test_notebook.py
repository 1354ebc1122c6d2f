"""examples/quickstart.ipynb runs top to bottom: configs built in Python, training, predictions
on files and arrays (equal), and figures shown inline."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


@pytest.mark.slow
def test_the_quickstart_notebook_runs_and_shows_its_figures(tmp_path):
    import nbclient  # the dev extra: make test installs them
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "the training curves and the inline histogram are displayed"
    texts = "".join(o.get("text", "") for o in outputs)
    assert "refused: --batch-size 0: must be a positive integer" in texts
    assert not [o for o in outputs if o.get("output_type") == "error"]
