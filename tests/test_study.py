"""The study's orchestration (`python -m bc_keras.study`): its plan of runs, the skip lines for
weights it cannot have, and idempotent, resumable execution. The runs themselves are the
experiments' tests' business; here each step is a stand-in that records how it was called."""

from __future__ import annotations

import json
from argparse import ArgumentTypeError
from dataclasses import replace
from pathlib import Path

import pytest

from bc_keras import runs, study
from bc_keras.config import CNNConfig, FinetuneConfig, PretrainConfig, TransferConfig
from bc_keras.histology.synthetic import write_synthetic_tree
from bc_keras.models import transfer
from bc_keras.study import analyses

MOBILENET_WEIGHTS = "mobilenet_2_5_224_tf_no_top.h5"


@pytest.fixture(autouse=True)
def empty_keras_cache(tmp_path, monkeypatch):
    """No backbone's weights in Keras' cache, and no keras-hub preset in kagglehub's, unless a
    test puts them there."""
    (tmp_path / "keras_home").mkdir()  # an existing, writable home: Keras' fallback is /tmp
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))


def test_every_step_parses_and_comes_after_what_it_needs(tmp_path):
    steps = study.plan(tmp_path, study.PROFILE_QUICK, {}, seed=7)
    names = [step.name for step in steps]
    assert len(names) == len(set(names))
    # CNN x 2 recipes x 2 splits + cross-fitted, 3 backbones x (2 recipes x 2 splits +
    # cross-fitted), SimCLR pretrain, 4 fine-tunes + cross-fitted, 3 CNN label fractions x 2
    # recipes, linear x 2, SimCLR from ImageNet (pretrain, fine-tune, linear), 2 folds x 2
    # recipes, BYOL (pretrain, 4 fine-tunes, linear), the hybrid (SimCLR on the ResNet50,
    # transfer from it), and the batch-size claim: SimCLR and BYOL x 3 batch sizes x (pretrain,
    # linear).
    assert len(steps) == 5 + 15 + 1 + 5 + 6 + 2 + 3 + 4 + 6 + 2 + 12
    produced = {}
    for index, step in enumerate(steps):
        config = study._config(step, tmp_path, resume=False)
        assert isinstance(config, step.config_class)
        assert config.seed == 7 and config.run_dir == str(tmp_path / "runs" / step.name)
        produced[config.model_out] = index
        for need in step.needs:
            assert produced[str(need)] < index, f"{step.name} runs before {need} is made"
    configs = {step.name: study._config(step, tmp_path, resume=False) for step in steps}
    assert configs["cnn_report"].recipe == "report" and configs["cnn_robust"].recipe == "robust"
    assert configs["cnn_report_image_split"].data == str(tmp_path / "data" / "image")
    assert configs["cnn_robust_fold2"].data == str(tmp_path / "data" / "folds" / "fold_2")
    assert configs["cnn_report_10pct"].label_fraction == 0.1
    assert configs["simclr_finetune_25pct"].label_fraction == 0.25
    assert configs["simclr_linear_random_encoder"].encoder == "none"
    assert isinstance(configs["simclr_pretrain"], PretrainConfig)
    assert configs["simclr_pretrain"].encoder_init == "random"  # whatever the recipe's default
    assert isinstance(configs["simclr_finetune"], FinetuneConfig)
    assert configs["cnn_report"].image_size == 48  # quick profile
    # BYOL beside SimCLR, from random weights, with the same classifiers on its encoder.
    byol = configs["byol_pretrain"]
    assert (byol.method, byol.encoder_init) == ("byol", "random")
    assert configs["byol_finetune_10pct"].encoder == byol.model_out
    assert configs["byol_finetune_10pct"].label_fraction == 0.1
    assert configs["byol_linear"].encoder == byol.model_out
    # The report's hybrid: SimCLR on the ImageNet ResNet50, the robust transfer from it.
    hybrid = configs["simclr_pretrain_resnet50"]
    assert (hybrid.method, hybrid.encoder_backbone, hybrid.encoder_init) == (
        "simclr", "resnet50", "imagenet")  # fmt: skip
    transfer = configs["transfer_resnet50_robust_simclr"]
    assert (transfer.backbone, transfer.weights, transfer.recipe) == (
        "resnet50", hybrid.model_out, "robust")  # fmt: skip
    hybrid_steps = [s for s in steps if s.name.endswith(("_resnet50", "_robust_simclr"))]
    assert all(s.skip.startswith("its ImageNet weights are not available") for s in hybrid_steps)
    # The headline models cross-fitted (2 folds in quick), the rest on the single split.
    crossed = {name for name, config in configs.items() if getattr(config, "cross_fit", 0)}
    assert crossed == {
        "cnn_robust_cross_fit", "simclr_finetune_cross_fit",
        *(f"transfer_{backbone}_robust_cross_fit" for backbone in study.REPORT_BACKBONES),
    }  # fmt: skip
    assert {configs[name].cross_fit for name in crossed} == {2}
    assert all(configs[name].recipe == "robust" for name in crossed if name.startswith("cnn"))
    # The robust recipe has its own image-split twins and label fractions.
    assert configs["cnn_robust_image_split"].data == str(tmp_path / "data" / "image")
    assert configs["cnn_robust_image_split"].recipe == "robust"
    assert configs["transfer_mobilenet_robust_image_split"].recipe == "robust"
    assert configs["cnn_robust_10pct"].label_fraction == 0.1
    assert configs["cnn_robust_10pct"].recipe == "robust"
    full = study.plan(tmp_path, study.PROFILE_FULL, {}, seed=7)
    assert sum(step.name.startswith("cnn_report_fold") for step in full) == 5
    assert {step.config.cross_fit for step in full if step.name.endswith("_cross_fit")} == {5}
    assert study._config(full[0], tmp_path, resume=False).image_size == 224  # the report's
    # Full only: the light backbones in both recipes and the CNN distilled from the robust
    # ResNet50 transfer, which runs after its teacher (and is skipped with it).
    assert study.LIGHT_BACKBONES == (
        "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "efficientnetv2_b0"
    )  # fmt: skip
    assert not any(step.config.backbone in study.LIGHT_BACKBONES for step in steps
                   if isinstance(step.config, TransferConfig))  # fmt: skip
    full_steps = {step.name: (index, step) for index, step in enumerate(full)}
    for backbone in study.LIGHT_BACKBONES:
        for recipe in ("report", "robust"):
            _, step = full_steps[f"transfer_{backbone}_{recipe}"]
            assert (step.config.backbone, step.config.recipe) == (backbone, recipe)
            assert step.config.data == str(tmp_path / "data" / "patient")
    index, distilled = full_steps["cnn_robust_distilled"]
    teacher = tmp_path / "models" / "transfer_resnet50_robust.h5"
    assert distilled.config.teacher == str(teacher) and distilled.needs == [teacher]
    assert full_steps["transfer_resnet50_robust"][0] < index
    assert distilled.skip.startswith("its teacher is skipped: its ImageNet weights")
    # 3 more folds x 2 recipes, 4 light backbones x 2 recipes, the distilled CNN, batch 256
    # for both methods (pretrain, linear), and on each of the 5 folds SimCLR and BYOL
    # (pretrain, linear) and the hybrid beside its ImageNet twin (3 steps).
    assert len(full) == len(steps) + 3 * 2 + 4 * 2 + 1 + 4 + 5 * 7
    fold3 = {n: s.config for n, (_, s) in full_steps.items() if n.endswith("_fold3")}
    assert fold3["byol_pretrain_fold3"].data == str(tmp_path / "data" / "folds" / "fold_3")
    assert fold3["byol_linear_fold3"].encoder == fold3["byol_pretrain_fold3"].model_out
    hybrid = fold3["transfer_resnet50_robust_simclr_fold3"]
    assert hybrid.weights == fold3["simclr_pretrain_resnet50_fold3"].model_out
    assert fold3["transfer_resnet50_robust_fold3"].weights == "imagenet"
    given = {"resnet50": tmp_path / "resnet50_no_top.h5"}
    with_file = {s.name: s for s in study.plan(tmp_path, study.PROFILE_FULL, given, seed=7)}
    assert with_file["transfer_resnet50_robust_fold3"].config.weights == str(given["resnet50"])
    assert with_file["simclr_pretrain_resnet50"].config.encoder_init == str(given["resnet50"])
    assert with_file["transfer_resnet50_robust_simclr"].config.weights == str(
        tmp_path / "models" / "simclr_resnet50_encoder.h5")  # fmt: skip
    batch = {n: s.config for n, (_, s) in full_steps.items() if n.startswith("batch_")}
    assert sorted({(c.method, c.batch_size) for c in batch.values() if hasattr(c, "method")}) == [
        (m, b) for m in ("byol", "simclr") for b in (16, 32, 96, 256)]  # fmt: skip
    pretrain = batch["batch_byol_256_pretrain"]
    assert pretrain.patience == pretrain.epochs and pretrain.encoder_init == "random"
    assert batch["batch_byol_256_linear"].encoder == pretrain.model_out


