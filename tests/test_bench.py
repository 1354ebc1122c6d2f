"""Tests of `python -m bc_keras.bench`: the JSON each benchmark prints last, its ratios, the images
it counted and its one-line errors. Speed itself is the benchmarks' business, never a test's."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from bc_keras import bench, benchmarks, cli
from bc_keras.errors import ConfigError

SETTINGS_KEYS = {
    "model",
    "image_size",
    "batch_size",
    "steps",
    "repeats",
    "mixed_precision",
    "jit_compile",
    "seed",
    "device",
}
STEPS, BATCH_SIZE, REPEATS = 3, 4, 2
TINY = [
    "--image-size",
    "32",
    "--batch-size",
    str(BATCH_SIZE),
    "--steps",
    str(STEPS),
    "--repeats",
    str(REPEATS),
]
# Every timed pass runs `STEPS` full batches, the warm-up ones included.
IMAGES = STEPS * BATCH_SIZE * REPEATS


def _run(capsys, argv) -> tuple[list[str], dict]:
    assert bench.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return lines[:-1], json.loads(lines[-1])


def _check_ratios(result: dict, ratio: str, first: str, second: str) -> None:
    """`ratio` is the quotient of the printed (rounded) median rates, and `ratio`_cpu that of
    the CPU milliseconds per item the other way round (time per item is the inverse of a rate)."""
    assert result[first] > 0 and result[second] > 0
    assert result[ratio] == round(result[first] / result[second], 2)
    first_ms, second_ms = result[f"{first}_cpu_ms"], result[f"{second}_cpu_ms"]
    assert first_ms > 0 and second_ms > 0
    assert result[f"{ratio}_cpu"] == round(second_ms / first_ms, 2)


def _fails(capsys, argv) -> str:
    assert cli.run_script(bench.main, argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("error: ")
    return line


def test_pipeline_benchmark_prints_json_last(synthetic_split, capsys):
    argv = ["pipeline", str(synthetic_split), "--batches", "2", "--batch-size", "4"]
    _, result = _run(capsys, [*argv, "--image-size", "32"])
    assert set(result) == {
        "generator",
        "tfdata_first_epoch",
        "tfdata_cached_epoch",
        "ratio_first",
        "ratio_cached",
    }
    # The rates are rounded to 0.1 img/s and the ratios to two decimals.
    for ratio, rate in (
        ("ratio_first", "tfdata_first_epoch"),
        ("ratio_cached", "tfdata_cached_epoch"),
    ):
        assert result[ratio] == pytest.approx(
            result[rate] / result["generator"], rel=0.02, abs=0.011
        )
    assert all(value > 0 for value in result.values())


def test_train_benchmark_counts_every_image_of_both_inputs(synthetic_split, capsys):
    lines, result = _run(capsys, ["train", str(synthetic_split), *TINY])
    assert set(result) == SETTINGS_KEYS | {
        "pipeline",
        "in_memory",
        "ratio_pipeline",
        "pipeline_cpu_ms",
        "in_memory_cpu_ms",
        "ratio_pipeline_cpu",
        "pipeline_images",
        "in_memory_images",
    }
    _check_ratios(result, "ratio_pipeline", "pipeline", "in_memory")
    # Counted by the model's confusion counts: every pass trained on steps x batch images.
    assert result["pipeline_images"] == result["in_memory_images"] == IMAGES
    assert result["model"] == "cnn" and result["image_size"] == 32
    assert (result["mixed_precision"], result["jit_compile"]) == (False, False)
    assert any(f"ratio {result['ratio_pipeline']}" in line for line in lines)


def test_train_benchmark_with_mixed_precision_and_xla(synthetic_split, capsys):
    lines, result = _run(
        capsys, ["train", str(synthetic_split), *TINY, "--mixed-precision", "--jit-compile"]
    )
    assert (result["mixed_precision"], result["jit_compile"]) == (True, True)
    assert result["pipeline_images"] == result["in_memory_images"] == IMAGES
    # The process-wide dtype policy is restored once the models are built.
    assert keras.config.dtype_policy().name == "float32"
    assert any("mixed_precision, jit_compile" in line for line in lines)
    if result["device"] == "CPU":
        assert any(line.startswith("note: ") for line in lines)


def test_infer_benchmark_predicts_every_file_and_tensor(synthetic_split, capsys):
    lines, result = _run(capsys, ["infer", str(synthetic_split), *TINY])
    assert set(result) == SETTINGS_KEYS | {
        "files",
        "in_memory",
        "ratio",
        "files_cpu_ms",
        "in_memory_cpu_ms",
        "ratio_cpu",
        "files_images",
        "in_memory_images",
        "batch1_ms_files",
        "batch1_ms_in_memory",
    }
    _check_ratios(result, "ratio", "files", "in_memory")
    # Counted from the predictions: one row per file, one output per in-memory image.
    assert result["files_images"] == result["in_memory_images"] == IMAGES
    assert result["batch1_ms_files"] > 0 and result["batch1_ms_in_memory"] > 0
    assert any(f"ratio {result['ratio']}" in line for line in lines)


@pytest.mark.slow
def test_simclr_benchmark_counts_pairs_and_images(synthetic_split, capsys):
    _, result = _run(capsys, ["simclr", str(synthetic_split), *TINY])
    assert set(result) == SETTINGS_KEYS | {
        "supervised",
        "contrastive",
        "ratio_step",
        "supervised_cpu_ms",
        "contrastive_cpu_ms",
        "ratio_step_cpu",
        "supervised_images",
        "contrastive_pairs",
    }
    assert result["model"] == "resnet18"
    _check_ratios(result, "ratio_step", "supervised", "contrastive")
    # Counted from the optimizers' steps over batches of steps x batch size.
    assert result["supervised_images"] == result["contrastive_pairs"] == IMAGES


@pytest.mark.parametrize("model", bench.BENCH_MODELS)
def test_every_model_builds_with_its_preprocessing(model):
    settings = bench.BenchSettings(model=model, image_size=32)
    classifier = benchmarks.build_classifier_model(settings)
    outputs = classifier.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0)
    assert outputs.shape == (2, 1)
    expected = "rescale" if model in ("cnn", "resnet18") else model
    assert benchmarks.model_preprocess(model) == expected


@pytest.mark.parametrize("command", ["pipeline", "train", "infer", "simclr", "export"])
def test_a_folder_that_is_not_a_prepared_split_is_one_line(tmp_path, capsys, command):
    line = _fails(capsys, [command, str(tmp_path), "--image-size", "32"])
    assert "not a prepared split" in line


@pytest.mark.parametrize("command", ["train", "infer", "simclr"])
def test_too_few_images_for_the_steps_is_one_line(synthetic_split, capsys, command):
    line = _fails(capsys, [command, str(synthetic_split), *TINY, "--steps", "1000"])
    assert "fewer than --steps 1000 x --batch-size 4 = 4000" in line


def test_steps_that_leave_nothing_to_time_are_refused(synthetic_split, capsys):
    line = _fails(capsys, ["train", str(synthetic_split), *TINY, "--steps", "2"])
    assert "--steps 2 leaves nothing to time" in line


def test_simclr_measures_only_the_resnet18_encoder(synthetic_split, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["simclr", str(synthetic_split), "--model", "cnn"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'cnn'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="resnet18"):
        benchmarks.benchmark_simclr(synthetic_split, bench.BenchSettings(model="cnn", steps=3))


def test_export_benchmark_times_the_predictor_and_every_export(synthetic_split, capsys):
    """bench export (issue 20 item 6): one row per runner, the predictor first; speed-ups are
    the quotients of the medians printed; the float exports give the predictor's probabilities,
    int8 is the smallest file; the JSON is the last line."""
    argv = ["export", str(synthetic_split), "--image-size", "32", "--batch-size", "4",
            "--repeats", "2"]  # fmt: skip
    lines, result = _run(capsys, argv)
    names = [row["name"] for row in result["runners"]]
    assert names == ["keras .h5 (float32)", "keras", "savedmodel", "litert", "litert float16",
                     "litert int8"]  # fmt: skip
    assert (result["batch_size"], result["repeats"], result["device"]) == (4, 2, "CPU")
    rows = {row["name"]: row for row in result["runners"]}
    reference = rows["keras .h5 (float32)"]
    for row in rows.values():
        assert row["speedup_batch1"] == pytest.approx(
            reference["latency_ms_batch1"] / row["latency_ms_batch1"], rel=2e-3, abs=2e-3
        )
        assert row["images_per_second"] == pytest.approx(4 / row["ms_batch4"] * 1000, rel=1e-3)
        assert any(line.strip().startswith(f"{row['name']}:") for line in lines)
    for name in ("keras", "savedmodel", "litert"):
        assert rows[name]["max_abs_probability_difference"] < 1e-4, name
    assert rows["litert int8"]["size_bytes"] < rows["litert"]["size_bytes"]
    assert reference["speedup_batch1"] == 1.0


def test_export_benchmark_refuses_bad_settings_in_one_line(synthetic_split, tmp_path, capsys):
    line = _fails(capsys, ["export", str(synthetic_split), "--repeats", "0"])
    assert "--repeats and --batch-size must be positive" in line
    line = _fails(capsys, ["export", str(synthetic_split), "--model-file", str(tmp_path / "no.h5")])
    assert "does not exist" in line
