"""Tests of bc_keras.synthetic: the plan of names, determinism and the class signal."""

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from bc_keras.breakhis import (
    MAGNIFICATIONS,
    OFFICIAL_IMAGE_COUNTS,
    OFFICIAL_PATIENT_COUNTS,
    SUBTYPES,
    archive_relative_path,
    parse_filename,
)
from bc_keras.synthetic import (
    generate_tissue_image,
    sample_stain,
    synthetic_plan,
    write_synthetic_tree,
)


def test_synthetic_breakhis_plan_matches_official_counts():
    names = synthetic_plan("breakhis", seed=0)
    assert len(names) == 7909
    assert len({n.filename for n in names}) == 7909
    for subtype, counts in OFFICIAL_IMAGE_COUNTS.items():
        chosen = [n for n in names if n.subtype == subtype]
        assert len({n.patient for n in chosen}) == OFFICIAL_PATIENT_COUNTS[subtype]
        per_mag = Counter(n.magnification for n in chosen)
        assert tuple(per_mag[m] for m in MAGNIFICATIONS) == counts
        sizes = Counter(n.patient for n in chosen)
        if len(sizes) > 3:
            assert max(sizes.values()) > 2 * min(sizes.values())  # uneven, as in BreaKHis
        for patient in sizes:  # every patient has every magnification
            assert {n.magnification for n in chosen if n.patient == patient} == set(MAGNIFICATIONS)
    dc_slides = {n.slide for n in names if n.subtype == "DC"}
    lc_slides = {n.slide for n in names if n.subtype == "LC"}
    assert dc_slides & lc_slides  # one slide id is both DC and LC, as 14-13412 is


def test_synthetic_small_plan_and_slide_ids():
    names = synthetic_plan("small", patients_per_subtype=2, images_per_patient=3, seed=5)
    assert len(names) == 8 * 2 * 4 * 3
    for name in names:
        assert parse_filename(name.filename) == name
        assert archive_relative_path(name).endswith(f"{name.magnification}X/{name.filename}")


def test_synthetic_images_are_deterministic(tmp_path):
    first = generate_tissue_image(np.random.default_rng(7), "malignant", "DC", 100, (64, 48))
    again = generate_tissue_image(np.random.default_rng(7), "malignant", "DC", 100, (64, 48))
    other = generate_tissue_image(np.random.default_rng(8), "malignant", "DC", 100, (64, 48))
    assert first.shape == (48, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    paths_a = write_synthetic_tree(
        tmp_path / "a", patients_per_subtype=1, images_per_patient=1, size=(16, 16), seed=3
    )
    paths_b = write_synthetic_tree(
        tmp_path / "b", patients_per_subtype=1, images_per_patient=1, size=(16, 16), seed=3
    )
    assert [p.relative_to(tmp_path / "a") for p in paths_a] == [
        p.relative_to(tmp_path / "b") for p in paths_b
    ]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(paths_a, paths_b, strict=True))
    with Image.open(paths_a[0]) as image:
        assert image.mode == "RGB" and image.size == (16, 16)


def hematoxylin_fraction(image):
    """Share of purple (nucleus) pixels: blue above red and dark green."""
    red, green, blue = (image[..., c].astype(int) for c in range(3))
    return float(((blue - red > 15) & (green < 150)).mean())


def test_synthetic_class_signal_is_learnable_but_overlapping():
    fractions_by_label = {"benign": [], "malignant": []}
    for index in range(48):
        label = "benign" if index % 2 else "malignant"
        subtype = [s for s, (lab, _) in SUBTYPES.items() if lab == label][index // 2 % 4]
        rng = np.random.default_rng(index)
        image = generate_tissue_image(
            rng, label, subtype, MAGNIFICATIONS[index % 4], (96, 64), sample_stain(rng)
        )
        assert image.std() > 10  # texture, not a flat colour
        fractions_by_label[label].append(hematoxylin_fraction(image))
    benign = np.array(fractions_by_label["benign"])
    malignant = np.array(fractions_by_label["malignant"])
    assert malignant.mean() > benign.mean() * 1.3
    # Not trivially separable: the ranges overlap.
    assert malignant.min() < benign.max()


@pytest.mark.parametrize("size", [(700, 460)])
def test_synthetic_full_size_image_is_fast(size):
    import time

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    image = generate_tissue_image(rng, "malignant", "DC", 40, size)
    assert time.perf_counter() - start < 1.0  # well under 0.2 s when the machine is idle
    assert image.shape == (460, 700, 3)
