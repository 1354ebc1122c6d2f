"""H&E stain colour in NumPy (TensorFlow-free): the HED space, stain augmentation and stain
normalisation (Macenko, Reinhard).

Optical density (OD) convention, used everywhere here and by the TensorFlow op in `augment`:
an 8-bit intensity I in [0, 255] is read as transmitted light I + 1 out of an incident 256, so

    OD = -ln((I + 1) / 256)        I = 256 * exp(-OD) - 1

(natural logarithm). White (255) has OD 0 and black (0) has OD ln(256) ~ 5.55, so every log is
finite without clamping and the two formulas are exact inverses on [0, 255]. Stain amounts and
the augmentation's `beta` are in these natural-log OD units.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from bc_keras.errors import DataError, one_line

INCIDENT_INTENSITY = 256.0
INTENSITY_OFFSET = 1.0

# Ruifrok & Johnston (2001), as in scikit-image's `rgb2hed`: rows are the OD vectors (R, G, B)
# of haematoxylin, eosin and DAB, so that `od = hed @ RGB_FROM_HED`.
RGB_FROM_HED = np.array(
    [
        [0.65, 0.70, 0.29],
        [0.07, 0.99, 0.11],
        [0.27, 0.57, 0.78],
    ]
)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)

METHOD_MACENKO = "macenko"
METHOD_REINHARD = "reinhard"
NORMALIZATION_METHODS = (METHOD_MACENKO, METHOD_REINHARD)

# Macenko et al. (2009): background OD threshold and the angle percentile.
MACENKO_BETA = 0.15
MACENKO_ALPHA = 1.0
MACENKO_MAX_PERCENTILE = 99.0
# An image with fewer tissue pixels than either of these counts as tissue-free.
MIN_TISSUE_PIXELS = 16
MIN_TISSUE_FRACTION = 0.01


def optical_density(rgb) -> np.ndarray:
    """OD of intensities in [0, 255] (clipped to it first), float64; see the module docstring."""
    rgb = np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 255.0)
    return -np.log((rgb + INTENSITY_OFFSET) / INCIDENT_INTENSITY)


def intensity_from_optical_density(od) -> np.ndarray:
    """The inverse of `optical_density`, clipped to [0, 255], float64."""
    rgb = INCIDENT_INTENSITY * np.exp(-np.asarray(od, dtype=np.float64)) - INTENSITY_OFFSET
    return np.clip(rgb, 0.0, 255.0)


def rgb_to_hed(rgb) -> np.ndarray:
    """Haematoxylin, eosin and DAB amounts (`[..., 3]`, OD units) of RGB values in [0, 255].

    Unlike scikit-image, negative amounts (colours outside the three stains' cone) are kept,
    so that `hed_to_rgb(rgb_to_hed(x))` gives `x` back.
    """
    return optical_density(rgb) @ HED_FROM_RGB


def hed_to_rgb(hed) -> np.ndarray:
    """RGB values in [0, 255] (float64, clipped) of HED amounts; the inverse of `rgb_to_hed`."""
    return intensity_from_optical_density(np.asarray(hed, dtype=np.float64) @ RGB_FROM_HED)


def hed_perturbation_numpy(image, alpha, beta) -> np.ndarray:
    """Tellez et al. (2018) HED perturbation: `s_c' = alpha_c * s_c + beta_c` for each stain c.

    Args:
        image: RGB values in [0, 255], shape `[..., 3]`.
        alpha: 3 scale factors (H, E, D).
        beta: 3 shifts in OD units (H, E, D).

    Returns:
        float64 RGB values, clipped to [0, 255], of the same shape.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if alpha.shape != (3,) or beta.shape != (3,):
        raise ValueError(
            f"alpha and beta must have shape (3,). Received: alpha={alpha!r}, beta={beta!r}"
        )
    return hed_to_rgb(rgb_to_hed(image) * alpha + beta)


def check_stain_strength(strength: float) -> float:
    """`strength` as a float if it lies in [0, 1) (so that every alpha stays positive)."""
    if not 0.0 <= float(strength) < 1.0:
        raise ValueError(f"strength must be in [0, 1). Received: strength={strength!r}")
    return float(strength)


class StainAugmentation:
    """Random HED perturbation of one image, for `ImageDataGenerator(preprocessing_function=)`.

    Each call draws alpha ~ U(1 - strength, 1 + strength) and beta ~ U(-strength, strength) per
    stain from its own generator (Tellez et al. 2019 call 0.05 "light" and 0.2 "strong"). With
    several generator worker processes each holds a copy of the generator.

    Args:
        strength: in [0, 1); 0 returns the image unchanged (as float32).
        seed: seeds the generator; None draws fresh entropy.
        then: a function applied to the result (e.g. a backbone's `preprocess_input`).
    """

    def __init__(self, strength: float, seed: int | None = None, then: Callable | None = None):
        self.strength = check_stain_strength(strength)
        self.seed = seed
        self.then = then
        self._rng = np.random.default_rng(seed)

    def __call__(self, image) -> np.ndarray:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"Expected one HxWx3 image. Received: image.shape={image.shape}")
        if self.strength > 0:
            alpha = self._rng.uniform(1.0 - self.strength, 1.0 + self.strength, size=3)
            beta = self._rng.uniform(-self.strength, self.strength, size=3)
            image = hed_perturbation_numpy(image, alpha, beta).astype(np.float32)
        else:
            image = image.copy()
        return image if self.then is None else self.then(image)

    def reseed(self, *key: int) -> None:
        """Restarts the draws from `key` (e.g. seed, epoch, batch), so a resumed run draws
        what an uninterrupted one would."""
        self._rng = np.random.default_rng([int(k) for k in key])

    def __repr__(self) -> str:
        return f"StainAugmentation(strength={self.strength}, seed={self.seed}, then={self.then})"


