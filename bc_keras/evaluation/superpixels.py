"""SLIC superpixels (Achanta et al., 2012) in NumPy: the segments LIME switches on and off.

A short k-means over (L*a*b*, row, column) seeded on a regular grid, each centre searching only
its own 2S x 2S window, as in the paper; no randomness, so the same image always gives the same
segments. Written here rather than taken from scikit-image so that explanations need no extra
dependency (see `bc_keras.evaluation.explain`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

DEFAULT_SEGMENTS = 50
# Colour (L*a*b* units) against space: scikit-image's slic default, the paper's m = 10.
DEFAULT_COMPACTNESS = 10.0
DEFAULT_ITERATIONS = 10
# Gaussian smoothing (pixels) before clustering, so that a fine texture (a checkerboard, nuclei
# chromatin) is one region rather than a salt-and-pepper of two colours.
DEFAULT_SIGMA = 1.0
# A connected piece smaller than this fraction of the grid cell joins its neighbour (the
# blended pixels where edges meet, after smoothing, would otherwise be superpixels of their own).
MIN_SIZE_FRACTION = 0.25

# sRGB (D65) to CIE XYZ, and the D65 white point.
_RGB_TO_XYZ = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def rgb_to_lab(image) -> np.ndarray:
    """CIE L*a*b* (D65) of an RGB image: uint8 in [0, 255] or float in [0, 1]; float64
    `[H, W, 3]` with L* in [0, 100]."""
    rgb = np.asarray(image)
    rgb = rgb / 255.0 if rgb.dtype == np.uint8 else np.clip(rgb.astype(np.float64), 0.0, 1.0)
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE_D65
    epsilon = (6.0 / 29.0) ** 3
    f = np.where(xyz > epsilon, np.cbrt(xyz), xyz / (3 * (6.0 / 29.0) ** 2) + 4.0 / 29.0)
    lightness = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([lightness, a, b], axis=-1)


def _grid_centres(height: int, width: int, num_segments: int):
    """Centre positions on a regular grid of about `num_segments` cells, and the step S."""
    step = np.sqrt(height * width / num_segments)
    rows = max(1, min(height, int(round(height / step))))
    columns = max(1, min(width, int(round(width / step))))
    centre_rows = (np.arange(rows) + 0.5) * height / rows
    centre_columns = (np.arange(columns) + 0.5) * width / columns
    grid = np.stack(np.meshgrid(centre_rows, centre_columns, indexing="ij"), axis=-1)
    return grid.reshape(-1, 2), max(height / rows, width / columns)


def _assign(lab, rows, columns, centre_positions, centre_colours, step, compactness):
    """Each pixel's nearest centre among those whose 2S x 2S window holds it (SLIC's local
    search: about 4 distances per pixel, not one per centre); a pixel no window covers (the
    centres moved away) takes the spatially nearest centre."""
    height, width = rows.shape
    best = np.full((height, width), np.inf)
    assignment = np.full((height, width), -1, dtype=np.int64)
    for index, ((row, column), colour) in enumerate(
        zip(centre_positions, centre_colours, strict=True)
    ):
        top, bottom = max(0, int(np.floor(row - step))), min(height, int(np.ceil(row + step)))
        left, right = max(0, int(np.floor(column - step))), min(width, int(np.ceil(column + step)))
        window = (slice(top, bottom), slice(left, right))
        spatial = ((rows[window] - row) ** 2 + (columns[window] - column) ** 2) / step**2
        distance = spatial + np.sum((lab[window] - colour) ** 2, axis=-1) / compactness**2
        closer = distance < best[window]
        best[window] = np.where(closer, distance, best[window])
        assignment[window] = np.where(closer, index, assignment[window])
    uncovered = assignment < 0
    if np.any(uncovered):
        points = np.stack([rows[uncovered], columns[uncovered]], axis=1)
        squared = np.sum((points[:, None, :] - centre_positions[None]) ** 2, axis=-1)
        assignment[uncovered] = np.argmin(squared, axis=1)
    return assignment


def _enforce_connectivity(assignment, lab, min_size: int) -> np.ndarray:
    """Every connected piece of every cluster as a label of its own, the pieces smaller than
    `min_size` pixels (smallest first) merged into the touching piece of the nearest mean
    colour, so that a merge does not carry pixels across a colour edge."""
    pieces = np.zeros(assignment.shape, dtype=np.int64)
    count = 0
    for cluster in np.unique(assignment):
        components, number = ndimage.label(assignment == cluster)
        pieces[components > 0] = components[components > 0] + count
        count += number
    flat = pieces.ravel()
    sizes = np.bincount(flat, minlength=count + 1).astype(np.float64)
    colours = (
        np.stack([np.bincount(flat, lab[..., k].ravel(), count + 1) for k in range(3)], axis=1)
        / np.maximum(sizes, 1)[:, None]
    )
    boxes = [None, *ndimage.find_objects(pieces)]
    height, width = pieces.shape
    for piece in np.argsort(sizes, kind="stable"):
        if piece == 0 or sizes[piece] == 0 or sizes[piece] >= min_size:
            continue
        rows, columns = boxes[piece]
        window = (
            slice(max(0, rows.start - 1), min(height, rows.stop + 1)),
            slice(max(0, columns.start - 1), min(width, columns.stop + 1)),
        )
        mask = pieces[window] == piece
        neighbours = np.unique(pieces[window][ndimage.binary_dilation(mask) & ~mask])
        if len(neighbours) == 0:  # the piece is the whole image
            continue
        target = neighbours[np.argmin(np.sum((colours[neighbours] - colours[piece]) ** 2, 1))]
        pieces[window][mask] = target
        total = sizes[target] + sizes[piece]
        colours[target] = (colours[target] * sizes[target] + colours[piece] * sizes[piece]) / total
        sizes[target], sizes[piece] = total, 0
        (target_rows, target_columns), (window_rows, window_columns) = boxes[target], window
        boxes[target] = (
            slice(min(target_rows.start, window_rows.start), max(target_rows.stop, window_rows.stop)),
            slice(min(target_columns.start, window_columns.start), max(target_columns.stop, window_columns.stop)),
        )  # fmt: skip
    return pieces


def slic(
    image,
    num_segments: int = DEFAULT_SEGMENTS,
    compactness: float = DEFAULT_COMPACTNESS,
    iterations: int = DEFAULT_ITERATIONS,
    sigma: float = DEFAULT_SIGMA,
) -> np.ndarray:
    """Superpixels of an RGB image by SLIC: k-means on (L*a*b*, row, column).

    The distance of a pixel to a centre is `|lab - lab_c|^2 / m^2 + |xy - xy_c|^2 / S^2`
    (m = `compactness`, S the grid step), each centre searching its 2S x 2S window.

    Args:
        image: `[H, W, 3]` RGB, uint8 or float in [0, 1].
        num_segments: the approximate number of superpixels (the grid's cells).
        compactness: m; larger gives squarer, more grid-like superpixels.
        iterations: k-means assignment / update rounds.
        sigma: the Gaussian smoothing of each L*a*b* channel first (pixels), 0 for none.

    Returns:
        int32 `[H, W]` labels 0 .. K-1, numbered in raster order of first appearance; each
        superpixel is connected (4-neighbours), and pieces smaller than a quarter of a grid
        cell are merged into the neighbour they touch most, so K is about `num_segments`.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or 0 in image.shape:
        raise ValueError(f"image must be RGB (height, width, 3). Received: shape={image.shape}")
    if num_segments < 1 or iterations < 1 or compactness <= 0 or sigma < 0:
        raise ValueError(
            "num_segments and iterations must be positive, compactness > 0 and sigma >= 0. "
            f"Received: {num_segments=}, {iterations=}, {compactness=}, {sigma=}"
        )
    height, width = image.shape[:2]
    lab = rgb_to_lab(image)
    if sigma > 0:
        lab = ndimage.gaussian_filter(lab, sigma=(sigma, sigma, 0), mode="nearest")
    centre_positions, step = _grid_centres(height, width, num_segments)
    nearest = np.floor(centre_positions).astype(int)
    centre_colours = lab[nearest[:, 0], nearest[:, 1]]
    rows, columns = np.mgrid[:height, :width] + 0.5
    for _ in range(iterations):
        assignment = _assign(
            lab, rows, columns, centre_positions, centre_colours, step, compactness
        )
        counts = np.bincount(assignment.ravel(), minlength=len(centre_positions))
        used = counts > 0
        for values, centres in (
            ((rows, columns), centre_positions),
            (np.moveaxis(lab, -1, 0), centre_colours),
        ):
            for k, channel in enumerate(values):
                sums = np.bincount(assignment.ravel(), channel.ravel(), len(centres))
                centres[used, k] = sums[used] / counts[used]
    min_size = max(1, int(MIN_SIZE_FRACTION * height * width / len(centre_positions)))
    pieces = _enforce_connectivity(assignment, lab, min_size)
    _, first, relabelled = np.unique(pieces, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # labels numbered by first appearance
    return order[relabelled].reshape(height, width).astype(np.int32)
