"""Model cards: the fields from a run's metadata, metrics and data, and their markdown."""

from __future__ import annotations

from bc_keras.models import card

METADATA = {
    "experiment": "cnn", "architecture": "baseline_cnn", "recipe": "robust", "image_size": 64,
    "preprocess": "rescale", "interpolation": "nearest", "tta": True, "threshold": 0.4123,
    "threshold_method": "youden", "cross_fit": 5, "cross_fit_final": "ensemble",
}  # fmt: skip
METRICS = {
    "balanced_accuracy": 0.8125, "auc_roc": 0.9, "recall": 0.75, "specificity": 0.875,
    "accuracy": 0.8, "patient_recognition_rate": None, "flags": [],
    "bootstrap_95ci_by_patient": {"balanced_accuracy": [0.7, 0.9], "auc_roc": [0.8, 0.95]},
    "patient_level": {"balanced_accuracy": 0.75},
}  # fmt: skip


def test_classifier_card_states_results_decision_use_and_limits(tmp_path):
    fields = card.classifier_card(METADATA, METRICS, {"split": "data/patient", "test": "8 images"})
    results = fields["test results (95% patient-bootstrap intervals)"]
    assert results["balanced accuracy"] == "0.812 [0.700, 0.900]"
    assert results["AUC"] == "0.900 [0.800, 0.950]"
    assert results["specificity"] == "0.875" and results["patient recognition rate"] is None
    assert results["patient-level balanced accuracy"] == "0.750"
    assert fields["decision"].startswith("0.4123 (youden), chosen on the out-of-fold")
    assert "5-fold cross-fitting" in fields["decision"]
    assert "not a diagnostic device" in fields["intended use"]
    assert fields["flags"] == ["none"]
    path = card.write_card(tmp_path / "cnn.h5", "Baseline CNN", fields)
    assert path == tmp_path / "cnn.card.md"
    text = path.read_text()
    assert text.startswith("# Model card: Baseline CNN\n")
    for section in ("## Model", "## Data", "## Test results", "## Decision", "## Intended use",
                    "## Known limits"):  # fmt: skip
        assert section in text
    assert "- balanced accuracy: 0.812 [0.700, 0.900]" in text
    assert "- patient recognition rate: n/a" in text


def test_a_degenerate_model_card_lists_its_flags():
    fields = card.classifier_card(
        {**METADATA, "cross_fit": 0}, {**METRICS, "flags": ["predicts malignant for every image"]}, {}
    )
    assert fields["flags"] == ["predicts malignant for every image"]
    assert fields["decision"] == "0.4123 (youden)"
