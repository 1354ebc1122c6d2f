"""The report tells a SimCLR encoder pretrained from ImageNet (`--encoder-init imagenet|PATH`)
from one pretrained from random weights, by the pretraining run that wrote the encoder."""

from __future__ import annotations

import json
from dataclasses import replace

from bc_keras.report.runs import (
    ENCODER_IMAGENET,
    ENCODER_PRETRAINED,
    ENCODER_RANDOM,
    START_IMAGENET,
    ModelKey,
    find_runs,
)

SCORES = {"accuracy": 0.8, "auc_roc": 0.9, "counts": {"images": 4}, "flags": []}


def _run(root, name, config, metrics):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.json").write_text(json.dumps(metrics))


def _pretrain(root, name, model_out, **start):
    config = {"experiment": "simclr_pretrain", "data": "split", "model_out": model_out, **start}
    _run(root, name, config, {"best_val_loss": 3.0})


def _classifier(root, name, encoder, experiment="simclr_linear"):
    _run(root, name, {"experiment": experiment, "data": "split", "encoder": encoder}, SCORES)


def test_each_classifier_gets_the_start_of_its_encoders_pretraining(tmp_path):
    runs = tmp_path / "runs"
    _pretrain(runs, "pre_random", "models/random.h5", encoder_init="random")
    _pretrain(runs, "pre_imagenet", "models/imagenet.h5", encoder_init="imagenet")
    _pretrain(runs, "pre_preset", "models/preset.h5", encoder_init="/hub/resnet_18_imagenet")
    _pretrain(runs, "pre_old", "models/old.h5")  # before --encoder-init: a random start
    # Two pretraining runs wrote one file from different starts: which one it holds is unknown.
    _pretrain(runs, "pre_a", "models/shared.h5", encoder_init="random")
    _pretrain(runs, "pre_b", "models/shared.h5", encoder_init="imagenet")
    _classifier(runs, "linear_random_start", "models/random.h5")
    _classifier(runs, "linear_imagenet", "models/imagenet.h5")
    _classifier(runs, "finetune_imagenet", "models/imagenet.h5", "simclr_finetune")
    _classifier(runs, "linear_preset", "models/preset.h5")
    _classifier(runs, "linear_old", "models/old.h5")
    _classifier(runs, "linear_shared", "models/shared.h5")
    _classifier(runs, "linear_elsewhere", "elsewhere/encoder.h5")  # no pretraining run found
    _classifier(runs, "linear_none", "none")
    found, left_out = find_runs([runs])
    assert left_out == []
    encoders = {run.name: run.encoder for run in found}
    assert encoders == {
        "pre_random": "", "pre_imagenet": START_IMAGENET, "pre_preset": START_IMAGENET,
        "pre_old": "", "pre_a": "", "pre_b": START_IMAGENET,
        "linear_random_start": ENCODER_PRETRAINED, "linear_imagenet": ENCODER_IMAGENET,
        "finetune_imagenet": ENCODER_IMAGENET, "linear_preset": ENCODER_IMAGENET,
        "linear_old": ENCODER_PRETRAINED, "linear_shared": ENCODER_PRETRAINED,
        "linear_elsewhere": ENCODER_PRETRAINED, "linear_none": ENCODER_RANDOM,
    }  # fmt: skip
    keys = {run.name: run.model_key for run in found}
    # The two starts are two models, one pretraining run each.
    assert keys["linear_imagenet"] != keys["linear_random_start"]
    assert keys["linear_imagenet"] == keys["linear_preset"]
    assert keys["pre_imagenet"] != keys["pre_random"] == keys["pre_old"]
    assert keys["linear_imagenet"].name() == (
        "ResNet-18 linear, SimCLR encoder from ImageNet (report recipe)"
    )
    assert keys["pre_imagenet"].name() == "SimCLR pretraining, from ImageNet (report recipe)"


