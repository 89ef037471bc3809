"""Noise-detection metrics against hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest

from gdig.select import (
    ArraySource,
    SelectConfig,
    noise_auc,
    noise_detection,
    precision_recall,
    select,
)


@pytest.mark.parametrize(
    ("scores", "is_noise", "want"),
    [
        ([0.1, 0.4, 0.35, 0.8], [0, 1, 0, 1], 1.0),  # every noisy score above every clean one
        ([1.0, 2.0, 3.0, 4.0], [1, 0, 1, 0], 0.25),  # of 4 (noise, clean) pairs only 3 > 2 wins
        ([4.0, 3.0, 2.0, 1.0], [1, 1, 0, 0], 1.0),
        ([1.0, 2.0, 3.0, 4.0], [1, 1, 0, 0], 0.0),
        ([5.0, 5.0], [1, 0], 0.5),  # a tie counts half
        ([1.0, 2.0, 2.0, 0.0], [0, 1, 0, 1], 0.375),  # (2>1) + tie(2,2)/2 = 1.5 of 4
    ],
)
def test_noise_auc_hand_cases(scores: list[float], is_noise: list[int], want: float) -> None:
    assert noise_auc(np.array(scores), np.array(is_noise, dtype=bool)) == pytest.approx(want)


def test_noise_auc_matches_pair_counting() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 60).astype(float)  # many ties
    noise = rng.random(60) < 0.3
    a, b = scores[noise], scores[~noise]
    want = ((a[:, None] > b[None, :]).sum() + 0.5 * (a[:, None] == b[None, :]).sum()) / (
        len(a) * len(b)
    )
    assert noise_auc(scores, noise) == pytest.approx(want)


def test_noise_auc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        noise_auc(np.array([1.0, 2.0]), np.array([True, True]))


def test_precision_recall_hand_case() -> None:
    p, r = precision_recall(np.array([1, 1, 1, 0, 0], bool), np.array([1, 0, 1, 1, 0], bool))
    assert (p, r) == pytest.approx((2 / 3, 2 / 3))
    assert precision_recall(np.zeros(3, bool), np.array([1, 0, 0], bool)) == (0.0, 0.0)


def test_noise_detection_flags_pairs_that_hurt_every_seed() -> None:
    rng = np.random.default_rng(1)
    benefits = rng.uniform(0.1, 1.0, (50, 4)).astype(np.float32)
    noise = np.zeros(50, dtype=bool)
    noise[:10] = True
    benefits[noise] *= -1
    src = ArraySource(np.ones((50, 3), np.float32), benefits=benefits)
    sel = select(src, SelectConfig(budget=20, selector="quality"))
    got = noise_detection(sel, noise)
    assert got["auc_neg_benefit_mean"] == 1.0
    assert got["failed_quality_precision"] == 1.0 and got["failed_quality_recall"] == 1.0
    assert got["noise_in_selection"] == 0.0


def test_ranks_best_mean_first_ties_by_pool_order() -> None:
    from gdig.select.writers import ranks

    def ranked(mean: np.ndarray) -> list[int]:
        source = ArraySource(np.ones((len(mean), 2)), benefits=np.tile(mean[:, None], (1, 3)))
        return ranks(select(source, SelectConfig(budget=2, selector="quality"))).tolist()

    assert ranked(np.array([0.5, 1.0, 0.5, 2.0, -1.0, 0.5])) == [3, 2, 4, 1, 6, 5]
    # Many ties in a longer pool (where an unstable sort would reorder them).
    mean = np.random.default_rng(0).integers(0, 4, 500).astype(np.float64)
    want = np.empty(500, np.int64)
    want[sorted(range(500), key=lambda i: (-mean[i], i))] = np.arange(1, 501)
    assert ranked(mean) == want.tolist()
