"""What the report tells self-supervised models apart by: the method that pretrained the
encoder (SimCLR, the report's, or BYOL), its backbone (the report's ResNet-18 or a registry
one) and, for a fixed-epoch pretraining of the batch-size claim, its batch size. Read from a
pretraining run's config.json (TF-free)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from bc_keras.config.options import MODEL_RESNET18, SSL_METHOD_SIMCLR
from bc_keras.report.paths import locate

METHOD_TITLES = {SSL_METHOD_SIMCLR: "SimCLR", "byol": "BYOL"}
START_RANDOM = "random"


@dataclass(frozen=True)
class Pretraining:
    """A pretraining's identity in a model key: "" / 0 where it is the report's (SimCLR,
    ResNet-18, early-stopped), so that the report's own models keep their keys and names."""

    method: str = ""
    backbone: str = ""
    batch_size: int = 0

    @property
    def title(self) -> str:
        return method_title(self.method)


def method_title(method: str) -> str:
    """ "SimCLR" for "" or "simclr", "BYOL" for "byol", else the name as it is."""
    return METHOD_TITLES.get(method or SSL_METHOD_SIMCLR, method)


def fixed_epochs(config: dict) -> bool:
    """A pretraining without early stopping (patience >= epochs): every batch size saw every
    image as often, as the batch-size claim needs."""
    try:
        return int(config.get("patience", 0)) >= int(config.get("epochs", 1))
    except (TypeError, ValueError):
        return False


def pretraining_of(config: dict | None) -> Pretraining:
    """The identity of the pretraining run whose config.json is `config` (None: unknown,
    counted as the report's SimCLR ResNet-18)."""
    if not config:
        return Pretraining()
    method = str(config.get("method") or SSL_METHOD_SIMCLR)
    backbone = str(config.get("encoder_backbone") or MODEL_RESNET18)
    batch = config.get("batch_size")
    sized = fixed_epochs(config) and isinstance(batch, int) and not isinstance(batch, bool)
    return Pretraining(
        "" if method == SSL_METHOD_SIMCLR else method,
        "" if backbone == MODEL_RESNET18 else backbone,
        int(batch) if sized else 0,
    )


def encoder_label(pretraining: Pretraining, from_imagenet: bool) -> str:
    """E.g. "SimCLR encoder", "BYOL encoder from ImageNet"."""
    return f"{pretraining.title} encoder" + (" from ImageNet" if from_imagenet else "")


def from_imagenet(encoder_init) -> bool:
    """Whether an --encoder-init started from pretrained weights: 'imagenet' or a preset PATH."""
    return isinstance(encoder_init, str) and encoder_init.strip().lower() not in ("", START_RANDOM)


def link_encoders(runs: list) -> None:
    """Sets each self-supervised classifier's, and each transfer run's started from an
    encoder file, `encoder_start` and `encoder_pretraining`: the encoder_init and config.json
    of the pretraining run whose --model-out is its --encoder (--weights; paths resolved as
    `locate` does). Left "" / None (a random start and the report's SimCLR ResNet-18, the only
    ones before --encoder-init and --method) when no pretraining run among `runs` wrote that
    file, or when several did that disagree (the file then holds the last one's encoder,
    which config.json cannot tell)."""
    written: dict[str, list[dict]] = {}
    for run in runs:
        model_out = run.config.get("model_out")
        if run.experiment == "simclr_pretrain" and isinstance(model_out, str) and model_out:
            written.setdefault(str(locate(model_out, run.run_dir)), []).append(run.config)
    for run in runs:
        key = "weights" if run.experiment == "transfer" else "encoder"
        encoder = run.config.get(key)
        if run.experiment not in ("simclr_linear", "simclr_finetune", "transfer") or not encoder:
            continue
        configs = written.get(str(locate(str(encoder), run.run_dir)), [])
        starts = sorted(str(c.get("encoder_init") or START_RANDOM) for c in configs)
        if len({from_imagenet(start) for start in starts}) == 1:
            run.encoder_start = starts[0]
        if configs and len({pretraining_of(c) for c in configs}) == 1:
            run.encoder_pretraining = configs[0]
        if run.experiment == "transfer" and not run.encoder_start:
            run.encoder_pretraining = None  # an ambiguous file stays a "weights file"


SSL_CLASSIFIERS = ("simclr_linear", "simclr_finetune")
# A transfer's `weights` in its key that is no self-supervised encoder; the last two are the
# ImageNet start (Keras' file, or a copy of it given by path) a hybrid is compared with.
PLAIN_WEIGHTS = ("random init", "", "weights file")


def byol_twin(key):
    """The key of the SimCLR model a BYOL classifier's `key` is compared with (the same
    classifier, recipe, labels, cross-fitting, backbone and start), or None for any other key
    (batch-size sweeps included)."""
    if key.experiment not in SSL_CLASSIFIERS or key.method != "byol" or key.pretrain_batch:
        return None
    return replace(key, method="", encoder=key.encoder.replace("BYOL", "SimCLR", 1))


def imagenet_twins(key) -> tuple:
    """The keys of the ImageNet-initialised transfers a transfer from a self-supervised
    encoder is compared with, preferred first; () for any other key."""
    if key.experiment != "transfer" or key.weights in PLAIN_WEIGHTS:
        return ()
    return tuple(replace(key, weights=w, method="", pretrain_batch=0) for w in PLAIN_WEIGHTS[1:])