def test_backbones_without_weights_are_skipped_with_what_to_put_where(tmp_path):
    weights = tmp_path / "mine.h5"
    weights.write_bytes(b"stand-in")
    steps = {
        s.name: s for s in study.plan(tmp_path, study.PROFILE_QUICK, {"mobilenet": weights}, 1)
    }
    vgg = steps["transfer_vgg16_robust"]
    assert vgg.skip.startswith("its ImageNet weights are not available offline")
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in vgg.skip
    assert "--weights vgg16=PATH" in vgg.skip
    mobilenet = steps["transfer_mobilenet_report_image_split"]
    assert mobilenet.skip == ""
    config = study._config(mobilenet, tmp_path, resume=False)
    assert isinstance(config, TransferConfig)
    assert (config.weights, config.alpha, config.recipe) == (str(weights), 0.25, "report")
    # Weights in Keras' cache are found without --weights.
    cache = tmp_path / "keras_home" / "models"
    cache.mkdir(parents=True)
    expected = transfer.imagenet_weights_file("mobilenet", 224, 0.25).file_name
    assert expected == MOBILENET_WEIGHTS
    (cache / expected).write_bytes(b"stand-in")
    steps = {s.name: s for s in study.plan(tmp_path, study.PROFILE_QUICK, {}, 1)}
    assert steps["transfer_mobilenet_robust"].skip == ""


