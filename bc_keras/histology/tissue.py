"""Synthetic H&E-like tissue fields: stains, glands, stroma and nuclei whose morphology carries
the benign/malignant signal (see `generate_tissue_image`), for demos and tests only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from bc_keras.histology.breakhis import MAGNIFICATIONS, SUBTYPES

DEFAULT_SIZE = (700, 460)
DIFFICULTY_EASY = "easy"
DIFFICULTY_HARD = "hard"
DIFFICULTY_OVERLAP = "overlap"
DIFFICULTIES = (DIFFICULTY_EASY, DIFFICULTY_HARD, DIFFICULTY_OVERLAP)


# Optical densities (Ruifrok & Johnston) of the two stains, per RGB channel.
_HEMATOXYLIN_OD = np.array([0.65, 0.70, 0.29])
_EOSIN_OD = np.array([0.07, 0.99, 0.11])
_REFERENCE_WIDTH = 700.0
# Nucleus radius in pixels of a 700-px-wide field at each magnification.
_NUCLEUS_RADIUS = {40: 2.5, 100: 5.0, 200: 9.0, 400: 16.0}
# Per-subtype flavour: (nuclear area fraction, gland count per field, lumen scale).
_SUBTYPE_STYLE = {
    "A": (0.12, 7, 0.8),
    "F": (0.08, 3, 1.2),
    "PT": (0.10, 2, 1.0),
    "TA": (0.12, 8, 0.7),
    "DC": (0.20, 1, 1.0),
    "LC": (0.18, 0, 1.0),
    "MC": (0.14, 2, 1.6),
    "PC": (0.19, 3, 1.1),
}

# Hard difficulty: only _HARD_MORPHOLOGY and the arrangement of nuclei depend on the class. Each
# benign subtype shares its stroma fibre stretch with one malignant subtype, so the subtype's
# flavour says nothing about the class.
_HARD_FIBRE_PAIRS = (("A", "DC", 1.5), ("F", "LC", 3.0), ("PT", "MC", 2.0), ("TA", "PC", 4.0))
_HARD_FIBRE_STRETCH = {subtype: pair[2] for pair in _HARD_FIBRE_PAIRS for subtype in pair[:2]}
_HARD_AREA_FRACTION = 0.13
_HARD_GLANDS = 3.0
# Per class (False: benign): log-normal sigma of the nucleus radius, largest elongation, share of
# nuclei with a second lobe.
_HARD_MORPHOLOGY = {False: (0.08, 1.25, 0.0), True: (0.45, 2.4, 0.5)}
# Overlap difficulty: hard, but the morphology follows a per-patient atypia in [0, 1] (0: the
# benign morphology above, 1: the malignant one) drawn from Beta(a, b) for malignant and
# Beta(b, a) for benign patients, so that some benign patients look atypical and some carcinomas
# bland, as fibroadenoma and low-grade carcinoma do; a malignant patient outranks a benign one
# with probability 0.96, so no model is perfect. Each image jitters its patient's atypia.
_ATYPIA_BETA = (5.0, 2.0)
_ATYPIA_IMAGE_SD = 0.1
# Malignant nests: their spread as a share of the image width, and the share of nuclei in them.
_NEST_SPREAD = 0.03
_NESTED_SHARE = 0.75


@dataclass(frozen=True)
class Stain:
    """One patient's staining: stain vectors and how strongly each stain took."""

    hematoxylin_od: tuple[float, float, float]
    eosin_od: tuple[float, float, float]
    hematoxylin_strength: float
    eosin_strength: float
    density_factor: float


def sample_atypia(rng: np.random.Generator, malignant: bool) -> float:
    """Draws a patient's atypia for the overlap difficulty (see _ATYPIA_BETA)."""
    a, b = _ATYPIA_BETA
    return float(rng.beta(a, b) if malignant else rng.beta(b, a))


def sample_stain(rng: np.random.Generator) -> Stain:
    """Draws a per-patient stain; its spread is wide enough that class means of colour overlap."""
    hematoxylin = _HEMATOXYLIN_OD * rng.uniform(0.85, 1.15, size=3)
    eosin = _EOSIN_OD * rng.uniform(0.85, 1.15, size=3)
    return Stain(
        hematoxylin_od=tuple(float(v) for v in hematoxylin / np.linalg.norm(hematoxylin)),
        eosin_od=tuple(float(v) for v in eosin / np.linalg.norm(eosin)),
        hematoxylin_strength=float(rng.uniform(0.9, 1.6)),
        eosin_strength=float(rng.uniform(0.25, 0.55)),
        density_factor=float(rng.lognormal(0.0, 0.25)),
    )


