"""Model cards (Mitchell et al. 2019): `<model>.card.md` beside every saved model, and the same
fields in its metadata — what it is, what it was trained and tested on, how well it did, how
it decides, and what it must not be used for."""

from __future__ import annotations

from pathlib import Path

CARD_SUFFIX = ".card.md"
INTENDED_USE = (
    "Research on BreaKHis-like H&E breast-tumour patches (benign vs malignant, 40X-400X): "
    "reproducing and comparing methods, studying failure modes. It is not a diagnostic device: "
    "it has not been validated clinically and must not inform the care of any patient."
)
KNOWN_LIMITS = (
    "Trained and tested on one public dataset (82 patients of one laboratory, one scanner): "
    "other stains, scanners, tissues or magnifications shift its inputs and its decisions.",
    "Decides per patch, not per slide or patient; the patient-level result is the mean of its "
    "patches' probabilities.",
    "The threshold was chosen on labelled patients of the same dataset; a new population needs "
    "its own.",
    "Small test sets: read every score with its patient-bootstrap interval.",
)
# The test metrics a card lists, with their titles.
CARD_METRICS = (
    ("balanced_accuracy", "balanced accuracy"),
    ("auc_roc", "AUC"),
    ("recall", "sensitivity (recall)"),
    ("specificity", "specificity"),
    ("accuracy", "accuracy"),
    ("patient_recognition_rate", "patient recognition rate"),
)


def card_path(model_path) -> Path:
    """`models/cnn.h5` -> `models/cnn.card.md`."""
    path = Path(model_path)
    return path.with_name(path.stem + CARD_SUFFIX)


def _interval(metrics: dict, key: str) -> str:
    pair = (metrics.get("bootstrap_95ci_by_patient") or {}).get(key)
    return f" [{pair[0]:.3f}, {pair[1]:.3f}]" if pair else ""


def classifier_card(metadata: dict, metrics: dict, data: dict) -> dict:
    """The card's fields for a classifier: `metadata` (what the .h5 stores), its test
    `metrics` (metrics.json) and `data` (per subset: images per class and patients)."""
    test = {
        title: (
            None if metrics.get(key) is None else f"{metrics[key]:.3f}{_interval(metrics, key)}"
        )
        for key, title in CARD_METRICS
    }
    patient_level = metrics.get("patient_level") or {}
    if patient_level.get("balanced_accuracy") is not None:
        test["patient-level balanced accuracy"] = f"{patient_level['balanced_accuracy']:.3f}"
    decision = f"{metadata['threshold']:.4g} ({metadata.get('threshold_method', 'fixed')})"
    if metadata.get("cross_fit"):
        decision += (
            f", chosen on the out-of-fold probabilities of {metadata['cross_fit']}-fold "
            f"cross-fitting; final model: {metadata.get('cross_fit_final')}"
        )
    model = {
        "experiment": metadata.get("experiment"),
        "architecture": metadata.get("architecture"),
        "recipe": metadata.get("recipe"),
        "input": f"{metadata.get('image_size')} px RGB, preprocessing "
        f"{metadata.get('preprocess')}, resized with {metadata.get('interpolation')}",
        "test-time augmentation": bool(metadata.get("tta")),
    }
    if metadata.get("distillation"):
        model["training"] = distillation_line(metadata["distillation"])
    return {
        "model": model,
        "data": data,
        "test results (95% patient-bootstrap intervals)": test,
        "flags": list(metrics.get("flags") or []) or ["none"],
        "decision": decision,
        "intended use": INTENDED_USE,
        "known limits": list(KNOWN_LIMITS),
    }


def distillation_line(record: dict) -> str:
    """'distilled from <teacher> (alpha, T)', with what the teacher is and its file's hash."""
    teacher = ", ".join(
        str(record[key]) for key in ("experiment", "architecture") if record.get(key) is not None
    )
    size = f" at {record['image_size']} px" if record.get("image_size") else ""
    return (
        f"distilled from {record.get('teacher')} ({teacher or 'a classifier'}{size}; SHA-256 "
        f"{str(record.get('sha256'))[:12]}...) with alpha {record.get('alpha'):g}, "
        f"T {record.get('temperature'):g}"
    )


def encoder_card(metadata: dict, summary: dict, data: dict) -> dict:
    """The card's fields for a self-supervised encoder: what it is, the images it saw (labels
    unused), its validation contrastive loss, and that it is a feature extractor only."""
    return {
        "model": {
            "experiment": metadata.get("experiment"),
            "architecture": metadata.get("architecture"),
            "input": f"{metadata.get('image_size')} px RGB, preprocessing "
            f"{metadata.get('preprocess')}, resized with {metadata.get('interpolation')}",
        },
        "data": data,
        "pretraining (validation NT-Xent, lower is better)": {
            key: summary.get(key) for key in ("initial_val_loss", "best_val_loss", "best_epoch")
        },
        "decision": "none: an encoder of features for `train_simclr.py linear|finetune`",
        "intended use": INTENDED_USE,
        "known limits": list(KNOWN_LIMITS[:1]),
    }


def _lines(value, indent: str = "") -> list[str]:
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, dict | list):
                lines += [f"{indent}- {key}:", *_lines(item, indent + "  ")]
            else:
                lines.append(f"{indent}- {key}: {'n/a' if item is None else item}")
        return lines
    if isinstance(value, list):
        return [f"{indent}- {item}" for item in value]
    return [f"{indent}{value}"]


def card_markdown(title: str, fields: dict) -> str:
    """The card as markdown: one section per field."""
    lines = [f"# Model card: {title}", ""]
    for section, value in fields.items():
        lines += [f"## {section[:1].upper()}{section[1:]}", "", *_lines(value), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_card(model_path, title: str, fields: dict) -> Path:
    """Writes `<model>.card.md` atomically; returns its path."""
    from bc_keras import runs

    path = card_path(model_path)
    with runs.atomic_write(path) as file:
        file.write(card_markdown(title, fields))
    return path