def _check_uint8_rgb(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            "Expected a uint8 RGB image of shape (height, width, 3). "
            f"Received: dtype={image.dtype}, shape={image.shape}"
        )
    return image


def _to_uint8(rgb) -> np.ndarray:
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def tissue_mask(image, beta: float = MACENKO_BETA) -> np.ndarray:
    """True where a pixel is tissue: its OD reaches `beta` in at least one channel.

    Background is light in every channel (OD below `beta` everywhere). Dropping a pixel with OD
    below `beta` in *any* channel, as widely copied code does, would also drop pale pure-eosin
    stroma (its red OD is small), which is where the eosin vector is seen best.
    """
    return optical_density(image).max(axis=-1) >= beta


def _too_little_tissue(tissue_pixels: int, pixels: int) -> bool:
    return tissue_pixels < max(MIN_TISSUE_PIXELS, MIN_TISSUE_FRACTION * pixels)


def tissue_brightness(image, beta: float = MACENKO_BETA) -> float | None:
    """Mean grey level (mean of R, G, B) of the tissue pixels; None for a tissue-free image
    (fewer tissue pixels than MIN_TISSUE_PIXELS or than MIN_TISSUE_FRACTION of the image)."""
    mask = tissue_mask(image, beta)
    if _too_little_tissue(int(mask.sum()), mask.size):
        return None
    return float(np.asarray(image, dtype=np.float64)[mask].mean())


