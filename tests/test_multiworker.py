"""--strategy multiworker with two local worker processes on CPU: both finish, the chief's model
equals a single-process run with the same global batch and seed, and only the chief writes the
run folder."""

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


def test_two_workers_train_like_one_process_and_only_the_chief_writes(synthetic_split, tmp_path):
    single = subprocess.run(
        [sys.executable, *_cnn_args(synthetic_split, tmp_path / "single", tmp_path / "single.h5")],
        cwd=REPO_ROOT, capture_output=True, text=True, env=_environment(), timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    run_dir, model_out = tmp_path / "multi", tmp_path / "multi.h5"
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        # The second worker writes with umask 077: any file it left in the run folder would
        # show as private, where the chief's follow the usual umask 022.
        command = _cnn_args(synthetic_split, run_dir, model_out, "--strategy", "multiworker")
        wrapped = f"import os, runpy, sys; os.umask({0o077 if index else 0o022}); " + (
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
        )
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", wrapped, *command],
                cwd=REPO_ROOT,
                env=_environment(TF_CONFIG=tf_config),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    assert "the chief writes" in outputs[1][0]
    reference, _ = models.load_model(tmp_path / "single.h5")
    chief, metadata = models.load_model(model_out)
    assert metadata["run_dir"] == str(run_dir)
    # The same model up to float rounding: the all-reduce sums in another order than one
    # device does. Compared through its outputs: a convolution bias before BatchNorm has a
    # zero gradient, so Adam turns rounding noise into arbitrary (and irrelevant) values there.
    ours = evaluation.read_predictions(run_dir)
    theirs = evaluation.read_predictions(tmp_path / "single")
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


def test_multiworker_needs_tf_config_and_a_run_dir(synthetic_split, tmp_path):
    result = subprocess.run(
        [sys.executable, *_cnn_args(synthetic_split, tmp_path / "r", tmp_path / "m.h5",
                                    "--strategy", "multiworker")],
        cwd=REPO_ROOT, capture_output=True, text=True, env=_environment(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --strategy multiworker reads")
