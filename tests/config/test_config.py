"""Configs and flags: each declared once, the report's values pinned, the robust recipe."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import load_script

from bc_keras import cli, config
from bc_keras.errors import ConfigError

train_cnn = load_script("train_cnn")
train_transfer = load_script("train_transfer")
train_simclr = load_script("train_simclr")

# The report's values (SPEC 4): what `--recipe report`, the default, must keep giving.
REPORT_CNN = dict(
    experiment="cnn", recipe="report", image_size=224, batch_size=32, epochs=100,
    learning_rate=1e-3, patience=5, seed=42, pipeline="tfdata", augment=True, dense_units=128,
    dropout=0.5, batch_norm_momentum=0.99, reduce_lr_patience=3, reduce_lr_factor=0.5,
    min_learning_rate=1e-6, class_weight="none", monitor="val_loss", recalibrate_bn=False,
    stain_augment=0.0, threshold=0.5, tta=False, tune_threshold=False,
    mixed_precision=False, jit_compile=False, strategy="default",
    model_out="models/cnn_model_breast_cancer.h5",
)  # fmt: skip
REPORT_TRANSFER = dict(
    experiment="transfer", recipe="report", image_size=224, batch_size=32, epochs=100,
    phase1_epochs=100, phase2_epochs=100, learning_rate=1e-3, finetune_learning_rate=1e-4,
    patience=15, dense_units=128, weights="imagenet", alpha=1.0, preprocess="rescale",
    class_weight="none", monitor="val_loss", recalibrate_bn=False, stain_augment=0.0,
    threshold=0.5, tta=False, model_out="models/transfer_model_resnet50_breast_cancer.h5",
)  # fmt: skip
REPORT_PRETRAIN = dict(
    experiment="simclr_pretrain", batch_size=96, learning_rate=1e-3, epochs=100, patience=15,
    temperature=0.5, projection_hidden_dim=256, projection_dim=128,
    model_out="models/simclr_resnet18_encoder.h5",
)  # fmt: skip


def _values(parsed) -> dict:
    return dataclasses.asdict(parsed)


def test_report_recipe_keeps_the_reports_values():
    values = _values(train_cnn.parse_args(["--data", "d"]))
    assert {key: values[key] for key in REPORT_CNN} == REPORT_CNN
    values = _values(train_transfer.parse_args(["--data", "d", "--backbone", "resnet50"]))
    assert {key: values[key] for key in REPORT_TRANSFER} == REPORT_TRANSFER
    values = _values(train_simclr.parse_args(["pretrain", "--data", "d"]))
    assert {key: values[key] for key in REPORT_PRETRAIN} == REPORT_PRETRAIN
    values = _values(train_simclr.parse_args(["finetune", "--data", "d"]))
    assert (values["learning_rate"], values["finetune_learning_rate"]) == (1e-3, 1e-4)
    assert (values["patience"], values["freeze_epochs"], values["label_fraction"]) == (15, 0, 1.0)


def test_robust_recipe_sets_each_part_and_a_flag_overrides_it():
    robust = train_cnn.parse_args(["--data", "d", "--recipe", "robust"])
    assert (robust.class_weight, robust.monitor, robust.threshold) == (
        "balanced",
        "val_auc",
        "youden",
    )
    assert robust.recalibrate_bn and robust.tta and robust.stain_augment == 0.05
    # Everything the report fixes that the robust recipe does not touch stays the report's.
    assert (robust.learning_rate, robust.patience, robust.batch_norm_momentum) == (1e-3, 5, 0.99)
    chosen = train_cnn.parse_args(
        ["--data", "d", "--recipe", "robust", "--class-weight", "none", "--no-tta",
         "--threshold", "0.3", "--stain-augment", "0"]
    )  # fmt: skip
    assert (chosen.class_weight, chosen.tta, chosen.threshold, chosen.stain_augment) == (
        "none",
        False,
        0.3,
        0.0,
    )
    alone = train_cnn.parse_args(["--data", "d", "--recalibrate-bn", "--monitor", "val_auc"])
    assert alone.recipe == "report" and alone.recalibrate_bn and alone.monitor == "val_auc"
    assert alone.class_weight == "none"
    transfer = train_transfer.parse_args(
        ["--data", "d", "--backbone", "mobilenet", "--recipe", "robust"]
    )
    assert transfer.preprocess == "mobilenet"


def test_config_records_the_experiment_and_resolves_transfer_defaults():
    parsed = train_transfer.parse_args(
        ["--data", "d", "--backbone", "vgg16", "--epochs", "3", "--phase2-epochs", "1",
         "--weights", "None", "--lr1", "0.01", "--lr2", "0.002"]
    )  # fmt: skip
    assert parsed.experiment == "transfer" and parsed.run_name() == "transfer_vgg16"
    assert (parsed.phase1_epochs, parsed.phase2_epochs) == (3, 1)
    assert (parsed.learning_rate, parsed.finetune_learning_rate) == (0.01, 0.002)
    assert parsed.weights == "none" and not parsed.freeze_batchnorm
    assert parsed.model_out == "models/transfer_model_vgg16_breast_cancer.h5"
    with pytest.raises(ConfigError, match=r"--alpha .* applies to mobilenet, .* only; drop it"):
        train_transfer.parse_args(["--data", "d", "--backbone", "vgg16", "--alpha", "0.5"])


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--data", "d", "--threshold", "2"], "must be a probability in (0, 1) or one of"),
        (["--data", "d", "--epochs", "0"], "must be a positive integer"),
        (["--data", "d", "--dropout", "1.5"], "must be in [0, 1]"),
        (["--data", "d", "--recipe", "fast"], "invalid choice: 'fast'"),
        ([], "the following arguments are required: --data"),
    ],
)
def test_bad_flags_are_refused_by_argparse(argv, fragment, capsys):
    with pytest.raises(SystemExit) as stop:
        train_cnn.parse_args(argv)
    assert stop.value.code == 2
    assert fragment in capsys.readouterr().err


def test_help_lists_every_field_with_its_default_or_recipe_values(capsys):
    with pytest.raises(SystemExit):
        train_cnn.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(config.CNNConfig):
        options = config.field_options(config.CNNConfig, field.name)
        if options:
            assert options["flag"] in text, field.name
    assert "--class-weight {none,balanced}" in text
    assert "(default: report: none; robust: balanced)" in text
    assert "--recalibrate-bn, --no-recalibrate-bn" in text
    assert "(default: 0.99)" in text and "(default: 0.001)" in text


def test_every_flag_is_declared_once():
    """Each flag has one declaration (a field with flag metadata), inherited by every script
    that uses it; subclasses only change defaults. A config outside the hierarchy may reuse a
    declaration as it is (PretrainConfig takes TransferConfig's --alpha): the same flag, help
    and default, never a second text that could drift."""
    declarations: dict[str, list] = {}
    for klass in (config.RunConfig, config.ClassifierConfig, config.DenseHeadConfig,
                  config.TwoPhaseConfig, config.CNNConfig, config.TransferConfig,
                  config.PretrainConfig, config.LinearConfig, config.FinetuneConfig):  # fmt: skip
        own = vars(klass).get("__annotations__", {})
        fields = vars(klass)["__dataclass_fields__"]
        for name in own:
            if fields[name].metadata:
                field = fields[name]
                declarations.setdefault(field.metadata["flag"], []).append(
                    (name, field.default, dict(field.metadata))
                )
    redeclared = sorted(
        flag for flag, found in declarations.items() if any(d != found[0] for d in found)
    )
    assert not redeclared, redeclared
    assert [flag for flag, found in declarations.items() if len(found) > 1] == ["--alpha"]
    assert "--patience" in declarations and "--finetune-lr" in declarations
    assert "--dense-units" in declarations


def test_cli_builds_a_config_from_flags_alone():
    parser = cli.build_parser(config.LinearConfig, "linear")
    parsed = cli.config_from_args(
        config.LinearConfig, parser.parse_args(["--data", "d", "--label-fraction", "0.25"])
    )
    assert parsed.experiment == "simclr_linear" and parsed.label_fraction == 0.25
    assert parsed.encoder == "models/simclr_resnet18_encoder.h5"


def _help_of(script, argv, capsys) -> str:
    with pytest.raises(SystemExit):
        script.parse_args([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    "script, argv",
    [(train_cnn, []), (train_transfer, []), (train_simclr, ["pretrain"]),
     (train_simclr, ["finetune"]), (train_simclr, ["linear"])],
)  # fmt: skip
def test_help_shows_each_default_once(script, argv, capsys):
    text = _help_of(script, argv, capsys)
    assert "(default: None)" not in text
    # Each flag's help ends with at most one default, e.g. --run-dir's own sentence.
    for flag_help in text.split(" --")[1:]:
        assert flag_help.count("(default:") <= 1, flag_help


@pytest.mark.parametrize(
    "script, argv, smallest",
    [(train_cnn, ["--image-size", "4"], 8),
     (train_transfer, ["--backbone", "vgg16", "--image-size", "16"], 32),
     (train_simclr, ["pretrain", "--image-size", "31"], 32),
     (train_simclr, ["linear", "--image-size", "16"], 32)],
)  # fmt: skip
def test_an_image_size_below_the_models_minimum_is_a_config_error(script, argv, smallest):
    with pytest.raises(ConfigError, match=f"--image-size {smallest} or more"):
        script.parse_args([*argv[:1], "--data", "d", *argv[1:]] if script is train_simclr
                          else ["--data", "d", *argv])  # fmt: skip


def test_simclr_refuses_a_batch_without_negatives():
    with pytest.raises(ConfigError, match="no negatives"):
        train_simclr.parse_args(["pretrain", "--data", "d", "--batch-size", "1"])
    assert train_simclr.parse_args(["pretrain", "--data", "d", "--batch-size", "2"]).batch_size == 2


def test_each_simclr_mode_has_its_own_default_model_file():
    outputs = [
        train_simclr.parse_args(argv).model_out
        for argv in (
            ["pretrain", "--data", "d"],
            ["finetune", "--data", "d"],
            ["linear", "--data", "d"],
            ["linear", "--data", "d", "--encoder", "none"],
            ["finetune", "--data", "d", "--encoder", "none"],
        )
    ]
    assert len(set(outputs)) == len(outputs), outputs
    # A --model-out given is kept whatever the encoder.
    given = train_simclr.parse_args(["linear", "--data", "d", "--encoder", "none", "--model-out",
                                     "m.h5"])  # fmt: skip
    assert given.model_out == "m.h5"


def test_config_replays_a_run_with_the_flags_given_beside_it_overriding(tmp_path, capsys):
    from bc_keras import runs

    original = config.CNNConfig(data="data/patient", recipe="robust", epochs=7, seed=3,
                                run_dir=str(tmp_path / "old"), model_out="m/old.h5")  # fmt: skip
    runs.write_config(tmp_path, original)
    stored = tmp_path / "config.json"
    replay = train_cnn.parse_args(["--config", str(stored), "--epochs", "9"])
    assert replay.data == "data/patient" and replay.seed == 3 and replay.recipe == "robust"
    assert replay.class_weight == "balanced" and replay.threshold == "youden"
    assert replay.epochs == 9
    assert replay.run_dir is None and replay.model_out == "models/cnn_model_breast_cancer.h5"
    out = capsys.readouterr().out
    assert f"replaying {stored}:" in out and "overridden: --epochs 9 (was 7)" in out
    # A SimCLR mode replays the same way; another experiment's run is refused in one line.
    linear = config.LinearConfig(data="d", encoder="none", epochs=4)
    (tmp_path / "linear").mkdir()
    runs.write_config(tmp_path / "linear", linear)
    parsed = train_simclr.parse_args(
        ["linear", "--config", str(tmp_path / "linear" / "config.json")]
    )
    assert (
        isinstance(parsed, config.LinearConfig) and parsed.epochs == 4 and parsed.encoder == "none"
    )
    with pytest.raises(ConfigError, match="is a simclr_linear run, not cnn"):
        train_cnn.parse_args(["--config", str(tmp_path / "linear" / "config.json")])
    with pytest.raises(ConfigError, match="cannot be read as a run's config.json"):
        train_cnn.parse_args(["--config", str(tmp_path / "missing.json")])