def test_report_order_puts_the_imagenet_start_between_random_start_and_random_encoder():
    keys = [ModelKey("simclr_linear", encoder=encoder)
            for encoder in (ENCODER_RANDOM, ENCODER_IMAGENET, ENCODER_PRETRAINED)]  # fmt: skip
    ordered = [key.encoder for key in sorted(keys, key=ModelKey.order)]
    assert ordered == [ENCODER_PRETRAINED, ENCODER_IMAGENET, ENCODER_RANDOM]
    pretraining = [ModelKey("simclr_pretrain", encoder=START_IMAGENET), ModelKey("simclr_pretrain")]
    assert [key.encoder for key in sorted(pretraining, key=ModelKey.order)] == ["", START_IMAGENET]


def test_method_backbone_and_batch_size_of_the_pretraining_make_distinct_models(tmp_path):
    """BYOL beside SimCLR, a registry-backbone encoder, the batch-size sweep's fixed-epoch
    encoders and a transfer started from an encoder file are each their own model, named so."""
    runs = tmp_path / "runs"
    _pretrain(runs, "simclr", "models/simclr.h5", encoder_init="random", patience=15, epochs=100,
              batch_size=96)  # fmt: skip
    _pretrain(runs, "byol", "models/byol.h5", encoder_init="random", method="byol", patience=15,
              epochs=100, batch_size=96)  # fmt: skip
    for size in (16, 96):  # the sweep: no early stopping
        _pretrain(runs, f"byol_{size}", f"models/byol_{size}.h5", encoder_init="random",
                  method="byol", patience=4, epochs=4, batch_size=size)  # fmt: skip
    _pretrain(runs, "hybrid", "models/hybrid.h5", encoder_init="imagenet",
              encoder_backbone="mobilenet", patience=15, epochs=100, batch_size=96)  # fmt: skip
    for name in ("simclr", "byol", "byol_16", "byol_96"):
        _classifier(runs, f"linear_{name}", f"models/{name}.h5")
    _classifier(runs, "finetune_hybrid", "models/hybrid.h5", "simclr_finetune")
    transfer = {"experiment": "transfer", "data": "split", "backbone": "mobilenet"}
    _run(runs, "transfer_hybrid", {**transfer, "weights": "models/hybrid.h5"}, SCORES)
    _run(runs, "transfer_imagenet", {**transfer, "weights": "imagenet"}, SCORES)
    _run(runs, "transfer_file", {**transfer, "weights": "weights/no_top.h5"}, SCORES)
    found, _ = find_runs([runs])
    names = {run.name: run.model_key.name() for run in found}
    assert names["linear_simclr"] == "ResNet-18 linear, SimCLR encoder (report recipe)"
    assert names["linear_byol"] == "ResNet-18 linear, BYOL encoder (report recipe)"
    assert names["linear_byol_16"] == (
        "ResNet-18 linear, BYOL encoder (report recipe, pretrained at batch 16)"
    )
    assert names["finetune_hybrid"] == (
        "mobilenet fine-tuned, SimCLR encoder from ImageNet (report recipe)"
    )
    assert names["transfer_hybrid"] == (
        "mobilenet transfer (SimCLR encoder from ImageNet) (report recipe)"
    )
    assert names["transfer_imagenet"] == "mobilenet transfer (report recipe)"
    assert names["transfer_file"] == "mobilenet transfer (weights file) (report recipe)"
    assert names["byol"] == "BYOL pretraining (report recipe)"
    assert names["byol_16"] == "BYOL pretraining (report recipe, pretrained at batch 16)"
    assert names["hybrid"] == "SimCLR pretraining of mobilenet, from ImageNet (report recipe)"
    assert len(set(names.values())) == len(names), "every run above is its own model"


def test_only_the_reports_simclr_resnet18_fine_tune_is_matched_with_the_published_number():
    from bc_keras.report.tables import PUBLISHED, published_for

    reports = ModelKey("simclr_finetune", encoder=ENCODER_PRETRAINED)
    assert published_for(reports) == PUBLISHED["simclr"]
    for other in (replace(reports, backbone="mobilenet"), replace(reports, pretrain_batch=16),
                  replace(reports, method="byol", encoder="BYOL encoder")):  # fmt: skip
        assert published_for(other) is None, other
