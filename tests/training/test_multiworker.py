"""--strategy multiworker with two local worker processes on CPU: both finish, the chief's model
equals a single-process run with the same global batch and seed, only the chief writes the run
folder, and a run interrupted on both workers resumes from the chief's backup."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO_ROOT

from bc_keras import evaluation, models, runs

pytestmark = pytest.mark.slow


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for item in sockets:
        item.bind(("localhost", 0))
    ports = [item.getsockname()[1] for item in sockets]
    for item in sockets:
        item.close()
    return ports


def _cnn_args(split, run_dir, model_out, *extra):
    return ["train_cnn.py", "--data", str(split), "--image-size", "32", "--batch-size", "8",
            "--epochs", "2", "--dropout", "0", "--seed", "3", "--run-dir", str(run_dir),
            "--model-out", str(model_out), *extra]  # fmt: skip


def _environment(**values):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "TF_CPP_MIN_LOG_LEVEL")}
    env.update(values)
    return env


@pytest.fixture(scope="module")
def single_run(synthetic_split, tmp_path_factory):
    """The single-process run every multi-worker run is compared with: (run folder, model)."""
    folder = tmp_path_factory.mktemp("single")
    single = subprocess.run(
        [sys.executable, *_cnn_args(synthetic_split, folder / "run", folder / "single.h5")],
        cwd=REPO_ROOT, capture_output=True, text=True, env=_environment(), timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr
    return folder / "run", folder / "single.h5"


# Run by each worker: its umask, then optionally a callback that interrupts training (as Ctrl-C
# would) at the end of the first epoch, then the script.
_WORKER = """
import os, runpy, sys
os.umask(int(sys.argv[1]))
if sys.argv[2] == "interrupt":
    import keras
    from bc_keras import training
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt
    callbacks = training.training_callbacks
    training.training_callbacks = lambda *a, **k: callbacks(*a, **k) + [Interrupt()]
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _two_workers(split, run_dir, model_out, *extra, interrupt=False):
    """Runs train_cnn.py on a two-worker local cluster; returns [(exit code, stdout, stderr)]."""
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        # The second worker writes with umask 077: any file it left in the run folder would
        # show as private, where the chief's follow the usual umask 022.
        command = _cnn_args(split, run_dir, model_out, "--strategy", "multiworker", *extra)
        umask = str(0o077 if index else 0o022)
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, umask, "interrupt" if interrupt else "-", *command],
                cwd=REPO_ROOT,
                env=_environment(TF_CONFIG=tf_config),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    outputs = [process.communicate(timeout=300) for process in processes]
    return [(p.returncode, out, err) for p, (out, err) in zip(processes, outputs, strict=True)]


def _assert_like_single_run(run_dir, model_out, single_run) -> None:
    """The multi-worker model equals the single-process one up to float rounding, and the run
    folder holds only the chief's files."""
    single_dir, single_model = single_run
    reference, _ = models.load_model(single_model)
    chief, metadata = models.load_model(model_out)
    assert metadata["run_dir"] == str(run_dir)
    # The all-reduce sums in another order than one device does. Compared through its
    # outputs: a convolution bias before BatchNorm has a zero gradient, so Adam turns rounding
    # noise into arbitrary (and irrelevant) values there.
    ours, theirs = evaluation.read_predictions(run_dir), evaluation.read_predictions(single_dir)
    assert ours["filename"] == theirs["filename"]
    np.testing.assert_allclose(ours["probability"], theirs["probability"], atol=2e-3)
    kernels = [w for w in chief.weights if w.path.endswith("kernel")]
    for variable in kernels:
        expected = reference.get_layer(variable.path.split("/")[-2]).kernel.numpy()
        difference = np.abs(variable.numpy() - expected)
        assert difference.mean() < 1e-4 and difference.max() < 1e-2, variable.path
    written = [path for path in run_dir.rglob("*") if path.is_file()]
    assert {p.name for p in written} >= {runs.CONFIG_FILE, runs.METRICS_FILE, runs.HISTORY_FILE}
    private = [p for p in written if not stat.S_IMODE(p.stat().st_mode) & 0o044]
    assert private == [], "the second worker wrote to the run folder"
    assert json.loads((run_dir / runs.CONFIG_FILE).read_text())["strategy"] == "multiworker"


def test_two_workers_train_like_one_process_and_only_the_chief_writes(
    synthetic_split, single_run, tmp_path
):
    run_dir, model_out = tmp_path / "multi", tmp_path / "multi.h5"
    results = _two_workers(synthetic_split, run_dir, model_out)
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert "the chief writes" in results[1][1]
    _assert_like_single_run(run_dir, model_out, single_run)


def test_an_interrupted_multiworker_run_resumes_from_the_chiefs_backup(
    synthetic_split, single_run, tmp_path
):
    run_dir, model_out = tmp_path / "multi", tmp_path / "multi.h5"
    results = _two_workers(synthetic_split, run_dir, model_out, interrupt=True)
    for code, _, err in results:
        assert code == 130, err[-3000:]
    assert "--resume" in results[0][2]
    assert runs.has_backup(run_dir) and not model_out.exists()
    results = _two_workers(synthetic_split, run_dir, model_out, "--resume")
    for code, _, err in results:
        assert code == 0, err[-3000:]
    # The second epoch only, on both workers: each restored the chief's backup.
    assert runs.read_history(run_dir)["epoch"] == [0.0, 1.0]
    assert not runs.has_backup(run_dir)
    _assert_like_single_run(run_dir, model_out, single_run)


def test_multiworker_needs_tf_config_and_a_run_dir(synthetic_split, tmp_path):
    result = subprocess.run(
        [sys.executable, *_cnn_args(synthetic_split, tmp_path / "r", tmp_path / "m.h5",
                                    "--strategy", "multiworker")],
        cwd=REPO_ROOT, capture_output=True, text=True, env=_environment(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --strategy multiworker reads")
