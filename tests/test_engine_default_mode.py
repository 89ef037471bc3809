"""The default mode (rank-64 seeds, projections, float32) against an independent dense
float64 EK-FAC, on a tiny LLaMA whose tracked layers are wide enough (68x70) for the
rank-64 compression to matter.

The reference shares nothing with the engine but the loss: per-example gradients by plain
autograd (tests/test_engine_exact.py's ``reference_grads``), the damped EK-FAC as a dense
matrix inverted by a solve, and the rank-64 truncation of each preconditioned seed gradient
by a full float64 SVD. benchmarks/accuracy.py measures the same on SmolLM2.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from helpers_models import tiny_model, toy_pairs
from test_engine_exact import dense_hessian, reference_grads

from gdig.engine import fit_factors, prepare_seeds, score_candidates, select_layers
from gdig.engine.config import EngineConfig

RANK = 64  # the default seed rank (ScoreConfig.rank)


def dense_reference(model, tok, pool, seeds, cands, names, rank):
    """(exact, rank-truncated) float64 benefits [N, S] of a float64 copy of ``model``."""
    model64 = copy.deepcopy(model).double()
    grads = reference_grads(model64, tok, pool, names)
    by_id = {p.id: z for p, z in zip(pool, grads, strict=True)}
    exact = torch.zeros(len(cands), len(seeds), dtype=torch.float64)
    cut = torch.zeros_like(exact)
    for lay in range(len(names)):
        hess = dense_hessian(grads, lay, "ekfac")
        gm = torch.stack([by_id[p.id]["G"][lay].flatten() for p in cands])  # [N, P]
        rhs = torch.stack([by_id[p.id]["G"][lay].flatten() for p in seeds], 1)  # [P, S]
        solved = torch.linalg.solve(hess, rhs)  # H⁻¹G(s) for every seed: one factorisation
        for j, p in enumerate(seeds):
            g = by_id[p.id]["G"][lay]
            x = solved[:, j].reshape(g.shape)
            u, sv, vh = torch.linalg.svd(x, full_matrices=False)
            x_r = (u[:, :rank] * sv[:rank]) @ vh[:rank]
            exact[:, j] += gm @ x.flatten()
            cut[:, j] += gm @ x_r.flatten()
    return exact.numpy(), cut.numpy()


def test_default_mode_matches_dense_float64_ekfac_with_rank_64_seeds(tmp_path):
    model, tok = tiny_model("llama", hidden=68, inter=70, blocks=6)
    pool = toy_pairs(16, seed=3)
    seeds, cands = pool[:3], pool[3:13]
    cfg = EngineConfig.from_flat(factor_samples=0)  # every other option at its default
    assert (cfg.scoring.rank, cfg.factors.exact, cfg.factors.method) == (RANK, False, "ekfac")
    names = select_layers(model, cfg.factors.layers, cfg.factors.layer_stride)
    assert len(names) == 2 and min(model.get_submodule(names[0]).weight.shape) > RANK

    factors = fit_factors(model, tok, pool, cfg, progress=False)
    sg = prepare_seeds(model, tok, seeds, factors, cfg, progress=False)
    store = score_candidates(model, tok, cands, sg, cfg, tmp_path / "store", progress=False)
    got = np.concatenate([b for _, b in store.benefit_blocks()])

    exact, cut = dense_reference(model, tok, pool, seeds, cands, names, RANK)
    scale = np.abs(exact).max()
    # The default mode is the rank-64 truncation of exact EK-FAC, to float32 rounding...
    err = np.abs(got - cut).max() / scale
    assert err < 1e-4, f"default mode vs truncated float64 EK-FAC: relative error {err:.2e}"
    # ...and the truncation is visible: the test tells the default mode from exact mode.
    gap = np.abs(cut - exact).max() / scale
    assert gap > 100 * err, f"rank {RANK} changes too little here ({gap:.2e}) to test it"
    # The quality filter's counts follow wherever a benefit is clear of float32 rounding.
    clear = np.abs(cut) > 1e-3 * scale
    assert np.array_equal((got > 0)[clear], (cut > 0)[clear])
    assert np.array_equal(store.stats()["n_pos"], (got > 0).sum(1))
