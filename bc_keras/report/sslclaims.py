"""The self-supervision claims beyond the report's (issue 21): BYOL vs SimCLR (the same
classifier on each method's encoder) and transfer initialised from a self-supervised encoder vs
ImageNet transfer (the report's hybrid), each pair with its test from the report's one family:
DeLong's AUC test on a single split, the paired test over folds on a cross-validation set."""

from __future__ import annotations

from bc_keras.report.claims import CLAIM_METRICS, pair_row
from bc_keras.report.encoders import byol_twin, imagenet_twins
from bc_keras.report.sets import EvaluationSet, Model
from bc_keras.report.significance import Family
from bc_keras.report.tables import markdown_table

BYOL_HEADING = "### 5. BYOL vs SimCLR: the same classifier on each method's encoder"
TRANSFER_HEADING = "### 6. Self-supervised initialisation vs ImageNet transfer"


def byol_pairs(each: EvaluationSet) -> list[tuple[Model, Model]]:
    """(BYOL, SimCLR) models of the set: the same classifier on each method's encoder
    (`encoders.byol_twin`)."""
    models = {m.key: m for m in each.models}
    return [(m, models[byol_twin(m.key)]) for m in each.models if byol_twin(m.key) in models]


def transfer_pairs(each: EvaluationSet) -> list[tuple[Model, Model]]:
    """(transfer from a self-supervised encoder, the same transfer from ImageNet) of the set
    (`encoders.imagenet_twins`)."""
    models = {m.key: m for m in each.models}
    pairs = []
    for model in each.models:
        twin = next((key for key in imagenet_twins(model.key) if key in models), None)
        if twin is not None:
            pairs.append((model, models[twin]))
    return pairs


def _pair_lines(sets, tests: Family, pairs_of, titles: tuple[str, str], missing: str) -> list:
    rows, notes = [], []
    for each in sets:
        for model_a, model_b in pairs_of(each):
            cells, note = pair_row(each, model_a, model_b, tests, CLAIM_METRICS[:2])
            rows.append(cells)
            notes += [note] if note else []
    if not rows:
        return [missing, ""]
    header = ["test set", titles[0], titles[1]]
    for _, title in CLAIM_METRICS[:2]:
        header += [f"{title} ({titles[0]})", f"{title} ({titles[1]})", f"{title} difference"]
    header.append("test")
    return [markdown_table(header, rows), "", *notes, *([""] if notes else []),
            "Scores with 95% patient-bootstrap intervals (single split) or mean ± sd over "
            "folds. The test is the pair's from the Model comparison: DeLong's AUC test on one "
            "split, the paired test of per-fold AUCs on a cross-validation set (Holm-adjusted "
            "over the report's family).", ""]  # fmt: skip


def ssl_claim_lines(sets: list[EvaluationSet], tests: Family) -> list[str]:
    """Claims 5 and 6: BYOL vs SimCLR, self-supervised vs ImageNet initialisation."""
    return [
        BYOL_HEADING,
        "",
        "The report proposes comparing SimCLR with BYOL (Grill et al. 2020; no negatives, so "
        "in principle less dependent on the batch) \"to assess stability and performance\".",
        "",
        *_pair_lines(sets, tests, byol_pairs, ("BYOL", "SimCLR"),
                     "Needs the same classifier (`train_simclr.py linear` or `finetune`) on a "
                     "BYOL and on a SimCLR encoder (`pretrain --method byol|simclr`) on the "
                     "same split; no such pair of runs was found."),  # fmt: skip
        TRANSFER_HEADING,
        "",
        'The report\'s hybrid: "pretrain with SimCLR on the unlabeled dataset, then fine-tune '
        'a ResNet50 initialized from this checkpoint", against the same transfer from ImageNet.',
        "",
        *_pair_lines(sets, tests, transfer_pairs, ("self-supervised init", "ImageNet init"),
                     "Needs `train_transfer.py --weights ENCODER.h5` (an encoder from "
                     "`train_simclr.py pretrain --encoder BACKBONE`) and the same transfer from "
                     "ImageNet on the same split; no such pair of runs was found."),  # fmt: skip
    ]
