"""Synthetic H&E-like tissue images in a BreaKHis_v1-shaped tree, for demos and tests only (the
images themselves come from `bc_keras.histology.tissue`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from bc_keras.histology.breakhis import (
    MAGNIFICATIONS,
    OFFICIAL_IMAGE_COUNTS,
    OFFICIAL_PATIENT_COUNTS,
    SHARED_SLIDE,
    SHARED_SLIDE_SUBTYPES,
    SUBTYPES,
    BreaKHisName,
    archive_relative_path,
)
from bc_keras.histology.tissue import (
    DEFAULT_SIZE,
    DIFFICULTY_HARD,
    DIFFICULTY_OVERLAP,
    Stain,
    generate_tissue_image,
    sample_atypia,
    sample_stain,
)

LAYOUT_SMALL = "small"
LAYOUT_BREAKHIS = "breakhis"
LAYOUTS = (LAYOUT_SMALL, LAYOUT_BREAKHIS)
CLASS_BALANCE_BREAKHIS = "breakhis"
CLASS_BALANCE_EQUAL = "equal"
CLASS_BALANCES = (CLASS_BALANCE_BREAKHIS, CLASS_BALANCE_EQUAL)
# Benign images per patient and magnification, as a share of the malignant ones, in the small
# layout under CLASS_BALANCE_BREAKHIS: about 31-33% benign images, as BreaKHis' 31.4%.
BENIGN_IMAGE_SHARE = 0.457
ARCHIVE_PREFIX = Path("BreaKHis_v1") / "histology_slides" / "breast"


def _slide_ids(rng: np.random.Generator, count: int, taken: set[str]) -> list[str]:
    """Real-looking `<yy>-<digits>[letters]` slide ids, not in `taken` (which is updated)."""
    suffixes = ["", "", "", "AB", "CD", "EF", "F", "A", "B"]
    ids = []
    while len(ids) < count:
        year = rng.choice(["13", "14", "14", "14", "15"])
        slide = f"{year}-{rng.integers(1000, 30000)}{suffixes[rng.integers(len(suffixes))]}"
        if slide not in taken:
            taken.add(slide)
            ids.append(slide)
    return ids


def _images_per_patient(rng, total: int, weights: np.ndarray) -> np.ndarray:
    """Splits `total` images over patients by `weights`, each patient getting at least one."""
    patients = len(weights)
    if total < patients:
        raise ValueError(f"Cannot give {patients} patients one image each from {total} images.")
    return 1 + rng.multinomial(total - patients, weights)


def synthetic_plan(
    layout: str = LAYOUT_SMALL,
    patients_per_subtype: int = 3,
    images_per_patient: int = 4,
    seed: int = 0,
    class_balance: str = CLASS_BALANCE_BREAKHIS,
) -> list[BreaKHisName]:
    """The names (patients, magnifications, sequence numbers) of a synthetic tree, no pixels.

    Args:
        layout: "small" (N patients per subtype, M images per patient and magnification) or
            "breakhis" (the official patient and image counts, 7,909 images).
        patients_per_subtype: N for the small layout.
        images_per_patient: M for the small layout (for benign patients see `class_balance`).
        seed: seeds slide ids and, for "breakhis", how images spread over patients.
        class_balance: for the small layout, CLASS_BALANCE_BREAKHIS gives benign patients
            `max(1, round(M * BENIGN_IMAGE_SHARE))` images per magnification, about BreaKHis'
            31% benign; CLASS_BALANCE_EQUAL gives every patient M.

    Returns:
        One parsed name per image.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}. Received: layout={layout!r}")
    if layout == LAYOUT_SMALL and (patients_per_subtype < 1 or images_per_patient < 1):
        raise ValueError(
            "patients_per_subtype and images_per_patient must be >= 1. Received: "
            f"patients_per_subtype={patients_per_subtype}, images_per_patient={images_per_patient}"
        )
    if class_balance not in CLASS_BALANCES:
        raise ValueError(
            f"class_balance must be one of {CLASS_BALANCES}. Received: class_balance={class_balance!r}"
        )
    share = BENIGN_IMAGE_SHARE if class_balance == CLASS_BALANCE_BREAKHIS else 1.0
    benign_images = max(1, round(images_per_patient * share))
    rng = np.random.default_rng(seed)
    # Drawn ids never collide with the shared slide, which only DC and LC get.
    taken: set[str] = {SHARED_SLIDE}
    names = []
    for subtype, (label, _) in SUBTYPES.items():
        if layout == LAYOUT_BREAKHIS:
            patients = OFFICIAL_PATIENT_COUNTS[subtype]
            # A patient with many slides has many images at every magnification, as in BreaKHis.
            weights = rng.dirichlet(np.full(patients, 0.8))
            totals = OFFICIAL_IMAGE_COUNTS[subtype]
            counts = np.stack([_images_per_patient(rng, t, weights) for t in totals], axis=1)
        else:
            patients = patients_per_subtype
            images = benign_images if label == "benign" else images_per_patient
            counts = np.full((patients, len(MAGNIFICATIONS)), images)
        slides = _slide_ids(rng, patients, taken)
        # As in the real archive, slide 14-13412 is filed as a DC and as an LC patient: one
        # patient in two patient folders.
        if subtype in SHARED_SLIDE_SUBTYPES:
            slides[0] = SHARED_SLIDE
        for slide, patient_counts in zip(slides, counts, strict=True):
            year, slide_number = slide.split("-", 1)
            for magnification, count in zip(MAGNIFICATIONS, patient_counts, strict=True):
                for sequence in range(1, int(count) + 1):
                    code = "B" if label == "benign" else "M"
                    filename = f"SOB_{code}_{subtype}-{slide}-{magnification}-{sequence:03d}.png"
                    names.append(
                        BreaKHisName(
                            filename, label, subtype, year, slide_number, magnification, sequence
                        )
                    )
    return names