def test_a_weights_path_that_does_not_exist_is_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "study"
    with pytest.raises(SystemExit) as exited:
        study.main([str(tmp_path), "--out", str(out), "--weights", "mobilenet=/no/such.h5"])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "/no/such.h5 (weights for mobilenet) does not exist" in error
    assert not out.exists()


def test_a_second_call_runs_nothing_and_an_interrupted_step_resumes(tmp_path, monkeypatch):
    source = tmp_path / "tree"
    write_synthetic_tree(source, patients_per_subtype=3, images_per_patient=1, size=(16, 12))
    calls = []

    def stand_in(step, out, log_file):
        resume = study._state(out, step) == "interrupted"
        config = study._config(step, out, resume)
        calls.append((step.name, config.resume))
        Path(config.model_out).parent.mkdir(parents=True, exist_ok=True)
        Path(config.model_out).write_bytes(b"model")
        folder = out / "runs" / step.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / runs.METRICS_FILE).write_text(json.dumps({"accuracy": 1.0}))
        return "finished"

    analysed = []

    def analysis_stand_in(analysis, log_file):
        assert all(path.read_bytes() == b"model" for path in analysis.needs)
        analysed.append(analysis.name)
        analysis.run()
        return "finished"

    def write(folder):
        folder.mkdir()
        (folder / "check.json").write_text("{}")
        (folder / "active.json").write_text("{}")
        (folder / "robustness.json").write_text("{}")

    def stand_in_analyses(out, steps, settings, seed):
        planned = analyses.plan_analyses(out, steps, settings, seed)
        return [replace(a, write=write) for a in planned]

    reports = []
    monkeypatch.setattr(study, "run_step", stand_in)
    monkeypatch.setattr(study, "run_analysis", analysis_stand_in)
    monkeypatch.setattr(study, "plan_analyses", stand_in_analyses)
    monkeypatch.setattr(
        "bc_keras.report.build_report",
        lambda dirs, out, explain: reports.append((out, explain)) or out,
    )
    out = tmp_path / "study"
    lines = []
    assert study.run_study(source, out, log=lines.append) == []
    planned = [s for s in study.plan(out, study.PROFILE_QUICK, {}, 42) if not s.skip]
    assert [name for name, _ in calls] == [s.name for s in planned]
    assert not any(resumed for _, resumed in calls)
    # 3 backbones x 5 steps, the hybrid's 2, and the MobileNet's deployment analysis.
    assert sum("skipped: its ImageNet weights" in line for line in lines) == 18
    assert any("about 0m00s left" in line for line in lines)
    assert (out / "data" / "patient" / "split.csv").is_file()
    assert (out / "data" / "folds" / "fold_2").is_dir()
    # After the steps: the deployment analysis of the robust CNN (the MobileNet's is skipped
    # with its step), its result in runs/deployment/ where the report reads it.
    assert analysed == ["deployment/cnn_robust", "robustness/patient", "active/cnn",
                        "active/linear"]  # fmt: skip
    assert (out / "runs" / "deployment" / "cnn_robust" / "check.json").is_file()
    assert any(line.endswith("deployment/transfer_mobilenet_robust: skipped: its model's step "
                             "is skipped: its ImageNet weights are not available offline (put "
                             "mobilenet_2_5_224_tf_no_top.h5 in " + str(tmp_path / "keras_home")
                             + "/models, or pass --weights mobilenet=PATH)")
               for line in lines)  # fmt: skip

    # An interrupted run (its backup left behind, no metrics) is resumed; nothing else reruns.
    interrupted = out / "runs" / "simclr_linear"
    (interrupted / runs.METRICS_FILE).unlink()
    (interrupted / runs.BACKUP_DIR).mkdir()
    (interrupted / runs.BACKUP_DIR / "state").write_text("epoch 3")
    calls.clear()
    lines.clear()
    assert study.run_study(source, out, log=lines.append) == []
    assert calls == [("simclr_linear", True)] and len(analysed) == 4
    # Every step but the resumed one, and the four analyses.
    assert sum(line.endswith("already finished") for line in lines) == len(planned) + 3
    assert any(line.endswith("] simclr_linear: resuming ...") for line in lines)
    assert reports == [(out / "report", ("occlusion", "lime"))] * 2


