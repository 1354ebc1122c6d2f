"""The study's self-supervised runs beyond the report's SimCLR (issue 21): BYOL beside it
(pretrain, linear, fine-tuning and its label fractions), the report's hybrid (SimCLR pretrained
on the ImageNet ResNet50, then transferred from that encoder), and the batch-size claim
(each method pretrained at each batch size of the profile, then linear-evaluated)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bc_keras import config as configs
from bc_keras.backbones import BACKBONES, get_backbone
from bc_keras.config.options import SSL_METHOD_BYOL, SSL_METHOD_SIMCLR, SSL_METHODS
from bc_keras.config.values import ENCODER_INIT_RANDOM

# "fine-tune a ResNet50 initialized from this checkpoint": the report's hybrid, on the
# registry's backbone of the report (ResNet50).
HYBRID_BACKBONE = next(name for name in BACKBONES if get_backbone(name).in_report)


@dataclass
class SSLSteps:
    """Adds the steps through the plan's `add(name, config_class, needs=(), skip="", **values)`
    on the patient split `data`; `simclr` holds the classifier values of the SimCLR steps."""

    add: object
    data: str
    models_dir: Path
    settings: dict
    seed: int
    simclr: dict

    def _pretrain(self, name: str, encoder: Path, skip: str = "", **values) -> None:
        values = {"encoder_init": ENCODER_INIT_RANDOM, **self.settings["pretrain"], **values}
        self.add(name, configs.PretrainConfig, skip=skip, data=self.data, seed=self.seed,
                 model_out=str(encoder), **values)  # fmt: skip

    def byol(self, label_fractions) -> None:
        """BYOL from random weights, as SimCLR: linear evaluation, fine-tuning with all the
        labels and with each fraction (the label-efficiency series of the other encoder)."""
        encoder = self.models_dir / "byol_encoder.h5"
        self._pretrain("byol_pretrain", encoder, method=SSL_METHOD_BYOL)
        finetune = dict(needs=[encoder], encoder=str(encoder), **self.settings["finetune"])
        for fraction in (1.0, *label_fractions):
            suffix = "" if fraction == 1.0 else f"_{int(fraction * 100)}pct"
            self.add(f"byol_finetune{suffix}", configs.FinetuneConfig, label_fraction=fraction,
                     **finetune, **self.simclr)  # fmt: skip
        self.add("byol_linear", configs.LinearConfig, needs=[encoder], encoder=str(encoder),
                 **self.simclr)  # fmt: skip

    def hybrid(self, transfer: dict, start: str, skip: str, suffix: str = "") -> None:
        """SimCLR on the ResNet50 from `start` (ImageNet's file), then the robust transfer
        recipe from that encoder: compared with the ImageNet-initialised transfer_<backbone>_*
        steps; skipped (`skip` says why) without the ImageNet weights offline."""
        encoder = self.models_dir / f"simclr_{HYBRID_BACKBONE}_encoder{suffix}.h5"
        self._pretrain(f"simclr_pretrain_{HYBRID_BACKBONE}{suffix}", encoder, skip=skip,
                       method=SSL_METHOD_SIMCLR, encoder_backbone=HYBRID_BACKBONE,
                       encoder_init=start)  # fmt: skip
        self.add(f"transfer_{HYBRID_BACKBONE}_robust_simclr{suffix}", configs.TransferConfig,
                 needs=[encoder], skip=skip, data=self.data, recipe=configs.RECIPE_ROBUST,
                 backbone=HYBRID_BACKBONE, **{**transfer, "weights": str(encoder)})  # fmt: skip

    def folds(self, fold_dirs: list[str], transfer: dict, start: str, skip: str) -> None:
        """On each fold (full profile): SimCLR and BYOL pretrained and linear-evaluated, and
        the hybrid beside the same transfer from ImageNet, so that claims 5 and 6 are tested
        over folds (the report's paired test of per-fold AUCs)."""
        for fold, data in enumerate(fold_dirs, start=1):
            on_fold = SSLSteps(self.add, data, self.models_dir, self.settings, self.seed,
                               {**self.simclr, "data": data})  # fmt: skip
            for method in SSL_METHODS:
                encoder = self.models_dir / f"{method}_encoder_fold{fold}.h5"
                on_fold._pretrain(f"{method}_pretrain_fold{fold}", encoder, method=method)
                on_fold.add(f"{method}_linear_fold{fold}", configs.LinearConfig, needs=[encoder],
                            encoder=str(encoder), **on_fold.simclr)  # fmt: skip
            on_fold.add(f"transfer_{HYBRID_BACKBONE}_robust_fold{fold}", configs.TransferConfig,
                        skip=skip, data=data, recipe=configs.RECIPE_ROBUST,
                        backbone=HYBRID_BACKBONE, **transfer)  # fmt: skip
            on_fold.hybrid(transfer, start, skip, suffix=f"_fold{fold}")

    def batch_sizes(self) -> None:
        """The report's small-batch claim measured (issue 21 item 4): each method pretrained
        at each batch size of the profile for the same epochs without early stopping (every
        image seen as often), then each encoder linear-evaluated."""
        pretrain = self.settings["pretrain"]
        epochs = pretrain.get("epochs", configs.PretrainConfig.__dataclass_fields__["epochs"].default)
        for method in SSL_METHODS:
            for batch_size in self.settings["batch_sizes"]:
                name = f"batch_{method}_{batch_size}"
                encoder = self.models_dir / f"{name}_encoder.h5"
                self._pretrain(f"{name}_pretrain", encoder, method=method,
                               batch_size=batch_size, patience=epochs)  # fmt: skip
                self.add(f"{name}_linear", configs.LinearConfig, needs=[encoder],
                         encoder=str(encoder), **self.simclr)  # fmt: skip
