"""The two-level bootstrap (training seeds, then test sentences) of gdig.train.metrics:
with one seed it is the plain paired bootstrap; its corpus scores are sacrebleu's; it finds a
known big difference, no difference between identical systems, and it keeps the spread of
training seeds that pooling their sentences hides."""

from __future__ import annotations

import random

import numpy as np
import pytest
from helpers_models import toy_pairs

from gdig.io.errors import UsageError
from gdig.train.metrics import (
    paired_bootstrap,
    score_hypotheses,
    sentence_stats,
    two_level_bootstrap,
)

REFS = [p.tgt + " " + p.src for p in toy_pairs(120)]


def _corrupt(text: str, rng: random.Random) -> str:
    chars = list(text)
    rng.shuffle(chars)
    return "".join(chars)


def _system(right_every: int, seed: int) -> list[str]:
    """Right on every ``right_every``-th sentence, characters shuffled elsewhere."""
    rng = random.Random(seed)
    return [r if i % right_every == 0 else _corrupt(r, rng) for i, r in enumerate(REFS)]


def _stats(systems: list[list[str]], metric: str) -> list[np.ndarray]:
    return [sentence_stats(REFS, h, metric, tgt_lang="en") for h in systems]


@pytest.mark.parametrize("metric", ["chrf", "bleu"])
def test_one_seed_is_the_paired_bootstrap(metric):
    a, b = _system(2, 1), _system(3, 2)
    plain = paired_bootstrap(REFS, a, b, metric=metric, n=300, seed=7, tgt_lang="en")
    two = two_level_bootstrap(
        _stats([a], metric), _stats([b], metric), metric, n=300, seed=7, tgt_lang="en"
    )
    for key in ("score_a", "score_b", "delta", "mean_delta", "ci_low", "ci_high", "p_value"):
        assert two[key] == pytest.approx(plain[key], abs=1e-9), key
    assert two["seed_deltas"] == [pytest.approx(plain["delta"])]
    assert two["n_seeds"] == 1 and two["n_sentences"] == len(REFS)


def test_scores_are_sacrebleus_corpus_scores():
    seeds_a = [_system(2, s) for s in range(3)]
    seeds_b = [_system(5, 10 + s) for s in range(3)]
    res = two_level_bootstrap(_stats(seeds_a, "chrf"), _stats(seeds_b, "chrf"), n=50)
    pooled_refs = REFS * 3
    pooled_a = [h for s in seeds_a for h in s]
    pooled_b = [h for s in seeds_b for h in s]
    assert res["score_a"] == pytest.approx(score_hypotheses(pooled_refs, pooled_a)["chrf"])
    assert res["score_b"] == pytest.approx(score_hypotheses(pooled_refs, pooled_b)["chrf"])
    for k in range(3):
        per_seed = (
            score_hypotheses(REFS, seeds_a[k])["chrf"] - score_hypotheses(REFS, seeds_b[k])["chrf"]
        )
        assert res["seed_deltas"][k] == pytest.approx(per_seed)


def test_big_difference_is_found_and_identical_systems_are_not():
    good = [_system(2, s) for s in range(3)]  # right on half the sentences
    bad = [_system(6, 20 + s) for s in range(3)]  # right on a sixth
    better = two_level_bootstrap(_stats(good, "chrf"), _stats(bad, "chrf"), n=400, seed=1)
    assert better["delta"] > 5 and better["ci_low"] > 0 and better["p_value"] < 0.01
    assert all(d > 0 for d in better["seed_deltas"])
    worse = two_level_bootstrap(_stats(bad, "bleu"), _stats(good, "bleu"), "bleu", n=200)
    assert worse["ci_high"] < 0 and worse["p_value"] > 0.99
    same = two_level_bootstrap(_stats(good, "chrf"), _stats(good, "chrf"), n=200)
    assert same["delta"] == 0 and same["seed_deltas"] == [0, 0, 0]
    assert same["ci_low"] == same["ci_high"] == 0 and same["p_value"] == 0.5


def test_seed_spread_widens_the_interval_that_pooling_narrows():
    # Seeds 0 and 2: a is right everywhere, b on a third; seed 1 the other way round. The
    # pooled sentences favour a clearly; one seed in three reverses the verdict, so a
    # resample of seeds often holds two or three seed 1s and the interval spans 0.
    right, wrong = REFS, _system(3, 5)
    seeds_a, seeds_b = [right, wrong, right], [wrong, right, wrong]
    pooled_a, pooled_b = [h for s in seeds_a for h in s], [h for s in seeds_b for h in s]
    pooled = paired_bootstrap(REFS * 3, pooled_a, pooled_b, n=400, seed=3)
    two = two_level_bootstrap(_stats(seeds_a, "chrf"), _stats(seeds_b, "chrf"), n=400, seed=3)
    assert pooled["ci_low"] > 0  # pooling the seeds' sentences: "significant"
    assert two["ci_low"] < 0 < two["ci_high"]  # over seeds too: not
    assert two["delta"] == pytest.approx(pooled["delta"])
    assert two["seed_deltas"][1] < 0 < two["seed_deltas"][0] == pytest.approx(two["seed_deltas"][2])


def test_inputs_that_do_not_pair_up_are_refused():
    one = _stats([_system(2, 0)], "chrf")
    with pytest.raises(UsageError, match="same non-zero number of seeds"):
        two_level_bootstrap(one, one * 2)
    with pytest.raises(UsageError, match="same sentences"):
        two_level_bootstrap(one, [one[0][:-1]])
    with pytest.raises(UsageError, match="same non-zero"):
        two_level_bootstrap([], [])