def test_a_step_that_cannot_run_is_counted_and_the_others_go_on(tmp_path, monkeypatch):
    source = tmp_path / "tree"
    write_synthetic_tree(source, patients_per_subtype=3, images_per_patient=1, size=(16, 12))

    def stand_in(step, out, log_file):
        if step.name == "simclr_pretrain":
            return "failed: training diverged"
        folder = out / "runs" / step.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / runs.METRICS_FILE).write_text("{}")
        return "finished"

    monkeypatch.setattr(study, "run_step", stand_in)
    monkeypatch.setattr(study, "plan_analyses", lambda out, steps, settings, seed: [])
    monkeypatch.setattr("bc_keras.report.build_report", lambda dirs, out, explain: out)
    problems = study.run_study(source, tmp_path / "study", log=lambda line: None)
    names = [name for name, _ in problems]
    assert names[0] == "simclr_pretrain"
    # Every fine-tune and the SimCLR linear evaluation need the encoder; the rest ran.
    # (The stand-in writes no model files: BYOL's and the batch-size classifiers miss theirs.)
    assert {name for name in names[1:] if not name.startswith(("batch_", "byol_"))} == {
        "simclr_finetune", "simclr_finetune_50pct", "simclr_finetune_25pct",
        "simclr_finetune_10pct", "simclr_linear", "simclr_finetune_cross_fit",
    }  # fmt: skip
    assert all(outcome.startswith("needs ") for _, outcome in problems[1:])
    assert (tmp_path / "study" / "runs" / "cnn_robust_fold2" / runs.METRICS_FILE).is_file()
    assert isinstance(study._config(study.plan(tmp_path, "quick", {}, 1)[0], tmp_path, False),
                      CNNConfig)  # fmt: skip


