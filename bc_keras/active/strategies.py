"""The selection strategies as pure NumPy functions of probabilities or features, and the
patient-aware batch: which pool images a round annotates, in rank order, with their scores.

Every score reads "higher is chosen first":
- `entropy`: the binary entropy of the malignant probability, in bits (1 at p = 0.5).
- `margin`: closeness to the model's decision threshold t, 1 - |p - t| / max(t, 1 - t) (1 on
  the threshold, 0 at the far end). With t = 0.5 this is 1 - |p1 - p0|, the usual "smallest
  margin" rule, and ranks as entropy does; a model with a threshold chosen on validation
  (the robust recipe) is asked about the images near *its* decision boundary instead.
- `random`: a uniform draw seeded by the seed given (the baseline).
- `coreset`: k-center greedy (Sener & Savarese 2018) on penultimate features: each pick is the
  image farthest from every labelled or already picked image; its score is that distance.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from bc_keras.active import (
    STRATEGIES,
    STRATEGY_CORESET,
    STRATEGY_ENTROPY,
    STRATEGY_MARGIN,
    STRATEGY_RANDOM,
)
from bc_keras.errors import ConfigError
from bc_keras.histology.breakhis import UNKNOWN, slide_id_of

# Without --patient-cap, one patient gives at most ceil(budget / this) images to a round, so a
# round spans at least this many patients when the pool has them.
PATIENTS_PER_ROUND = 4
# Distances of the coreset are computed in blocks of this many pool images (memory bound).
DISTANCE_BLOCK = 2048


def check_strategy(name: str) -> str:
    """`name` if it is a known strategy; else a ConfigError naming the choices."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return name


def entropy_scores(probabilities) -> np.ndarray:
    """The binary entropy of each malignant probability, in bits (0 * log 0 = 0)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = -(
            np.where(p > 0, p * np.log2(p), 0.0) + np.where(p < 1, (1 - p) * np.log2(1 - p), 0.0)
        )
    return terms


def margin_scores(probabilities, threshold: float = 0.5) -> np.ndarray:
    """Closeness of each probability to the decision threshold: 1 - |p - t| / max(t, 1 - t)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1). Received: threshold={threshold}")
    p = np.asarray(probabilities, dtype=np.float64)
    return 1.0 - np.abs(p - threshold) / max(threshold, 1.0 - threshold)


def random_scores(count: int, seed: int) -> np.ndarray:
    """`count` uniform draws in [0, 1) from NumPy's default generator seeded with `seed`."""
    return np.random.default_rng(seed).random(count)


def patient_keys(paths) -> list[str]:
    """The patient (BreaKHis slide id, e.g. `14-13412`) of every path; a file whose name is
    not BreaKHis' is a patient of its own (keyed by its path), since nothing groups it."""
    keys = []
    for path in paths:
        slide = slide_id_of(path)
        keys.append(str(path) if slide == UNKNOWN else slide)
    return keys


def patient_cap(budget: int, keys, cap: int | None = None) -> int:
    """The most images one patient may give a round of `budget`.

    Args:
        budget: images to choose.
        keys: the patient key of every pool image.
        cap: the cap asked for (--patient-cap), or None for ceil(budget / PATIENTS_PER_ROUND).

    Returns:
        The cap; without one asked for, raised to the least that can still fill the budget
        when the pool holds too few patients.

    Raises:
        ConfigError: if the cap asked for cannot fill the budget from this pool.
    """
    counts = list(Counter(keys).values())
    fill = lambda value: sum(min(count, value) for count in counts)  # noqa: E731
    if cap is not None:
        if fill(cap) < budget:
            raise ConfigError(
                f"--patient-cap {cap} lets the pool's {len(counts)} patients give at most "
                f"{fill(cap)} images, fewer than --budget {budget}; raise --patient-cap or "
                "lower --budget"
            )
        return cap
    cap = max(1, math.ceil(budget / PATIENTS_PER_ROUND))
    while fill(cap) < budget:
        cap += 1
    return cap


