"""Scripts: user mistakes as one line (exit 2), bugs with their traceback, a quiet start, and a
TensorFlow-free data preparation."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
from helpers import REPO_ROOT

from bc_keras import cli
from bc_keras.errors import DataError, UserError


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys):
    def user_mistake(argv):
        raise DataError("folder x does not exist;\n  pass another one")

    assert cli.run_script(user_mistake, []) == 2
    assert capsys.readouterr().err == "error: folder x does not exist; pass another one\n"
    assert issubclass(DataError, UserError) and issubclass(UserError, ValueError)

    def bug(argv):
        raise ValueError("shapes (3,) and (4,) are incompatible")

    with pytest.raises(ValueError, match="incompatible"):
        cli.run_script(bug, [])

    def interrupted(argv):
        raise KeyboardInterrupt

    assert cli.run_script(interrupted, []) == 130
    assert "--resume" in capsys.readouterr().err


def test_warnings_print_as_one_line(capsys):
    cli.quiet_start()
    warnings.warn("two\n   lines", UserWarning, stacklevel=1)
    assert capsys.readouterr().err == "warning: two lines\n"


def _run(*args):
    # As a user starts it: no log level chosen (an in-process run_script may have set one).
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
def test_a_script_starts_quietly_and_fails_in_one_line(tmp_path):
    result = _run("train_cnn.py", "--data", str(tmp_path / "missing"), "--run-dir",
                  str(tmp_path / "run"), "--model-out", str(tmp_path / "m.h5"))  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: Data folder {tmp_path / 'missing'} does not exist; prepare one with "
        "`python data_tools/prepare_breakhis.py SOURCE --out DIR`."
    ]


@pytest.mark.slow
def test_the_benchmark_starts_quietly_and_fails_in_one_line(tmp_path):
    result = _run("-m", "bc_keras.bench", "infer", str(tmp_path), "--image-size", "32")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "not a prepared split" in line


@pytest.mark.parametrize(
    ("module", "argv"), [("bench", ["infer", "--help"]), ("probe", ["--help"])]
)
def test_help_of_the_benchmark_and_the_probe_never_imports_tensorflow(module, argv):
    code = (
        "import sys\n"
        f"from bc_keras import {module}\n"
        f"try:\n    {module}.main({argv!r})\n"
        "except SystemExit:\n    pass\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'\n"
    )
    result = _run("-c", code)
    assert result.returncode == 0, result.stderr


def test_preparing_data_never_imports_tensorflow():
    code = (
        "import sys, runpy\n"
        "import bc_keras.prepare, bc_keras.cli, bc_keras.histology.images, bc_keras.errors\n"
        "sys.argv = ['prepare_breakhis.py', '--help']\n"
        "try:\n    runpy.run_path('data_tools/prepare_breakhis.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'\n"
    )
    result = _run("-c", code)
    assert result.returncode == 0, result.stderr
