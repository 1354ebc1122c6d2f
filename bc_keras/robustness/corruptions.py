"""The graded corruptions of the robustness benchmark: a registry of name -> function of one
uint8 image, a severity's parameter and a random generator, each at 5 severities, and the
adversarial attacks' records (their code needs the model: `bc_keras.robustness.adversarial`).

Every corruption is deterministic given the seed: image `i` under corruption `c` draws from
`numpy.random.default_rng([seed, crc32(c), i])`, so a result does not depend on the batch
size, on the other images or on which corruptions run beside it. The draws do not depend on
the severity either: each image keeps its noise field, its directions of brightness and stain
shift and its order of occluded cells, and a higher severity scales the same damage up (the
cells occluded at severity 2 include those of severity 1). Sizes are relative to the image (a
blur's sigma, the occluded cells), so that one severity means the same tissue damage at every
model input size. TensorFlow-free.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from bc_keras.errors import ConfigError
from bc_keras.histology.stain import hed_perturbation_numpy

SEVERITIES = (1, 2, 3, 4, 5)
CLEAN = 0
MAX_SEVERITY = SEVERITIES[-1]
KIND_IMAGE = "image"
KIND_ADVERSARIAL = "adversarial"
# Blur sigmas are given at this input size and scaled to the model's (ImageNet-C's unit).
REFERENCE_SIZE = 224
# Occlusion: the image is cut into a GRID x GRID lattice of cells, some filled with its mean.
OCCLUSION_GRID = 8
# PGD: steps, step size as a share of epsilon (Madry et al. use 2.5 * epsilon / steps).
PGD_STEPS = 5
PGD_STEP_SHARE = 0.5


@dataclass(frozen=True)
class Corruption:
    """One corruption: its parameter at each severity 1-5 and, for image corruptions, the
    function `(uint8 image [h, w, 3], value, numpy Generator) -> uint8 image`."""

    name: str
    title: str
    parameter: str
    values: tuple
    kind: str = KIND_IMAGE
    function: Callable | None = None

    def value(self, severity: int):
        """The parameter at `severity` (1-5)."""
        return self.values[check_severity(severity) - 1]


def _to_uint8(values) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def gaussian_noise(image, sd, rng) -> np.ndarray:
    """Adds independent normal noise of standard deviation `sd` (a share of 255) per value."""
    noise = rng.standard_normal(image.shape) * (sd * 255.0)
    return _to_uint8(image.astype(np.float64) + noise)


def blur_sigma(value: float, size: int) -> float:
    """The blur's sigma in pixels of a `size`-pixel image for a sigma of `value` at 224 px."""
    return float(value) * size / REFERENCE_SIZE


def gaussian_blur(image, sigma_at_224, rng) -> np.ndarray:
    """A Gaussian blur of each channel (reflecting edges), sigma scaled to the image size."""
    from scipy.ndimage import gaussian_filter

    sigma = blur_sigma(sigma_at_224, image.shape[1])
    blurred = gaussian_filter(image.astype(np.float64), sigma=(sigma, sigma, 0), mode="reflect")
    return _to_uint8(blurred)


