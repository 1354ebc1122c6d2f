"""Test helpers: loading the top-level scripts and data tools, running a tool and checking its
one-line errors, synthetic prepared splits, BreaKHis-named records, and callbacks that capture
or interrupt a run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import keras
import numpy as np

from bc_keras import cli, training
from bc_keras.histology.breakhis import SUBTYPES, parse_filename
from bc_keras.histology.synthetic import write_synthetic_tree
from bc_keras.prepare import ImageRecord, prepare_split

REPO_ROOT = Path(__file__).resolve().parents[1]
# The unpatched builder: probes replace each other instead of piling up.
TRAINING_CALLBACKS = training.training_callbacks


def load_script(name: str):
    """Imports a top-level script (train_cnn.py, predict.py, ...) by path."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO_ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def load_tool(name: str):
    """Imports a data tool (data_tools/NAME.py) by path."""
    path = REPO_ROOT / "data_tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"data_tools_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(tool, argv, capsys):
    """(exit code, stdout, stderr) of a tool's `main`, run as its script runs it."""
    code = cli.run_script(tool.main, [str(a) for a in argv], interrupted=cli.NOTHING_WRITTEN)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    """Exit code 2 and one `error: ` line, the last one (warnings may come first), naming
    every fragment."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], err
    for fragment in fragments:
        assert fragment in lines[-1], err


def make_split(tmp_path_factory, **tree) -> Path:
    """A synthetic tree (`write_synthetic_tree` with `tree`, 48x32 px, seed 0 unless given)
    prepared with the default patient split (seed 42, symbolic links); returns the split."""
    root = tmp_path_factory.mktemp("tree")
    write_synthetic_tree(root, **{"size": (48, 32), "seed": 0, **tree})
    out = tmp_path_factory.mktemp("split") / "prepared"
    prepare_split(root, out, seed=42)
    return out


def make_records(sizes_by_subtype):
    """Records for patients of the given image counts, e.g. {"A": [10, 50], "DC": [5]}. Each
    subtype's slides are numbered from 1000 in a year of its own, so that no two subtypes share
    a slide id (the patient key)."""
    records = []
    for offset, (subtype, sizes) in enumerate(sizes_by_subtype.items()):
        label = SUBTYPES[subtype][0]
        code = "B" if label == "benign" else "M"
        for number, size in enumerate(sizes):
            for sequence in range(size):
                name = (
                    f"SOB_{code}_{subtype}-{14 + offset}-{1000 + number}-40-{sequence + 1:03d}.png"
                )
                parsed = parse_filename(name)
                records.append(
                    ImageRecord(name, name, label, subtype, parsed.patient, 40,
                                slide_id=parsed.slide_id)  # fmt: skip
                )
    return records


def training_state(model, callbacks) -> dict:
    """What a resumed run must restore: weights, optimizer step and learning rate, and the
    early-stopping and plateau counters."""
    stopping = training.early_stopping_of(callbacks)
    plateau = [c for c in callbacks if isinstance(c, keras.callbacks.ReduceLROnPlateau)]
    return {
        "weights": [np.array(w) for w in model.get_weights()],
        "iterations": int(model.optimizer.iterations.numpy()),
        "learning_rate": float(np.asarray(model.optimizer.learning_rate)),
        "wait": stopping.wait,
        "best": stopping.best,
        "best_weights": [np.array(w) for w in stopping.best_weights or []],
        "plateau_wait": plateau[0].wait if plateau else None,
    }


class StateProbe(keras.callbacks.Callback):
    """Put last: records the training state after the others restored theirs (train begin)
    and at the end of every epoch, and interrupts with Ctrl-C after `stop_after` epochs of
    the phase whose number is `phase` (None: any)."""

    def __init__(self, callbacks, records: list, stop_after=None, phase=None):
        super().__init__()
        self.callbacks, self.records = callbacks, records
        self.stop_after, self.phase = stop_after, phase

    def on_train_begin(self, logs=None):
        self.records.append(("begin", self.phase, training_state(self.model, self.callbacks)))

    def on_epoch_end(self, epoch, logs=None):
        self.records.append((epoch, self.phase, training_state(self.model, self.callbacks)))
        if self.stop_after is not None and epoch + 1 == self.stop_after:
            raise KeyboardInterrupt


def probe_callbacks(monkeypatch, records: list, stop_after=None, stop_phase=None):
    """Makes every run append a `StateProbe`; it interrupts after `stop_after` epochs of phase
    `stop_phase` (or of the single phase)."""

    def with_probe(*args, **kwargs):
        callbacks = TRAINING_CALLBACKS(*args, **kwargs)
        phase = kwargs.get("phase")
        stop = stop_after if stop_phase in (None, phase) else None
        return callbacks + [StateProbe(callbacks, records, stop, phase)]

    monkeypatch.setattr(training, "training_callbacks", with_probe)