def macenko_stain_vectors(
    image, beta: float = MACENKO_BETA, alpha: float = MACENKO_ALPHA
) -> np.ndarray | None:
    """Unit OD vectors of haematoxylin and eosin (rows, `[2, 3]`) of a uint8 RGB image.

    Macenko et al. (2009): the tissue pixels' ODs are projected on the plane of the two largest
    eigenvectors of their covariance; the stains are the directions at the `alpha` and
    `100 - alpha` percentiles of the angle in that plane. Haematoxylin is the one that absorbs
    more red. Returns None for a tissue-free image (see `tissue_brightness`).
    """
    od = optical_density(image).reshape(-1, 3)
    tissue = od[od.max(axis=1) >= beta]
    if _too_little_tissue(len(tissue), len(od)):
        return None
    _, eigenvectors = np.linalg.eigh(np.cov(tissue, rowvar=False))
    plane = eigenvectors[:, [2, 1]]
    # Point the main axis into the tissue so that every angle lies within (-pi/2, pi/2).
    if tissue.mean(axis=0) @ plane[:, 0] < 0:
        plane[:, 0] = -plane[:, 0]
    projected = tissue @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angles, [alpha, 100.0 - alpha])
    vectors = np.stack([plane @ [np.cos(a), np.sin(a)] for a in (low, high)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors if vectors[0, 0] >= vectors[1, 0] else vectors[::-1].copy()


def stain_concentrations(image, stain_vectors) -> np.ndarray:
    """Least-squares amounts `[pixels, 2]` of each stain in every pixel (OD = C @ vectors)."""
    od = optical_density(image).reshape(-1, 3)
    return np.linalg.lstsq(np.asarray(stain_vectors).T, od.T, rcond=None)[0].T


class MacenkoNormalizer:
    """Macenko et al. (2009) stain normalisation to a target image.

    An image's stain vectors and 99th-percentile stain amounts are estimated; its amounts are
    rescaled to the target's maxima and recombined with the target's vectors. A tissue-free
    image (blank or white, see `tissue_brightness`) is returned unchanged by `transform`;
    `fit` on one raises `DataError`.
    """

    method = METHOD_MACENKO

    def __init__(self, beta: float = MACENKO_BETA, alpha: float = MACENKO_ALPHA):
        if not 0.0 <= alpha < 50.0:
            raise ValueError(f"alpha must be a percentile in [0, 50). Received: alpha={alpha!r}")
        self.beta = float(beta)
        self.alpha = float(alpha)
        self.stain_vectors: np.ndarray | None = None
        self.max_concentrations: np.ndarray | None = None

    def _statistics(self, image):
        vectors = macenko_stain_vectors(image, self.beta, self.alpha)
        if vectors is None:
            return None, None
        concentrations = stain_concentrations(image, vectors)
        return vectors, np.percentile(concentrations, MACENKO_MAX_PERCENTILE, axis=0)

    def fit(self, target) -> MacenkoNormalizer:
        """Estimates the target's stain vectors and maximum amounts; returns self."""
        vectors, maxima = self._statistics(_check_uint8_rgb(target))
        if vectors is None or np.any(maxima <= 0):
            raise DataError(
                "the stain-normalisation target shows no stained tissue (almost every pixel is "
                "background); choose a target image with tissue"
            )
        self.stain_vectors, self.max_concentrations = vectors, maxima
        return self

    def transform(self, image) -> np.ndarray:
        """`image` (uint8 RGB) in the target's stain colours, as uint8 of the same shape."""
        if self.stain_vectors is None:
            raise ValueError("MacenkoNormalizer.transform needs fit(target) to be called first.")
        image = _check_uint8_rgb(image)
        vectors, maxima = self._statistics(image)
        if vectors is None:
            return image.copy()
        concentrations = stain_concentrations(image, vectors)
        # A stain that is absent (maximum ~0) keeps its amounts rather than amplifying noise.
        scale = np.where(maxima > 1e-6, self.max_concentrations / np.maximum(maxima, 1e-6), 1.0)
        od = (concentrations * scale) @ self.stain_vectors
        return _to_uint8(intensity_from_optical_density(od).reshape(image.shape))

    def target_statistics(self) -> dict:
        """The fitted target, JSON-ready."""
        return {
            "stain_vectors": {
                "hematoxylin": self.stain_vectors[0].tolist(),
                "eosin": self.stain_vectors[1].tolist(),
            },
            "max_concentrations": {
                "hematoxylin": float(self.max_concentrations[0]),
                "eosin": float(self.max_concentrations[1]),
            },
            "beta": self.beta,
            "alpha": self.alpha,
        }


# Reinhard et al. (2001): RGB -> LMS cone space, then decorrelated log space of Ruderman et al.
RGB_TO_LMS = np.array(
    [
        [0.3811, 0.5783, 0.0402],
        [0.1967, 0.7244, 0.0782],
        [0.0241, 0.1288, 0.8444],
    ]
)
LMS_TO_RGB = np.linalg.inv(RGB_TO_LMS)
LOG_LMS_TO_LALPHABETA = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]]
)
LALPHABETA_TO_LOG_LMS = np.linalg.inv(LOG_LMS_TO_LALPHABETA)


def rgb_to_lalphabeta(rgb) -> np.ndarray:
    """Ruderman's l-alpha-beta (`[..., 3]`, float64) of RGB values in [0, 255].

    RGB is read as (I + 1) / 256 (the OD convention's offset) so that black stays finite:
    every LMS value is then at least 1/256, and log10(LMS) is decorrelated by the fixed matrix
    `LOG_LMS_TO_LALPHABETA`. The inverse uses the exact matrix inverses, not the paper's
    rounded LMS -> RGB matrix, so that the round trip is exact.
    """
    rgb = (np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 255.0) + INTENSITY_OFFSET) / (
        INCIDENT_INTENSITY
    )
    return np.log10(rgb @ RGB_TO_LMS.T) @ LOG_LMS_TO_LALPHABETA.T


