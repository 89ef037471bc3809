"""Scoring small layers against dense seed gradients: the same benefits as the token-wise
low-rank contraction, chosen only where it costs fewer operations, within its memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_models import tiny_model, toy_pairs

from gdig.engine import fit_factors, prepare_seeds, score_candidates
from gdig.engine.batching import collate
from gdig.engine.capture import GradientCapture
from gdig.engine.config import EngineConfig
from gdig.engine.projection import make_projections
from gdig.engine.score import CandidateScorer, dense_wins
from gdig.engine.template import encode_pair

PATTERN = r"mlp\.down_proj$"


def test_dense_wins_on_small_layers_and_long_batches_only():
    # The tiny LLaMA of the benchmarks (64x256), 256 seeds, rank 32: dense by far.
    assert dense_wins(16, 128, 256, 32, 64, 256)
    # SmolLM2's down_proj (576x1536): reading the 256 seeds' dense matrix (906 MB) per batch
    # only pays for long batches (measured: 95 ms against 197 at T=100, 88 against 83 at 40).
    assert dense_wins(16, 100, 256, 32, 576, 1536)
    assert not dense_wins(16, 40, 256, 32, 576, 1536)
    # A 7B model's MLP (4096x11008) at typical lengths: low-rank (and its 46 GB of dense
    # seeds would never fit the memory allowed anyway).
    assert not dense_wins(16, 128, 256, 32, 4096, 11008)


@pytest.fixture(scope="module")
def fitted():
    model, tok = tiny_model("llama", hidden=16, inter=48)
    pool = toy_pairs(20, seed=4)
    cfg = EngineConfig.from_flat(
        layers=PATTERN, factor_samples=0, k_in=4, k_out=4, rank=4, batch_size=8
    )
    factors = fit_factors(model, tok, pool, cfg, progress=False)
    seeds = prepare_seeds(model, tok, pool[:6], factors, cfg, progress=False)
    return model, tok, pool, cfg, seeds


def test_store_is_the_same_either_way(fitted, tmp_path, monkeypatch):
    import gdig_ext

    model, tok, pool, cfg, seeds = fitted
    calls = {0: 0, 512: 0}
    lowrank = gdig_ext.lowrank_benefit
    stores = {}
    for mb in (0, 512):

        def counted(*args, mb=mb):
            calls[mb] += 1
            return lowrank(*args)

        monkeypatch.setattr(gdig_ext, "lowrank_benefit", counted)
        stores[mb] = score_candidates(
            model,
            tok,
            pool,
            seeds,
            cfg.with_options(dense_seeds_mb=mb),
            tmp_path / str(mb),
            progress=False,
        )
    assert calls[512] < calls[0]  # the dense path did score some batches
    low, dense = (np.concatenate([b for _, b in stores[mb].benefit_blocks()]) for mb in (0, 512))
    scale = np.abs(low).max()
    assert scale > 0 and np.allclose(dense, low, rtol=1e-5, atol=1e-6 * scale)
    assert np.array_equal(stores[0].stats()["n_pos"], stores[512].stats()["n_pos"])


def _scorer_after_one_batch(fitted, dense_mb: int) -> CandidateScorer:
    model, tok, pool, cfg, seeds = fitted
    proj = make_projections(seeds.layers, 4, 4, cfg.factors.proj_seed)
    scorer = CandidateScorer(seeds, proj, "cpu", torch.float32, dense_mb=dense_mb)
    enc = [encode_pair(p, tok, "paper", 512) for p in pool[6:14]]
    with GradientCapture(model, seeds.layer_names) as cap:
        scorer(cap.run(collate(enc, list(range(len(enc))), 0, "cpu")))
    return scorer


def test_dense_seeds_stay_within_their_memory(fitted):
    seeds = fitted[-1]
    one_layer = seeds.n * 16 * 48 * 4  # S x d_out x d_in float32: 18 KB
    assert all(d is not None for d in _scorer_after_one_batch(fitted, 1).dense)  # 1 MB: all
    assert all(d is None for d in _scorer_after_one_batch(fitted, 0).dense)
    assert one_layer < 1 << 20


def test_no_memory_for_dense_seeds_falls_back_to_low_rank(fitted, monkeypatch):
    bmm, calls = torch.bmm, []

    def full_device(*args, **kwargs):  # the first bmm forms the first layer's dense seeds
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return bmm(*args, **kwargs)

    monkeypatch.setattr(torch, "bmm", full_device)
    scorer = _scorer_after_one_batch(fitted, 512)
    assert all(d is None for d in scorer.dense) and scorer._budget == 0