def ranked_with_cap(scores, keys, budget: int, cap: int) -> np.ndarray:
    """The `budget` indices of the highest scores (ties: the lower index first), skipping an
    image whose patient already gave `cap` images."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    taken: Counter = Counter()
    chosen = []
    for index in order:
        if taken[keys[index]] < cap:
            chosen.append(int(index))
            taken[keys[index]] += 1
            if len(chosen) == budget:
                break
    return np.asarray(chosen, dtype=np.int64)


def _nearest_distances(points, centres) -> np.ndarray:
    """For each row of `points`, the Euclidean distance to its nearest row of `centres`."""
    nearest = np.full(len(points), np.inf)
    for start in range(0, len(centres), DISTANCE_BLOCK):
        block = centres[start : start + DISTANCE_BLOCK]
        squared = (
            np.sum(points**2, axis=1)[:, None] - 2 * points @ block.T + np.sum(block**2, axis=1)
        )
        nearest = np.minimum(nearest, np.sqrt(np.maximum(squared, 0.0)).min(axis=1))
    return nearest


def k_center_greedy(features, budget: int, labelled=None, keys=None, cap: int | None = None):
    """K-center greedy selection of `budget` pool rows.

    Each step picks the pool row (among those whose patient is under `cap`) with the largest
    distance to its nearest centre, the centres being the `labelled` rows and the rows picked
    so far; ties go to the lower index. With no labelled row, the first pick is the row
    nearest the pool's mean (scored by that distance).

    Args:
        features: `[pool, dim]` features of the pool.
        budget: rows to pick.
        labelled: `[labelled, dim]` features of the images already labelled, or None.
        keys, cap: the patient of each pool row and the most rows one patient may give.

    Returns:
        `(indices, scores)`: the picks in order and each one's distance when it was picked.
    """
    features = np.asarray(features, dtype=np.float64)
    keys = list(range(len(features))) if keys is None else list(keys)
    cap = budget if cap is None else cap
    if labelled is not None and len(labelled):
        nearest = _nearest_distances(features, np.asarray(labelled, dtype=np.float64))
    else:
        nearest = None
    eligible = np.ones(len(features), dtype=bool)
    taken: Counter = Counter()
    chosen, scores = [], []
    for _ in range(budget):
        if not eligible.any():
            raise ValueError(
                f"cap {cap} per patient cannot fill budget {budget} from {len(keys)} rows. "
                f"Received: cap={cap}"
            )
        if nearest is None:
            distance = np.linalg.norm(features - features.mean(axis=0), axis=1)
            index = int(np.argmin(np.where(eligible, distance, np.inf)))
            score = float(distance[index])
            nearest = np.full(len(features), np.inf)
        else:
            index = int(np.argmax(np.where(eligible, nearest, -np.inf)))
            score = float(nearest[index])
        chosen.append(index)
        scores.append(score)
        taken[keys[index]] += 1
        eligible[index] = False
        if taken[keys[index]] >= cap:
            eligible &= np.array([key != keys[index] for key in keys])
        nearest = np.minimum(nearest, np.linalg.norm(features - features[index], axis=1))
    return np.asarray(chosen, dtype=np.int64), np.asarray(scores)


def choose(
    strategy: str,
    budget: int,
    keys,
    *,
    probabilities=None,
    threshold: float = 0.5,
    features=None,
    labelled_features=None,
    seed: int = 0,
    cap: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One patient-aware round of `strategy` over a pool.

    Args:
        strategy: one of `STRATEGIES`.
        budget: images to choose (at most the pool's size).
        keys: the patient key of every pool image (`patient_keys`).
        probabilities: the malignant probability of every pool image (entropy, margin).
        threshold: the model's decision threshold (margin).
        features, labelled_features: penultimate features of the pool and of the labelled
            images (coreset).
        seed: seeds `random`.
        cap: --patient-cap, or None for `patient_cap`'s default.

    Returns:
        `(indices, scores, cap)`: the chosen pool indices in rank order, the strategy's score
        of each, and the patient cap used.
    """
    check_strategy(strategy)
    keys = list(keys)
    if not 0 < budget <= len(keys):
        raise ValueError(f"budget must be in [1, {len(keys)}]. Received: budget={budget}")
    cap = patient_cap(budget, keys, cap)
    if strategy == STRATEGY_CORESET:
        indices, scores = k_center_greedy(features, budget, labelled_features, keys, cap)
        return indices, scores, cap
    if strategy == STRATEGY_ENTROPY:
        all_scores = entropy_scores(probabilities)
    elif strategy == STRATEGY_MARGIN:
        all_scores = margin_scores(probabilities, threshold)
    elif strategy == STRATEGY_RANDOM:
        all_scores = random_scores(len(keys), seed)
    indices = ranked_with_cap(all_scores, keys, budget, cap)
    return indices, all_scores[indices], cap
