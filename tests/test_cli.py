"""Scripts: user mistakes as one line (exit 2), bugs with their traceback, a quiet start, a
TensorFlow-free data preparation, and `bc-keras`: each subcommand is its script."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from helpers import REPO_ROOT, load_script

from bc_keras import cli, commands
from bc_keras.errors import DataError, UserError

# Each subcommand of `bc-keras` and the script of a clone it is.
SCRIPTS = {
    "synthetic": "data_tools/make_synthetic_breakhis",
    "prepare": "data_tools/prepare_breakhis",
    "stats": "data_tools/dataset_stats",
    "audit": "data_tools/audit_split",
    "normalize": "data_tools/normalize_stains",
    "tfrecords": "data_tools/export_tfrecords",
    "train cnn": "train_cnn",
    "train transfer": "train_transfer",
    "train simclr": "train_simclr",
    "predict": "predict",
}
# `python -m bc_keras.<x>` commands whose usage names what the user typed (sys.argv[0]).
NAMED_BY_ARGV = {"export"}


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
    ("module", "argv"),
    [
        ("bench", ["infer", "--help"]),
        ("probe", ["--help"]),
        ("commands", ["--help"]),
        ("commands", ["train", "cnn", "--help"]),
        ("commands", ["prepare", "--help"]),
    ],
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


def _help(main, argv, program, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [program])
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    assert sys.argv == [program]  # the subcommand's name was set for its run only
    return capsys.readouterr().out


@pytest.mark.parametrize("name", [c.name for c in commands.COMMANDS])
def test_each_subcommand_is_its_script_with_the_same_help(name, monkeypatch, capsys):
    command = commands.BY_NAME[name]
    module = importlib.import_module(command.module)
    if name in SCRIPTS:
        script = load_script(SCRIPTS[name])
        assert script.main is module.main  # the shim runs the command's code
    else:  # a `python -m bc_keras.<x>` command names itself so
        script = module
    modes = [["pretrain"], ["finetune"], ["linear"]] if name == "train simclr" else []
    for mode in [[], *modes]:
        argv = [*mode, "--help"]
        if name in SCRIPTS:
            path = f"{SCRIPTS[name]}.py"
            as_script = _help(script.main, argv, path, monkeypatch, capsys)
            assert as_script.startswith(f"usage: {' '.join([Path(path).name, *mode])} ")
        # The same parser: given the same program name, the same help, character for character.
        expected = _help(script.main, argv, f"bc-keras {name}", monkeypatch, capsys)
        got = _help(commands.main, [*name.split(), *argv], "/bin/bc-keras", monkeypatch, capsys)
        assert got == expected
        named = name in SCRIPTS or name in NAMED_BY_ARGV
        assert got.startswith("usage: bc-keras " if named else "usage: python -m ")


def test_the_command_lists_every_subcommand_on_one_line(capsys):
    assert commands.main(["--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for command in commands.COMMANDS:
        (line,) = [line for line in lines if line.startswith(f"  {command.name}  ")]
        assert line.split(None, len(command.name.split()))[-1] == command.summary
    assert commands.main(["train", "--help"]) == 0
    listed = [
        line.split()[:2] for line in capsys.readouterr().out.splitlines() if line[:3] == "  t"
    ]
    assert listed == [["train", "cnn"], ["train", "transfer"], ["train", "simclr"]]
    assert commands.main(["--version"]) == 0
    assert capsys.readouterr().out == "bc-keras 0.1.0\n"


@pytest.mark.parametrize(
    ("argv", "said", "named"),
    [
        (
            ["segment", "--data", "x"],
            "unknown command 'segment'",
            [c.name for c in commands.COMMANDS],
        ),
        (["train"], "'train' needs a model", ["train cnn", "train transfer", "train simclr"]),
        (["train", "resnet"], "unknown command 'train resnet'", ["train cnn", "train simclr"]),
        ([], "no command given", ["prepare", "predict", "report"]),
    ],
)
def test_an_unknown_subcommand_is_one_error_line_naming_the_known_ones(argv, said, named, capsys):
    assert commands.main(argv) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(f"error: {said}; choose one of: ") and captured.out == ""
    for name in named:
        assert name in line
    if argv[:1] != ["train"]:
        assert "train cnn" in line and "predict" in line


def test_a_subcommand_keeps_the_one_line_errors_and_names_itself(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["/bin/bc-keras"])
    assert commands.main(["audit", str(tmp_path / "missing")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {tmp_path / 'missing'} is not a prepared split")
    with pytest.raises(SystemExit) as exit_:
        commands.main(["stats"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: bc-keras stats [-h] PATH")
    assert err.splitlines()[-1] == (
        "bc-keras stats: error: the following arguments are required: PATH"
    )
    assert sys.argv == ["/bin/bc-keras"]
