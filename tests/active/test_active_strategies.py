"""The selection strategies against hand computations and brute force (NumPy only), and the
patient cap of every round."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from bc_keras.active import STRATEGIES, strategies
from bc_keras.errors import ConfigError

# No two probabilities tie under either rule below.
PROBABILITIES = np.array([0.95, 0.5, 0.2, 0.65, 0.99, 0.1])
DISTINCT = [f"p{i}" for i in range(len(PROBABILITIES))]


def _entropy_by_hand(p):
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def test_entropy_in_bits_and_its_ranking():
    assert strategies.entropy_scores([0.5, 0.0, 1.0]).tolist() == [1.0, 0.0, 0.0]
    assert strategies.entropy_scores([0.25])[0] == pytest.approx(0.8112781244591328)
    indices, scores, _ = strategies.choose("entropy", 6, DISTINCT, probabilities=PROBABILITIES)
    # |p - 0.5| = .45, 0, .3, .15, .49, .4: the most uncertain first.
    assert indices.tolist() == [1, 3, 2, 5, 0, 4]
    np.testing.assert_allclose(scores, _entropy_by_hand(PROBABILITIES[indices]))


def test_margin_is_closeness_to_the_models_threshold():
    indices, scores, _ = strategies.choose(
        "margin", 6, DISTINCT, probabilities=PROBABILITIES, threshold=0.7
    )
    # |p - 0.7| = .25, .2, .5, .05, .29, .6
    assert indices.tolist() == [3, 1, 0, 4, 2, 5]
    np.testing.assert_allclose(scores, 1 - np.abs(PROBABILITIES[indices] - 0.7) / 0.7)
    # At 0.5 the margin ranks as the entropy does (binary case): 1 - |p1 - p0|.
    at_half, half_scores, _ = strategies.choose("margin", 6, DISTINCT, probabilities=PROBABILITIES)
    assert at_half.tolist() == [1, 3, 2, 5, 0, 4]
    np.testing.assert_allclose(half_scores, 1 - np.abs(2 * PROBABILITIES[at_half] - 1))


def test_random_is_seeded():
    keys = [f"p{i}" for i in range(20)]
    first, scores, _ = strategies.choose("random", 20, keys, seed=3)
    again, _, _ = strategies.choose("random", 20, keys, seed=3)
    other, _, _ = strategies.choose("random", 20, keys, seed=4)
    draws = np.random.default_rng(3).random(20)
    assert first.tolist() == again.tolist() == np.argsort(-draws).tolist()
    np.testing.assert_array_equal(scores, draws[first])
    assert other.tolist() != first.tolist()


def _brute_force_k_center(points, labelled, budget):
    """Each step: the point whose nearest centre is farthest (lowest index on ties)."""
    centres = [tuple(c) for c in labelled]
    chosen, scores = [], []
    for _ in range(budget):
        best, best_distance = None, -1.0
        for index, point in enumerate(points):
            if index in chosen:
                continue
            distance = min(
                np.sqrt(sum((a - b) ** 2 for a, b in zip(point, c, strict=True))) for c in centres
            )
            if distance > best_distance + 1e-12:
                best, best_distance = index, distance
        chosen.append(best)
        scores.append(best_distance)
        centres.append(tuple(points[best]))
    return chosen, scores


def test_k_center_greedy_equals_brute_force_and_a_hand_example():
    rng = np.random.default_rng(0)
    for trial in range(5):
        points, labelled = rng.normal(size=(12, 3)), rng.normal(size=(2, 3))
        indices, scores = strategies.k_center_greedy(points, 5, labelled)
        expected, expected_scores = _brute_force_k_center(points, labelled, 5)
        assert indices.tolist() == expected, trial
        np.testing.assert_allclose(scores, expected_scores)
    # On a line with the labelled point 0: 11 is farthest, then 2 (distance 2), then 1 vs 10
    # tie at 1 and the lower index wins.
    line = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    indices, scores = strategies.k_center_greedy(line, 3, np.array([[0.0]]))
    assert indices.tolist() == [4, 2, 1] and scores.tolist() == [11.0, 2.0, 1.0]
    # Nothing labelled: the point nearest the mean (4.8) comes first.
    indices, scores = strategies.k_center_greedy(line, 2)
    assert indices.tolist() == [2, 4] and scores.tolist() == pytest.approx([2.8, 9.0])


def test_no_patient_fills_a_round():
    # Patient A holds the 10 most uncertain images; budget 8 -> cap ceil(8 / 4) = 2.
    probabilities = np.r_[np.full(10, 0.5) + np.arange(10) * 1e-3, np.linspace(0.9, 0.99, 10)]
    keys = ["A"] * 10 + [f"B{i // 2}" for i in range(10)]
    for strategy in STRATEGIES:
        features = np.arange(20, dtype=float)[:, None]
        indices, _, cap = strategies.choose(
            strategy, 8, keys, probabilities=probabilities, features=features, seed=1
        )
        counts = Counter(keys[i] for i in indices)
        assert cap == 2 and len(indices) == len(set(indices.tolist())) == 8, strategy
        assert max(counts.values()) <= 2, (strategy, counts)
    indices, _, _ = strategies.choose("entropy", 8, keys, probabilities=probabilities)
    # A's two best, then the most uncertain of the rest, each patient at most twice.
    assert indices.tolist() == [0, 1, 10, 11, 12, 13, 14, 15]


def test_the_cap_rises_only_when_the_pool_cannot_fill_the_budget():
    keys = ["A"] * 5 + ["B"] * 5
    assert strategies.patient_cap(8, keys) == 4  # ceil(8 / 4) = 2 gives only 4 images
    assert strategies.patient_cap(4, keys + ["C", "D"]) == 1
    with pytest.raises(ConfigError) as error:
        strategies.patient_cap(8, keys, cap=2)
    assert "--patient-cap 2" in str(error.value) and "\n" not in str(error.value)
    # Every cap from the raised one on fills the budget; the one below does not.
    counts = Counter(keys).values()
    assert [sum(min(c, cap) for c in counts) >= 8 for cap in (3, 4)] == [False, True]


def test_patients_come_from_breakhis_names_and_other_files_stand_alone():
    keys = strategies.patient_keys(
        ["a/SOB_B_A-14-22549AB-100-001.png", "b/SOB_B_A-14-22549AB-40-002.png", "x/scan.png"]
    )
    assert keys == ["14-22549AB", "14-22549AB", "x/scan.png"]


def test_unknown_strategy_is_one_line():
    with pytest.raises(ConfigError, match="unknown strategy 'bald'; choose one of entropy"):
        strategies.check_strategy("bald")


def test_every_pair_of_budgets_and_caps_keeps_the_rank_order():
    # Scores decrease along the ranks whatever the cap skips.
    rng = np.random.default_rng(5)
    probabilities = rng.random(30)
    keys = [f"p{i % 4}" for i in range(30)]
    for budget, cap in itertools.product((4, 9, 16), (None, 4, 8)):
        if cap is not None and 4 * cap < budget:
            continue
        _, scores, _ = strategies.choose(
            "entropy", budget, keys, probabilities=probabilities, cap=cap
        )
        assert np.all(np.diff(scores) <= 0), (budget, cap)