def jpeg_compression(image, quality, rng) -> np.ndarray:
    """The image encoded as JPEG at `quality` (PIL, 4:2:0 chroma subsampling) and decoded."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


def brightness(image, shift, rng) -> np.ndarray:
    """Every value shifted by `shift` (a share of 255), brighter or darker by a fair coin per
    image (scanners err both ways)."""
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return _to_uint8(image.astype(np.float64) + sign * shift * 255.0)


def contrast(image, factor, rng) -> np.ndarray:
    """Deviations from the image's mean value scaled by `factor` (ImageNet-C's contrast)."""
    values = image.astype(np.float64)
    mean = values.mean()
    return _to_uint8((values - mean) * factor + mean)


def stain_signs(rng) -> tuple[np.ndarray, np.ndarray]:
    """The directions of a stain shift: a random sign per stain (H, E, D) for the scale and
    one for the shift."""
    signs = np.where(rng.random(6) < 0.5, -1.0, 1.0)
    return signs[:3], signs[3:]


def stain_shift(image, amplitude, rng) -> np.ndarray:
    """The HED perturbation of training's stain augmentation (Tellez et al.) at a fixed
    amplitude: `s_c' = (1 +- amplitude) * s_c +- amplitude` per stain c, the signs drawn per
    image, so that images of one class are shifted apart (as slides of other labs are)."""
    scale_signs, shift_signs = stain_signs(rng)
    alpha = 1.0 + amplitude * scale_signs
    beta = amplitude * shift_signs
    return _to_uint8(hed_perturbation_numpy(image, alpha, beta))


def grid_edges(size: int, cells: int = OCCLUSION_GRID) -> np.ndarray:
    """The `cells + 1` pixel edges of a lattice of `cells` near-equal cells along `size`."""
    return np.rint(np.linspace(0, size, cells + 1)).astype(int)


def occlusion_cells(count: int, rng) -> np.ndarray:
    """The first `count` cells (indices into the flattened GRID x GRID lattice) of an order
    drawn at random: a larger count occludes the same cells and more."""
    return rng.permutation(OCCLUSION_GRID * OCCLUSION_GRID)[: int(count)]


def occlusion(image, cells, rng) -> np.ndarray:
    """`cells` random cells of an 8 x 8 lattice filled with the image's mean colour (so the
    colour statistics barely move and only the local evidence goes)."""
    height, width = image.shape[:2]
    rows, columns = grid_edges(height), grid_edges(width)
    fill = _to_uint8(image.reshape(-1, 3).astype(np.float64).mean(axis=0))
    out = image.copy()
    for cell in occlusion_cells(cells, rng):
        row, column = divmod(int(cell), OCCLUSION_GRID)
        out[rows[row] : rows[row + 1], columns[column] : columns[column + 1]] = fill
    return out


CORRUPTIONS = {
    corruption.name: corruption
    for corruption in (
        Corruption("gaussian_noise", "Gaussian noise", "sd (share of 255)",
                   (0.08, 0.12, 0.18, 0.26, 0.38), function=gaussian_noise),
        Corruption("gaussian_blur", "Gaussian blur", "sigma (px at 224 px)",
                   (1.0, 2.0, 3.0, 4.0, 6.0), function=gaussian_blur),
        Corruption("jpeg_compression", "JPEG compression", "quality",
                   (25, 18, 15, 10, 7), function=jpeg_compression),
        Corruption("brightness", "brightness", "shift (share of 255, either sign)",
                   (0.1, 0.2, 0.3, 0.4, 0.5), function=brightness),
        Corruption("contrast", "contrast", "factor", (0.4, 0.3, 0.2, 0.1, 0.05),
                   function=contrast),
        Corruption("stain_shift", "H&E stain shift", "HED amplitude (scale and OD shift)",
                   (0.1, 0.2, 0.3, 0.4, 0.5), function=stain_shift),
        Corruption("occlusion", "occlusion", "cells of 64 (share of the area)",
                   (4, 8, 16, 24, 32), function=occlusion),
        Corruption("fgsm", "FGSM", "epsilon (grey levels of 255)", (0.5, 1.0, 2.0, 4.0, 8.0),
                   kind=KIND_ADVERSARIAL),
        Corruption("pgd", f"PGD ({PGD_STEPS} steps)", "epsilon (grey levels of 255)",
                   (0.5, 1.0, 2.0, 4.0, 8.0), kind=KIND_ADVERSARIAL),
    )
}  # fmt: skip


def check_severity(severity) -> int:
    """`severity` as an int in 1-5."""
    valid = isinstance(severity, int | np.integer) and not isinstance(severity, bool)
    if not valid or int(severity) not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}. Received: severity={severity!r}")
    return int(severity)


def corruption_of(name: str) -> Corruption:
    """The registry's record of `name`."""
    if name not in CORRUPTIONS:
        raise ValueError(
            f"Unknown corruption; use one of {sorted(CORRUPTIONS)}. Received: {name=!r}"
        )
    return CORRUPTIONS[name]


def check_corruption_names(names) -> tuple[str, ...]:
    """The corruptions a user asked for (all of them for None or an empty list), in the
    registry's order, each once.

    Raises:
        ConfigError: naming an unknown corruption and the known ones.
    """
    if not names:
        return tuple(CORRUPTIONS)
    unknown = [name for name in names if name not in CORRUPTIONS]
    if unknown:
        raise ConfigError(
            f"unknown corruption {unknown[0]!r}; choose from {', '.join(CORRUPTIONS)}"
        )
    return tuple(name for name in CORRUPTIONS if name in set(names))


def check_severities(values) -> tuple[int, ...]:
    """The severities a user asked for (all of 1-5 for None or an empty list), sorted, each
    once; severity 0 (the clean images) is always measured and may be named too.

    Raises:
        ConfigError: naming a value that is not a whole number in 0-5.
    """
    if not values:
        return SEVERITIES
    chosen = set()
    for value in values:
        text = str(value).strip()
        if not text.isdigit() or int(text) > MAX_SEVERITY:
            raise ConfigError(
                f"severity {text!r} is out of range; use whole numbers from 1 to {MAX_SEVERITY} "
                f"(0, the clean images, is always measured)"
            )
        chosen.add(int(text))
    return tuple(sorted(chosen - {CLEAN}))


def image_rng(seed: int, name: str, index: int) -> np.random.Generator:
    """The generator of image `index` under corruption `name`, at every severity (see the
    module docstring)."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), int(index)])


def corrupt(name: str, images, severity: int, seed: int = 0, indices=None) -> np.ndarray:
    """Corruption `name` at `severity` (0: unchanged) of a uint8 batch `[n, h, w, 3]`.

    Args:
        name: an image corruption of `CORRUPTIONS` (the adversarial ones need the model:
            `bc_keras.robustness.adversarial`).
        images: uint8 RGB images at the model's input size.
        severity: 0-5.
        seed: the benchmark's seed.
        indices: each image's position in its split (default 0..n-1), which keys its draws.

    Returns:
        The corrupted uint8 images.
    """
    corruption = corruption_of(name)
    if corruption.kind != KIND_IMAGE:
        raise ValueError(
            f"{name} is an attack on a model, not an image corruption. Received: {name=!r}"
        )
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            "images must be a uint8 batch (count, height, width, 3). Received: "
            f"dtype={images.dtype}, shape={images.shape}"
        )
    if severity == CLEAN:
        return images.copy()
    value = corruption.value(severity)
    indices = range(len(images)) if indices is None else indices
    return np.stack(
        [
            corruption.function(image, value, image_rng(seed, name, index))
            for image, index in zip(images, indices, strict=True)
        ]
    ) if len(images) else images.copy()  # fmt: skip