def write_synthetic_tree(
    out: str | Path,
    layout: str = LAYOUT_SMALL,
    patients_per_subtype: int = 3,
    images_per_patient: int = 4,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    difficulty: str = DIFFICULTY_HARD,
    class_balance: str = CLASS_BALANCE_BREAKHIS,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Writes `out/BreaKHis_v1/histology_slides/breast/...` with synthetic PNGs.

    Args:
        out: the folder to write into (created if needed).
        layout, patients_per_subtype, images_per_patient, seed, class_balance: as `synthetic_plan`.
        size: (width, height) of every image.
        difficulty: DIFFICULTY_HARD (the class shows only in morphology), DIFFICULTY_OVERLAP
            (morphology follows a per-patient atypia whose classes overlap) or DIFFICULTY_EASY
            (mean colour separates the classes); see `generate_tissue_image`.
        progress: called as `progress(done, total)` every 500 images and at the end.

    Returns:
        The written image paths, in plan order.
    """
    names = synthetic_plan(layout, patients_per_subtype, images_per_patient, seed, class_balance)
    root = Path(out) / ARCHIVE_PREFIX
    stains: dict[str, Stain] = {}
    atypias: dict[str, float] = {}
    written = []
    for index, name in enumerate(names):
        patient = name.patient
        if patient not in stains:
            stains[patient] = sample_stain(np.random.default_rng([seed, 1, len(stains)]))
            if difficulty == DIFFICULTY_OVERLAP:
                atypia_rng = np.random.default_rng([seed, 3, len(atypias)])
                atypias[patient] = sample_atypia(atypia_rng, name.label == "malignant")
        # Each image has its own generator, so an image does not depend on the ones before it.
        rng = np.random.default_rng([seed, 2, index])
        pixels = generate_tissue_image(
            rng,
            name.label,
            name.subtype,
            name.magnification,
            size,
            stains[patient],
            difficulty,
            atypias.get(patient),
        )
        path = root / archive_relative_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, compress_level=1)
        written.append(path)
        if progress is not None and ((index + 1) % 500 == 0 or index + 1 == len(names)):
            progress(index + 1, len(names))
    return written
