"""The baseline selectors an MT engineer tries first (rules, loss, less) and coverage:
each against an independent computation, and the selector table as the one extension point."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_models import tiny_model, toy_pairs

from gdig.engine.config import EngineConfig
from gdig.engine.factors import fit_factors
from gdig.engine.score import score_candidates
from gdig.engine.seeds import prepare_seeds
from gdig.select import ArraySource, SelectConfig, select
from gdig.select.choosers import (
    SELECTORS,
    Pick,
    Selector,
    coverage_greedy,
    less_scores,
    register_selector,
)
from gdig.select.scorings import SCORINGS, Scoring, register_scoring

PATTERN = r"mlp\.down_proj$"


# --- the store records what loss and less need, and it equals independent computations ---


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    torch.manual_seed(0)
    model, tok = tiny_model("llama", hidden=16, inter=48)
    pool = toy_pairs(13, seed=3)
    seeds = toy_pairs(4, seed=9)
    for i, s in enumerate(seeds):
        s.id = f"seed-{i}"
    cfg = EngineConfig.from_flat(
        layers=PATTERN, factor_samples=13, k_in=8, k_out=4, rank=4, top_k=2
    )
    factors = fit_factors(model, tok, pool, cfg, progress=False)
    prepared = prepare_seeds(model, tok, seeds, factors, cfg, progress=False)
    root = tmp_path_factory.mktemp("store")
    store = score_candidates(model, tok, pool, prepared, cfg, root, shard_size=5, progress=False)
    return model, tok, pool, seeds, cfg, prepared, store


def _hf_loss(model, tok, pair) -> float:
    """Mean cross-entropy over the target tokens and EOS, by the model's own loss."""
    prompt = f'Translate the following text into English\n\nText:\n"{pair.src}"\n\n'
    p = tok(prompt)["input_ids"]
    t = tok(pair.tgt, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p + t])
    labels = torch.tensor([[-100] * len(p) + t])
    with torch.no_grad():
        return float(model(input_ids=ids, labels=labels).loss)


def test_stored_loss_equals_a_plain_forward_pass(scored):
    model, tok, pool, *_, store = scored
    want = np.array([_hf_loss(model, tok, p) for p in pool])
    assert store.loss.shape == (len(pool),)
    np.testing.assert_allclose(store.loss, want, rtol=1e-4, atol=1e-5)


def _dense_projected_grad(model, tok, pair, layers, projections) -> np.ndarray:
    """P_outᵀ (dL/dW) P_in of each tracked layer from autograd's weight gradient, float64."""
    prompt = f'Translate the following text into English\n\nText:\n"{pair.src}"\n\n'
    p = tok(prompt)["input_ids"]
    t = tok(pair.tgt, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    model.zero_grad()
    out = model(input_ids=torch.tensor([p + t]), labels=torch.tensor([[-100] * len(p) + t]))
    out.loss.backward()
    mods = dict(model.named_modules())
    parts = []
    for ly, proj in zip(layers, projections, strict=True):
        g = mods[ly.name].weight.grad.double()  # [d_out, d_in]
        parts.append((proj.p_out.double().T @ g @ proj.p_in.double()).flatten().numpy())
    model.zero_grad()
    return np.concatenate(parts)


def test_seed_raw_features_are_the_projected_gradients(scored):
    from gdig.engine.projection import make_projections

    model, tok, _, seeds, cfg, prepared, store = scored
    projections = make_projections(
        prepared.layers, cfg.factors.k_in, cfg.factors.k_out, cfg.factors.proj_seed, False
    )
    want = np.stack(
        [_dense_projected_grad(model, tok, s, prepared.layers, projections) for s in seeds]
    )
    np.testing.assert_allclose(store.seed_raw_features, want, rtol=2e-4, atol=1e-6)
    # and they are not the preconditioned ones: less is a different score than cosine
    assert not np.allclose(store.seed_raw_features, store.seed_features, rtol=1e-2)


def test_less_equals_a_dense_numpy_computation(scored):
    *_, store = scored
    x = np.stack([store.feature_rows(np.array([r]))[0] for r in range(store.n)]).astype(np.float64)
    s = store.seed_raw_features.astype(np.float64)
    cos = (x @ s.T) / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(s, axis=1))
    np.testing.assert_allclose(less_scores(store, "mean", chunk_rows=4), cos.mean(1), rtol=1e-9)
    np.testing.assert_allclose(less_scores(store, "max", chunk_rows=4), cos.max(1), rtol=1e-9)
    sel = select(store, SelectConfig(budget=4, selector="less"))
    assert set(sel.selected_rows) == set(np.argsort(-cos.mean(1), kind="stable")[:4])