def lalphabeta_to_rgb(lab) -> np.ndarray:
    """RGB values in [0, 255] (float64, clipped) of l-alpha-beta; the inverse of the above."""
    lms = 10.0 ** (np.asarray(lab, dtype=np.float64) @ LALPHABETA_TO_LOG_LMS.T)
    rgb = (lms @ LMS_TO_RGB.T) * INCIDENT_INTENSITY - INTENSITY_OFFSET
    return np.clip(rgb, 0.0, 255.0)


class ReinhardNormalizer:
    """Reinhard et al. (2001) colour transfer: per-channel l-alpha-beta mean and standard
    deviation of the whole image matched to the target's. A flat channel (deviation ~0) is only
    shifted, so a blank image becomes the target's mean colour rather than failing."""

    method = METHOD_REINHARD

    def __init__(self):
        self.means: np.ndarray | None = None
        self.stds: np.ndarray | None = None

    @staticmethod
    def _statistics(image):
        lab = rgb_to_lalphabeta(image).reshape(-1, 3)
        return lab.mean(axis=0), lab.std(axis=0)

    def fit(self, target) -> ReinhardNormalizer:
        """Records the target's l-alpha-beta means and deviations; returns self."""
        self.means, self.stds = self._statistics(_check_uint8_rgb(target))
        return self

    def transform(self, image) -> np.ndarray:
        """`image` (uint8 RGB) with the target's colour statistics, as uint8."""
        if self.means is None:
            raise ValueError("ReinhardNormalizer.transform needs fit(target) to be called first.")
        image = _check_uint8_rgb(image)
        lab = rgb_to_lalphabeta(image)
        means, stds = self._statistics(image)
        scale = np.where(stds > 1e-8, self.stds / np.maximum(stds, 1e-8), 1.0)
        return _to_uint8(lalphabeta_to_rgb((lab - means) * scale + self.means))

    def target_statistics(self) -> dict:
        """The fitted target, JSON-ready."""
        return {
            "lalphabeta_mean": self.means.tolist(),
            "lalphabeta_std": self.stds.tolist(),
        }


def make_normalizer(method: str) -> MacenkoNormalizer | ReinhardNormalizer:
    """An unfitted normaliser for METHOD_MACENKO or METHOD_REINHARD."""
    if method == METHOD_MACENKO:
        return MacenkoNormalizer()
    if method == METHOD_REINHARD:
        return ReinhardNormalizer()
    raise ValueError(f"method must be one of {NORMALIZATION_METHODS}. Received: method={method!r}")


def restore_normalizer(record: dict) -> MacenkoNormalizer | ReinhardNormalizer:
    """The fitted normaliser a model's metadata (or normalize.json) records: `{"method",
    "target_statistics"}` as `target_statistics()` wrote them."""
    try:
        method, statistics = record["method"], record["target_statistics"]
        normalizer = make_normalizer(method)
        if method == METHOD_MACENKO:
            normalizer = MacenkoNormalizer(float(statistics["beta"]), float(statistics["alpha"]))
            vectors, maxima = statistics["stain_vectors"], statistics["max_concentrations"]
            normalizer.stain_vectors = np.array([vectors["hematoxylin"], vectors["eosin"]], float)
            normalizer.max_concentrations = np.array(
                [maxima["hematoxylin"], maxima["eosin"]], float
            )
        else:
            normalizer.means = np.asarray(statistics["lalphabeta_mean"], float).reshape(3)
            normalizer.stds = np.asarray(statistics["lalphabeta_std"], float).reshape(3)
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"the recorded stain normaliser is incomplete or malformed ({one_line(error)}); "
            "retrain on a split written by normalize_stains.py"
        ) from None
    return normalizer


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB; `DataError` naming the file if it cannot be read."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(
            f"cannot read image {path} ({one_line(error)}); replace or remove it"
        ) from error


def file_tissue_brightness(path: str | Path) -> float | None:
    """`tissue_brightness` of an image file (a picklable task for worker processes)."""
    return tissue_brightness(read_rgb(path))


def normalize_file(normalizer, source: str | Path, destination: str | Path) -> bool:
    """Writes `normalizer.transform` of the image at `source` as a PNG at `destination`.

    Returns:
        True if the image shows no tissue (`tissue_brightness` is None): Macenko copies such an
        image unchanged, Reinhard maps it like any other.
    """
    image = read_rgb(source)
    Image.fromarray(normalizer.transform(image)).save(destination, format="PNG")
    return tissue_brightness(image) is None