def _smooth_field(rng, height, width, cell, stretch=1.0):
    """Smooth random field in [0, 1]: coarse noise upsampled bicubically."""
    grid_h = max(2, int(round(height / (cell / stretch))) + 1)
    grid_w = max(2, int(round(width / (cell * stretch))) + 1)
    coarse = rng.random((grid_h, grid_w)).astype(np.float32)
    field = np.asarray(
        Image.fromarray(coarse, mode="F").resize((width, height), Image.BICUBIC), dtype=np.float32
    )
    return np.clip(field, 0.0, 1.0)


def _stamp_ellipses(canvas, centers, radii_y, radii_x, angles, values):
    """Draws soft-edged filled ellipses into `canvas` (max-composited), vectorised in chunks of
    similar size so that a few large nuclei do not inflate the window of all the small ones."""
    order = np.argsort(np.maximum(radii_y, radii_x))
    for chunk in np.array_split(order, max(1, len(order) // 256)):
        if len(chunk):
            _stamp_chunk(
                canvas, centers[chunk], radii_y[chunk], radii_x[chunk], angles[chunk], values[chunk]
            )


def _stamp_chunk(canvas, centers, radii_y, radii_x, angles, values):
    height, width = canvas.shape
    half = int(np.ceil(max(radii_y.max(), radii_x.max()))) + 1
    offsets = np.arange(-half, half + 1, dtype=np.float32)
    rows = np.round(centers[:, 0]).astype(np.int64)
    cols = np.round(centers[:, 1]).astype(np.int64)
    frac_y = (centers[:, 0] - rows)[:, None, None]
    frac_x = (centers[:, 1] - cols)[:, None, None]
    dy = offsets[None, :, None] - frac_y
    dx = offsets[None, None, :] - frac_x
    cos = np.cos(angles)[:, None, None]
    sin = np.sin(angles)[:, None, None]
    u = (dy * cos + dx * sin) / radii_y[:, None, None]
    v = (-dy * sin + dx * cos) / radii_x[:, None, None]
    # Edge softness of about one pixel whatever the nucleus size.
    softness = np.minimum(radii_y, radii_x)[:, None, None]
    coverage = np.clip((1.0 - np.sqrt(u * u + v * v)) * softness + 0.5, 0.0, 1.0)
    coverage *= values[:, None, None]
    all_rows = rows[:, None, None] + offsets.astype(np.int64)[None, :, None]
    all_cols = cols[:, None, None] + offsets.astype(np.int64)[None, None, :]
    all_rows, all_cols = np.broadcast_arrays(all_rows, all_cols)
    inside = (all_rows >= 0) & (all_rows < height) & (all_cols >= 0) & (all_cols < width)
    inside &= coverage > 0
    np.maximum.at(canvas, (all_rows[inside], all_cols[inside]), coverage[inside])


def generate_tissue_image(
    rng: np.random.Generator,
    label: str,
    subtype: str,
    magnification: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    stain: Stain | None = None,
    difficulty: str = DIFFICULTY_HARD,
    atypia: float | None = None,
) -> np.ndarray:
    """Generates one H&E-like field as an RGB uint8 array of shape (height, width, 3).

    "hard": stain, brightness, stroma, glands, nuclear area and chromatin are drawn alike for both
    classes, so mean colour is near chance; the class shows only in morphology. Benign nuclei are
    uniform, round, evenly spaced and line the gland rims; malignant ones vary in size (same mean
    area), are elongated or lobed, and crowd into overlapping nests that ignore the glands.
    "overlap": as "hard", but the morphology and arrangement follow the patient's `atypia`, not
    the label, and benign and malignant atypia overlap (see _ATYPIA_BETA).
    "easy": malignant fields have more, larger, darker nuclei and fewer lumens (colour suffices).

    Args:
        rng: the random generator (the image is a pure function of its state and the arguments).
        label: "benign" or "malignant".
        subtype: a BreaKHis subtype code such as "DC" (sets the tissue's flavour).
        magnification: 40, 100, 200 or 400; scales nuclei and glands.
        size: (width, height) in pixels.
        stain: the patient's stain; drawn from `rng` when None.
        difficulty: DIFFICULTY_HARD, DIFFICULTY_OVERLAP or DIFFICULTY_EASY.
        atypia: the patient's atypia for DIFFICULTY_OVERLAP (`sample_atypia`); drawn from `rng`
            when None. Ignored by the other difficulties.

    Returns:
        The image as a uint8 array.
    """
    if subtype not in SUBTYPES or SUBTYPES[subtype][0] != label:
        raise ValueError(
            f"Unknown subtype or subtype/label mismatch. Received: label={label!r}, "
            f"subtype={subtype!r}"
        )
    if magnification not in _NUCLEUS_RADIUS:
        raise ValueError(
            f"magnification must be one of {MAGNIFICATIONS}. Received: magnification={magnification}"
        )
    if difficulty not in DIFFICULTIES:
        raise ValueError(
            f"difficulty must be one of {DIFFICULTIES}. Received: difficulty={difficulty!r}"
        )
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive (width, height). Received: size={size}")
    stain = stain or sample_stain(rng)
    malignant = label == "malignant"
    fibres = _HARD_FIBRE_STRETCH[subtype]
    if difficulty == DIFFICULTY_EASY:
        maps = _easy_tissue(rng, malignant, subtype, magnification, width, height, stain)
    elif difficulty == DIFFICULTY_HARD:
        morphology = _HARD_MORPHOLOGY[malignant]
        maps = _hard_tissue(rng, malignant, morphology, fibres, magnification, width, height, stain)
    else:
        if atypia is None:
            atypia = sample_atypia(rng, malignant)
        atypia = float(np.clip(atypia + rng.normal(0.0, _ATYPIA_IMAGE_SD), 0.0, 1.0))
        benign, cancer = (np.asarray(_HARD_MORPHOLOGY[key]) for key in (False, True))
        morphology = tuple(benign + atypia * (cancer - benign))
        nested = bool(rng.random() < atypia)
        maps = _hard_tissue(rng, nested, morphology, fibres, magnification, width, height, stain)
    hematoxylin, eosin, brightness = maps
    # Chromatin texture inside nuclei.
    hematoxylin *= 0.8 + 0.4 * rng.random((height, width), dtype=np.float32)
    nuclear = hematoxylin[..., None] * stain.hematoxylin_strength * np.asarray(stain.hematoxylin_od)
    stromal = (eosin * (1.0 - 0.7 * hematoxylin))[..., None] * stain.eosin_strength
    optical_density = nuclear + stromal * np.asarray(stain.eosin_od)
    rgb = brightness * np.exp(-optical_density) + rng.normal(0.0, 4.0, (height, width, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _stroma(rng, height, width, scale, stretch):
    """Eosin density of the stroma: a smooth field times a fibrous one stretched `stretch`-fold."""
    base_cell = max(3.0, 40.0 * scale)
    eosin = 0.55 + 0.35 * _smooth_field(rng, height, width, base_cell)
    eosin *= 0.75 + 0.35 * _smooth_field(rng, height, width, base_cell / 3, stretch=stretch)
    return eosin


def _carve_lumens(rng, eosin, glands, lumen_radius, mean_radius):
    """Whitens `glands` elliptic lumens in `eosin`; returns the nucleus centres along each rim
    and the lumens as ((centre_y, centre_x), (radius_y, radius_x))."""
    height, width = eosin.shape
    rim_centers, lumens = [], []
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) if glands else (None, None)
    for _ in range(glands):
        center_y, center_x = rng.uniform(0, height), rng.uniform(0, width)
        radius_y = lumen_radius * rng.uniform(0.6, 1.4)
        radius_x = lumen_radius * rng.uniform(0.6, 1.4)
        distance = np.sqrt(((yy - center_y) / radius_y) ** 2 + ((xx - center_x) / radius_x) ** 2)
        eosin *= np.clip(distance * 1.5 - 0.6, 0.05, 1.0)
        rim_count = int(np.clip(2 * np.pi * lumen_radius / (2.4 * mean_radius), 3, 200))
        theta = np.linspace(0, 2 * np.pi, rim_count, endpoint=False) + rng.uniform(0, 2 * np.pi)
        ring = 1.0 + 1.3 * mean_radius / lumen_radius
        rim_y = center_y + ring * radius_y * np.sin(theta)
        rim_centers.append(np.stack([rim_y, center_x + ring * radius_x * np.cos(theta)], axis=1))
        lumens.append(((center_y, center_x), (radius_y, radius_x)))
    return rim_centers, lumens


def _easy_tissue(rng, malignant, subtype, magnification, width, height, stain):
    """Haematoxylin and eosin maps of the colour-separable fields (the original generator)."""
    scale = width / _REFERENCE_WIDTH
    area_fraction, gland_count, lumen_scale = _SUBTYPE_STYLE[subtype]
    area_fraction *= stain.density_factor * rng.lognormal(0.0, 0.15)
    eosin = _stroma(rng, height, width, scale, stretch=3.0)
    mean_radius = max(0.6, _NUCLEUS_RADIUS[magnification] * scale)
    lumen_radius = max(1.0, 45.0 * scale * lumen_scale * (magnification / 100.0) ** 0.5)
    glands = rng.poisson(gland_count * (0.6 if malignant else 1.0))
    rim_centers, _ = _carve_lumens(rng, eosin, glands, lumen_radius, mean_radius)
    # Nuclei: malignant = more, larger, pleomorphic; benign = smaller and regular.
    size_factor = 1.3 if malignant else 1.0
    variability = 0.35 if malignant else 0.12
    nuclear_area = area_fraction * (1.3 if malignant else 1.0) * width * height
    count = int(nuclear_area / (np.pi * (mean_radius * size_factor) ** 2))
    count = min(max(count, 1), 6000)
    scattered = np.stack([rng.uniform(0, height, count), rng.uniform(0, width, count)], axis=1)
    rims = np.concatenate(rim_centers) if rim_centers else np.zeros((0, 2))
    centers = np.concatenate([rims, scattered[: max(0, count - len(rims))]])
    total = len(centers)
    radius = mean_radius * size_factor * rng.lognormal(0.0, variability, total)
    radius = np.clip(radius, 0.5, mean_radius * 2.5)
    elongation = rng.uniform(1.0, 1.9 if malignant else 1.3, total)
    darkness = rng.uniform(0.7, 1.0, total) * (1.2 if malignant else 1.0)
    nuclei = (centers, radius * elongation, radius / np.sqrt(elongation))
    nuclei += (rng.uniform(0, np.pi, total), darkness)
    hematoxylin = np.zeros((height, width), dtype=np.float32)
    _stamp_ellipses(hematoxylin, *(values.astype(np.float32) for values in nuclei))
    return hematoxylin, eosin, 250.0


def _hard_tissue(rng, nested, morphology, fibres, magnification, width, height, stain):
    """Haematoxylin and eosin maps in which only the nuclei's `morphology` (see
    _HARD_MORPHOLOGY) and their arrangement (`nested`: malignant nests, else benign order)
    differ between the classes; `fibres` is the stroma's stretch."""
    scale = width / _REFERENCE_WIDTH
    area_fraction = _HARD_AREA_FRACTION * stain.density_factor * rng.lognormal(0.0, 0.15)
    brightness = rng.uniform(238.0, 252.0)
    eosin = _stroma(rng, height, width, scale, stretch=fibres)
    mean_radius = max(0.6, _NUCLEUS_RADIUS[magnification] * scale)
    lumen_radius = max(1.0, 45.0 * scale * rng.uniform(0.7, 1.4) * (magnification / 100.0) ** 0.5)
    glands = rng.poisson(_HARD_GLANDS)
    rim_centers, lumens = _carve_lumens(rng, eosin, glands, lumen_radius, mean_radius)
    expected = min(area_fraction * width * height / (np.pi * mean_radius**2), 6000.0)
    if nested:
        centers = _nest_centers(rng, expected, mean_radius, width, height)
    else:
        centers = _lattice_centers(rng, expected, width, height, rim_centers)
    for center, radii in lumens:
        distance = np.hypot(*((centers - center) / radii).T)
        centers = centers[distance > 1.0 + 0.5 * mean_radius / lumen_radius]
    hematoxylin = np.zeros((height, width), dtype=np.float32)
    # Nuclear area times mean darkness (0.85), whatever the arrangement: overlaps in the nests are
    # paid for with more nuclei, so that mean haematoxylin, hence mean colour, says nothing.
    nuclei = _hard_nuclei(rng, centers, mean_radius, morphology)
    _stamp_to_budget(hematoxylin, nuclei, area_fraction * 0.85)
    return hematoxylin, eosin, brightness


def _lattice_centers(rng, expected, width, height, rim_centers):
    """Benign order: the gland rims, then an evenly spaced, jittered hexagonal lattice in random
    order, then random fill; a little more than `expected`, as the budget decides where to stop."""
    spacing = np.sqrt(width * height / (1.2 * expected * 0.866))
    reach = np.hypot(width, height) / 2 + spacing
    steps = np.arange(-reach, reach, spacing)
    along, across = np.meshgrid(steps, np.arange(-reach, reach, spacing * 0.866))
    along = along + (np.round(across / (spacing * 0.866)) % 2) * spacing / 2
    along, across, angle = along.ravel(), across.ravel(), rng.uniform(0, np.pi)
    rows = height / 2 + along * np.sin(angle) + across * np.cos(angle)
    lattice = np.stack([rows, width / 2 + along * np.cos(angle) - across * np.sin(angle)], axis=1)
    lattice += rng.uniform(-spacing, spacing, 2) + rng.normal(0.0, 0.1 * spacing, lattice.shape)
    lattice = lattice[(lattice >= 0).all(1) & (lattice < (height, width)).all(1)]
    fill = rng.uniform((0, 0), (height, width), (int(expected) // 2 + 4, 2))
    return np.concatenate([*rim_centers, rng.permutation(lattice), fill])


def _nest_centers(rng, expected, mean_radius, width, height):
    """Malignant disorder: most nuclei crowd into a few overlapping nests that ignore the glands,
    the rest scatter; 2.5 times `expected`, in random order."""
    pool = int(2.5 * expected) + 8
    spread = max(_NEST_SPREAD * width, 2.5 * mean_radius)
    # Nests about twice the nuclear area in all, so that their nuclei touch and overlap.
    nests = max(2, int(round(expected * mean_radius**2 / (2 * spread**2))))
    parents = rng.uniform((0, 0), (height, width), (nests, 2))
    nested = int(pool * _NESTED_SHARE)
    children = parents[rng.integers(0, nests, nested)] + rng.normal(0.0, spread, (nested, 2))
    centers = np.concatenate([children, rng.uniform((0, 0), (height, width), (pool - nested, 2))])
    centers = centers[(centers >= 0).all(1) & (centers < (height, width)).all(1)]
    return rng.permutation(centers)


def _hard_nuclei(rng, centers, mean_radius, morphology):
    """Sizes, shapes and darkness of the nuclei at `centers` for a `morphology` (sigma, largest
    elongation, lobed share), each lobe right after its nucleus:
    (centers, radii_y, radii_x, angles, darkness)."""
    sigma, max_elongation, lobed_share = morphology
    count = len(centers)
    # exp(-sigma^2) keeps the mean nucleus area at pi * mean_radius^2 whatever the spread.
    radius = mean_radius * np.exp(-(sigma**2)) * rng.lognormal(0.0, sigma, count)
    elongation = rng.uniform(1.0, max_elongation, count)
    angles = rng.uniform(0, np.pi, count)
    darkness = rng.uniform(0.7, 1.0, count)
    lobed = np.flatnonzero(rng.random(count) < lobed_share)
    # A lobed nucleus is smaller, so that with its lobe it keeps about the same area.
    radius[lobed] *= 0.85
    radius = np.clip(radius, 0.5, 3.0 * mean_radius)
    direction = rng.uniform(0, 2 * np.pi, len(lobed))
    offset = 0.9 * radius[lobed, None] * np.stack([np.sin(direction), np.cos(direction)], axis=1)
    order = np.argsort(np.concatenate([np.arange(count), lobed]), kind="stable")
    lobe_radius = np.maximum(0.5, 0.55 * radius[lobed])
    return tuple(
        np.asarray(values, dtype=np.float32)[order]
        for values in (
            np.concatenate([centers, centers[lobed] + offset]),
            np.concatenate([radius * np.sqrt(elongation), lobe_radius]),
            np.concatenate([radius / np.sqrt(elongation), lobe_radius]),
            np.concatenate([angles, direction]),
            np.concatenate([darkness, darkness[lobed]]),
        )
    )


def _stamp_to_budget(canvas, nuclei, budget):
    """Stamps `nuclei` in order until the mean of `canvas` reaches `budget`, in damped steps, as
    overlaps and soft edges make the area of a step known only once it is stamped."""
    _, radii_y, radii_x, _, darkness = nuclei
    # expected[k]: what the first k nuclei would add if they neither overlapped nor had soft edges.
    expected = np.cumsum(np.r_[0.0, darkness * np.pi * radii_y * radii_x / canvas.size])
    start = 0
    while start < len(darkness):
        deficit = budget - float(canvas.mean())
        if deficit <= 0.01 * budget:
            break
        stop = max(start + 1, int(np.searchsorted(expected, expected[start] + 0.8 * deficit)))
        _stamp_ellipses(canvas, *(values[start:stop] for values in nuclei))
        start = stop
