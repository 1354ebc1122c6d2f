"""A model trained on a stain-normalised split carries its normaliser: raw images at inference
are normalised as normalize_stains.py normalised the training images."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bc_keras
from bc_keras import data, experiments, models
from bc_keras.evaluation.inference import predict_files
from bc_keras.histology.stain import (
    METHOD_MACENKO,
    METHOD_REINHARD,
    make_normalizer,
    read_rgb,
    restore_normalizer,
)
from bc_keras.prepare.normalize import normalize_split


@pytest.mark.parametrize("method", [METHOD_MACENKO, METHOD_REINHARD])
def test_a_recorded_normaliser_transforms_as_the_fitted_one(synthetic_split, method):
    files = data.list_split_files(synthetic_split, "train").paths
    fitted = make_normalizer(method).fit(read_rgb(files[0]))
    restored = restore_normalizer(
        {"method": method, "target_statistics": json.loads(json.dumps(fitted.target_statistics()))}
    )
    for path in files[1:4]:
        image = read_rgb(path)
        np.testing.assert_array_equal(restored.transform(image), fitted.transform(image))


@pytest.mark.slow
def test_raw_images_are_predicted_as_their_normalised_copies(synthetic_split, tmp_path):
    normalized = tmp_path / "normalized"
    normalize_split(synthetic_split, normalized, method=METHOD_REINHARD, log=lambda line: None)
    config = bc_keras.CNNConfig(
        data=str(normalized), image_size=32, batch_size=8, epochs=1, batch_norm_momentum=0.9,
        run_dir=str(tmp_path / "run"), model_out=str(tmp_path / "cnn.h5"),
    )  # fmt: skip
    experiments.run(config)
    model, metadata = models.load_model(tmp_path / "cnn.h5")
    settings = json.loads((normalized / "normalize.json").read_text())
    assert metadata["stain_normalizer"] == {
        "method": "reinhard", "target_statistics": settings["target_statistics"]
    }  # fmt: skip
    copies = data.list_split_files(normalized, "test").paths
    raw = [str(synthetic_split / path.split("/normalized/", 1)[1]) for path in copies]
    assert all(np.any(read_rgb(a) != read_rgb(b)) for a, b in zip(raw, copies, strict=True))
    predictor = bc_keras.load_model(tmp_path / "cnn.h5")
    # What the model saw in training: its normalised test images, without normalising again.
    stored = [float(row.split(",")[4]) for row in (tmp_path / "run" / "predictions.csv")
              .read_text().splitlines()[1:]]  # fmt: skip
    plain = predict_files(model, {**metadata, "stain_normalizer": None}, copies)[0]
    np.testing.assert_allclose([r["probability_malignant"] for r in plain], stored, atol=1e-5)
    # Raw images are normalised first: files, arrays and predict.py's path agree with the copies.
    expected = [r["probability_malignant"] for r in plain]
    np.testing.assert_allclose(predictor.predict_proba(raw), expected, atol=1e-6)
    arrays = [read_rgb(path) for path in raw]
    np.testing.assert_allclose(predictor.predict_proba(arrays), expected, atol=1e-6)
    rows, _ = predict_files(model, metadata, raw)
    np.testing.assert_allclose([r["probability_malignant"] for r in rows], stored, atol=1e-5)