def _preset_folder(folder: Path) -> Path:
    """A stand-in keras-hub ResNet-18 preset (config.json as keras-hub writes it)."""
    from bc_keras.models import pretrained

    folder.mkdir(parents=True)
    config = {"registered_name": pretrained.BACKBONE_CLASS,
              "config": {"image_shape": [None, None, 3], **pretrained.RESNET18_HUB_CONFIG}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.weights.h5").write_bytes(b"stand-in")
    return folder


IMAGENET_STEPS = ("simclr_pretrain_imagenet", "simclr_finetune_imagenet", "simclr_linear_imagenet")


def test_simclr_from_imagenet_runs_when_the_preset_is_cached_or_given(tmp_path, monkeypatch):
    from bc_keras.models import pretrained

    monkeypatch.setattr(pretrained, "keras_hub_installed", lambda: True)

    def imagenet_steps(weights):
        steps = {s.name: s for s in study.plan(tmp_path, study.PROFILE_QUICK, weights, 1)}
        return [steps[name] for name in IMAGENET_STEPS], steps

    # Not cached, not given: skipped with what to place where; the random start still runs.
    skipped, steps = imagenet_steps({})
    cache = tmp_path / "kagglehub" / "models" / pretrained.IMAGENET_PRESET_HANDLE
    assert {step.skip for step in skipped} == {
        "the ImageNet ResNet-18 (keras-hub preset resnet_18_imagenet) is not available offline "
        f"(place its folder in {cache}, or pass --weights resnet18=PATH to a local keras-hub "
        "preset folder)"
    }
    assert steps["simclr_pretrain"].skip == "" and steps["simclr_linear"].skip == ""
    # In kagglehub's cache: the ImageNet runs, chained on their own encoder.
    _preset_folder(cache)
    ready, _ = imagenet_steps({})
    assert [step.skip for step in ready] == ["", "", ""]
    pretrain, finetune, linear = (study._config(s, tmp_path, False) for s in ready)
    assert pretrain.encoder_init == "imagenet" and pretrain.image_size == 48
    assert (
        finetune.encoder
        == linear.encoder
        == pretrain.model_out
        != (study._config(steps["simclr_pretrain"], tmp_path, False).model_out)
    )
    assert ready[1].needs == ready[2].needs == [Path(pretrain.model_out)]
    # A local preset given as --weights resnet18=FOLDER is the start.
    local = _preset_folder(tmp_path / "my_preset")
    given, _ = imagenet_steps({"resnet18": str(local)})
    assert given[0].skip == "" and given[0].config.encoder_init == str(local)
    # Without keras-hub: skipped, saying how to install it.
    monkeypatch.setattr(pretrained, "keras_hub_installed", lambda: False)
    without, _ = imagenet_steps({"resnet18": str(local)})
    assert without[0].skip.endswith('is missing (pip install "bc_keras[hub]")')


def test_a_resnet18_weights_argument_must_be_a_preset_folder(tmp_path):
    good = _preset_folder(tmp_path / "preset")
    assert study._weights_argument(f"resnet18={good}") == ("resnet18", str(good))
    with pytest.raises(
        ArgumentTypeError, match="resnet18=/no/such: --encoder-init /no/such does not"
    ):
        study._weights_argument("resnet18=/no/such")
    (tmp_path / "weights.h5").write_bytes(b"x")
    with pytest.raises(ArgumentTypeError, match="weights.h5 is a file"):
        study._weights_argument(f"resnet18={tmp_path / 'weights.h5'}")
    with pytest.raises(ArgumentTypeError, match="one of .* or resnet18, got resnet34=x"):
        study._weights_argument("resnet34=x")


def test_the_deployment_analyses_of_each_profile(tmp_path):
    quick = study.plan(tmp_path, study.PROFILE_QUICK, {}, seed=7)
    planned = analyses.plan_analyses(tmp_path, quick, study.SETTINGS[study.PROFILE_QUICK], 7)
    assert [a.name for a in planned] == ["deployment/cnn_robust",
                                         "deployment/transfer_mobilenet_robust",
                                         "robustness/patient", "active/cnn",
                                         "active/linear"]  # fmt: skip
    # The SimCLR linear head's simulation needs the pretrained encoder.
    assert planned[4].needs == [tmp_path / "models" / "simclr_encoder.h5"]
    assert planned[3].result == tmp_path / "runs" / "active" / "cnn" / "active.json"
    # Quick: the headline models of the patient split that can run (MobileNet has no
    # weights here); full: every classifier of the patient split but the cross-fitted ones.
    assert [s.name for s in analyses.robustness_models(quick, full=False)] == [
        "cnn_report", "cnn_robust", "simclr_finetune", "simclr_linear"]  # fmt: skip
    cnn = planned[0]
    assert cnn.needs == [tmp_path / "models" / "cnn_robust.h5"] and cnn.skip == ""
    assert cnn.result == tmp_path / "runs" / "deployment" / "cnn_robust" / "check.json"
    full = study.plan(tmp_path, study.PROFILE_FULL, {}, seed=7)
    names = [a.name for a in analyses.plan_analyses(tmp_path, full, study.SETTINGS["full"], 7)]
    assert names == ["deployment/cnn_robust", "deployment/transfer_mobilenet_robust",
                     "deployment/cnn_robust_distilled",
                     *(f"deployment/transfer_{b}_robust" for b in study.LIGHT_BACKBONES),
                     "robustness/patient", "active/cnn", "active/linear"]  # fmt: skip
    scored = [s.name for s in analyses.robustness_models(full, full=True)]
    assert "cnn_robust_10pct" in scored and "simclr_linear" in scored
    assert not any("cross_fit" in n or "image_split" in n or "fold" in n for n in scored)
    assert "simclr_linear_random_encoder" not in scored and "transfer_vgg16_robust" not in scored


@pytest.mark.slow
def test_a_deployment_analysis_checks_every_export_and_the_report_shows_it(
    synthetic_split, tmp_path
):
    """The real analysis on a small CNN: five exports checked into runs/deployment/<name>/
    (written beside the folder and moved in), and the report's Deployment table from it; a
    failing analysis leaves no folder behind."""
    from bc_keras import models
    from bc_keras.report.analyses import deployment_lines

    model = models.save_model(models.build_baseline_cnn(32, dense_units=4), tmp_path / "m.h5",
                              {"kind": "classifier", "image_size": 32})  # fmt: skip
    result = tmp_path / "runs" / "deployment" / "m" / "check.json"
    analysis = analyses.Analysis("deployment/m", [model], result,
                                 analyses._deployment_writer(model, synthetic_split))  # fmt: skip
    assert not analysis.finished
    analysis.run()
    assert analysis.finished and not result.parent.with_name("m.partial").exists()
    check = json.loads(result.read_text())
    assert [row["name"] for row in check["models"]] == [
        "keras .h5 (float32)", "keras", "savedmodel", "litert", "litert float16", "litert int8"
    ]  # fmt: skip
    lines = deployment_lines([tmp_path / "runs"])
    assert lines[0] == "## Deployment" and "### m" in lines
    assert sum(line.startswith("| litert int8 |") for line in "\n".join(lines).splitlines()) == 1
    assert "No export check found" in deployment_lines([tmp_path / "models"])[4]

    def broken(folder):
        folder.mkdir()
        (folder / "half.txt").write_text("half")
        raise RuntimeError("interrupted")

    failing = analyses.Analysis("deployment/x", [model], tmp_path / "runs" / "x" / "check.json",
                                broken)  # fmt: skip
    with pytest.raises(RuntimeError):
        failing.run()
    assert not (tmp_path / "runs" / "x").exists() and not (tmp_path / "runs" / "x.partial").exists()


def test_the_active_learning_analysis_simulates_in_its_work_folder_and_copies_the_results(
    tmp_path, monkeypatch
):
    """The simulation runs in out/work/active/<experiment> (its run folders stay out of the
    report's RUNS_DIR) with the profile's settings and a budget fitted to the split; its three
    result files are copied to runs/active/<experiment>/."""
    from bc_keras.active import simulate

    write_synthetic_tree(tmp_path / "tree", patients_per_subtype=3, images_per_patient=2,
                         size=(16, 12))  # fmt: skip
    study.prepare_data(tmp_path / "tree", tmp_path, study.PROFILE_QUICK, 7, log=lambda _: None)
    seen = []

    def stand_in(settings, work, log=print):
        seen.append((settings, Path(work)))
        Path(work).mkdir(parents=True)
        for name in (simulate.FIGURE_FILE, simulate.SUMMARY_FILE, simulate.RESULT_FILE):
            (Path(work) / name).write_text(name)

    monkeypatch.setattr(simulate, "simulate", stand_in)
    steps = study.plan(tmp_path, study.PROFILE_QUICK, {}, seed=7)
    linear = analyses.plan_analyses(tmp_path, steps, study.SETTINGS["quick"], 7)[-1]
    linear.run()
    ((settings, work),) = seen
    assert work == tmp_path / "work" / "active" / "linear"
    assert (settings.experiment, settings.encoder) == ("linear", str(tmp_path / "models" /
                                                                   "simclr_encoder.h5"))  # fmt: skip
    assert (settings.rounds, settings.strategies, settings.recipe) == (2, ["entropy", "random"],
                                                                       "robust")  # fmt: skip
    assert (settings.image_size, settings.epochs, settings.seed) == (48, 12, 7)
    assert settings.budget == simulate.round_budget(settings.data, 2, seed=7) >= 1
    for name in (simulate.FIGURE_FILE, simulate.SUMMARY_FILE, simulate.RESULT_FILE):
        assert (tmp_path / "runs" / "active" / "linear" / name).read_text() == name