def test_loss_selector_takes_the_lowest_losses(scored):
    *_, store = scored
    sel = select(store, SelectConfig(budget=5, selector="loss"))
    assert set(sel.selected_rows) == set(np.argsort(store.loss, kind="stable")[:5])


# --- selectors on an in-memory source ---


def _source(n=40, s=6, d=10, seed=0, **kw):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, d)).astype(np.float32)
    seeds = rng.normal(size=(s, d)).astype(np.float32)
    return ArraySource(feats, seed_grads=seeds, **kw), feats, seeds


def test_rules_selector_draws_only_from_pairs_that_pass():
    src, *_ = _source()
    ok = np.zeros(40, dtype=bool)
    ok[::3] = True
    sel = select(src, SelectConfig(budget=8, selector="rules", on_short="fill"), rule_ok=ok)
    assert ok[sel.selected_rows].all() and len(sel.selected_rows) == 8
    again = select(src, SelectConfig(budget=8, selector="rules"), rule_ok=ok)
    assert np.array_equal(sel.selected_rows, again.selected_rows)  # seeded
    with pytest.raises(Exception, match="needs the pool's texts"):
        select(src, SelectConfig(budget=8, selector="rules"))


def test_rules_shortfall_fills_by_mean_and_says_so():
    src, *_ = _source()
    ok = np.zeros(40, dtype=bool)
    ok[:3] = True
    sel = select(src, SelectConfig(budget=6, selector="rules", on_short="fill"), rule_ok=ok)
    assert sel.selected[:3].all() and int(sel.filled.sum()) == 3
    assert any("cleaning rules" in n for n in sel.notes)


def _brute_greedy(b: np.ndarray, k: int) -> list[int]:
    chosen: list[int] = []
    total = np.zeros(b.shape[1])
    for _ in range(k):
        gains = [
            -np.inf if i in chosen else np.sqrt(total + b[i]).sum() - np.sqrt(total).sum()
            for i in range(len(b))
        ]
        i = int(np.argmax(gains))
        chosen.append(i)
        total += b[i]
    return chosen


def test_coverage_greedy_is_the_plain_greedy():
    rng = np.random.default_rng(4)
    b = np.maximum(rng.normal(size=(30, 5)), 0)
    assert coverage_greedy(b, 12).tolist() == _brute_greedy(b, 12)


def test_coverage_spreads_over_seeds():
    # Two seeds; candidates 0-4 help seed 0 a lot, 5 helps seed 1 less. A top-by-mean
    # choice of 2 takes two seed-0 candidates; coverage takes one of each.
    b = np.zeros((6, 2), dtype=np.float32)
    b[:5, 0] = [10, 9, 8, 7, 6]
    b[5, 1] = 2.0  # sqrt(2) > sqrt(10 + 9) - sqrt(10): the second seed-0 pair adds less
    src = ArraySource(np.eye(6, dtype=np.float32), benefits=b)
    sel = select(src, SelectConfig(budget=2, selector="coverage", tau=0.0))
    assert sel.selected_rows.tolist() == [0, 5]
    top = select(src, SelectConfig(budget=2, selector="quality", tau=0.0))
    assert top.selected_rows.tolist() == [0, 1]


# --- the tables are the one extension point ---


def test_a_new_selector_and_scoring_are_one_entry_each():
    src, *_ = _source()
    register_selector(
        Selector("every_other", "test", lambda ctx: Pick(ctx.eligible[::2][: ctx.take]))
    )
    register_scoring(Scoring("negated", "test", "minus raw", lambda b, ctx: -b))
    try:
        sel = select(src, SelectConfig(budget=5, selector="every_other", scoring="negated"))
        assert sel.selected_rows.tolist() == [0, 2, 4, 6, 8]
        raw = select(src, SelectConfig(budget=5, selector="quality", tau=0.0))
        neg = select(src, SelectConfig(budget=5, selector="quality", tau=0.0, scoring="negated"))
        np.testing.assert_allclose(neg.benefit_mean, -raw.benefit_mean)
    finally:
        SELECTORS.pop("every_other")
        SCORINGS.pop("negated")
    with pytest.raises(Exception, match="every_other"):
        SelectConfig(selector="every_other")
