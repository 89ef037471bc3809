"""Exact mode against a dense float64 computation from explicit per-example gradients.

The reference shares nothing with the engine but the loss definition: parameter gradients
come from ordinary autograd (weights require grad, batch of one, no padding), the Kronecker
eigenbasis is built as a dense matrix and the damped Hessian is inverted by a solve.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers_models import ARCHES, tiny_model, toy_pairs

from gdig.engine import (
    encode_pair,
    fit_factors,
    prepare_seeds,
    score_candidates,
    select_layers,
)
from gdig.engine.config import EngineConfig

PATTERN = r"mlp\.(down_proj|c_proj|dense_4h_to_h)$"


def reference_grads(model, tok, pairs, names):
    """Per example: weight gradients G [d_out,d_in] per layer, and token a, g per layer."""
    modules = dict(model.named_modules())
    weights = [modules[n].weight for n in names]
    conv1d = [type(modules[n]).__name__ == "Conv1D" for n in names]
    out = []
    for p in pairs:
        e = encode_pair(p, tok, "paper", 512)
        ids = torch.tensor([e.input_ids])
        acts, outs = {}, {}
        hooks = []
        for i, n in enumerate(names):

            def hook(mod, inp, o, i=i, acts=acts, outs=outs):
                acts[i] = inp[0].detach()[0]
                outs[i] = o

            hooks.append(modules[n].register_forward_hook(hook))
        for w in weights:
            w.requires_grad_(True)
        try:
            logits = model(input_ids=ids).logits[0]
            loss = F.cross_entropy(logits[e.n_prompt - 1 : -1], ids[0, e.n_prompt :])
            res = torch.autograd.grad(loss, weights + [outs[i] for i in range(len(names))])
        finally:
            for h in hooks:
                h.remove()
            for w in weights:
                w.requires_grad_(False)
        grads = [r.T if c else r for r, c in zip(res[: len(names)], conv1d, strict=True)]
        gs = [r[0] for r in res[len(names) :]]
        out.append({"G": grads, "a": [acts[i] for i in range(len(names))], "g": gs})
    return out


def dense_benefit(fit, seeds, cands, n_layers, method, damping_factor=0.1):
    total = torch.zeros(len(cands), len(seeds), dtype=torch.float64)
    for lay in range(n_layers):
        hess = dense_hessian(fit, lay, method, damping_factor)
        gs = torch.stack([z["G"][lay].flatten() for z in seeds], 1)  # [P, S]
        gm = torch.stack([z["G"][lay].flatten() for z in cands], 0)  # [N, P]
        total += gm @ torch.linalg.solve(hess, gs)
    return total


def dense_hessian(fit, lay, method, damping_factor=0.1):
    """Layer ``lay``'s damped (E)K-FAC as a dense matrix over row-major vec(G)."""
    a = torch.cat([z["a"][lay] for z in fit])
    g = torch.cat([z["g"][lay] for z in fit])
    _, q_a = torch.linalg.eigh(a.T @ a / a.shape[0])
    ev_s, q_s = torch.linalg.eigh(g.T @ g / g.shape[0])
    ev_a = torch.linalg.eigvalsh(a.T @ a / a.shape[0])
    if method == "ekfac":
        lam = torch.stack([(q_s.T @ z["G"][lay] @ q_a) ** 2 for z in fit]).mean(0)
    else:
        lam = torch.outer(ev_s.clamp_min(0), ev_a.clamp_min(0))
    basis = torch.kron(q_s, q_a)  # row-major vec: vec(Q_S X Q_Aᵀ) = (Q_S ⊗ Q_A) vec(X)
    hess = (basis * lam.flatten()) @ basis.T  # basis diag(lam) basisᵀ
    hess = hess + damping_factor * lam.mean() * torch.eye(hess.shape[0], dtype=hess.dtype)
    return hess


@pytest.mark.parametrize("method", ["ekfac", "kfac"])
@pytest.mark.parametrize("arch", ARCHES)
def test_exact_mode_matches_dense_float64(arch, method, tmp_path):
    model, tok = tiny_model(arch, dtype=torch.float64)
    pool = toy_pairs(14, seed=1)
    fit_set, seed_set, cands = pool, pool[:3], pool[3:11]
    cfg = EngineConfig.from_flat(
        layers=PATTERN, exact=True, method=method, factor_samples=0, batch_size=5,
        export_benefit_matrix=True,
    )  # fmt: skip
    names = select_layers(model, PATTERN)
    assert len(names) == 2
    assert all(model.get_submodule(n).weight.numel() <= 300 for n in names)

    factors = fit_factors(model, tok, fit_set, cfg, progress=False)
    seeds = prepare_seeds(model, tok, seed_set, factors, cfg, progress=False)
    store = score_candidates(model, tok, cands, seeds, cfg, tmp_path / "store", progress=False)
    got = np.load(tmp_path / "store" / "benefit_matrix.npy")

    ref_fit = reference_grads(model, tok, fit_set, names)
    by_id = {p.id: z for p, z in zip(fit_set, ref_fit, strict=True)}
    want = dense_benefit(
        ref_fit, [by_id[p.id] for p in seed_set], [by_id[p.id] for p in cands], 2, method
    )
    # The export is float32 by contract, so 1e-6 relative is its resolution; the float64
    # path itself is held to 1e-9 in the next test.
    assert got.shape == (len(cands), len(seed_set))
    assert got.dtype == np.float32
    rel32 = np.abs(got - want.numpy()).max() / np.abs(want.numpy()).max()
    assert rel32 < 1e-6, f"float32 export: relative error {rel32:.2e}"
    # Rows in pool order, columns in seed order; exact-mode features are the full gradients.
    assert store.ids == [p.id for p in cands]
    assert store.manifest["seed_ids"] == [p.id for p in seed_set]
    feats = store.feature_rows(np.arange(len(cands))).astype(np.float64)
    assert feats.shape[1] == sum(model.get_submodule(n).weight.numel() for n in names)
    want_g = torch.cat(
        [torch.stack([by_id[p.id]["G"][i].flatten() for p in cands]) for i in range(2)], 1
    )
    assert np.allclose(feats, want_g.numpy(), rtol=1e-5, atol=1e-6 * np.abs(feats).max())
    assert np.allclose(store.cand_norm, want_g.norm(dim=1).numpy(), rtol=1e-5)


@pytest.mark.parametrize("dense_mb", [0, 64])
def test_exact_float64_benefit_before_float32_store(tmp_path, dense_mb):
    """The float64 benefits (before the float32 store) match the dense reference to 1e-9,
    by the token-wise low-rank contraction (dense_mb 0) and by dense seed gradients."""
    from gdig.engine.batching import collate
    from gdig.engine.capture import GradientCapture
    from gdig.engine.projection import make_projections
    from gdig.engine.score import CandidateScorer

    model, tok = tiny_model("llama", dtype=torch.float64)
    pool = toy_pairs(12, seed=2)
    cfg = EngineConfig.from_flat(layers=PATTERN, exact=True, factor_samples=0, batch_size=4)
    factors = fit_factors(model, tok, pool, cfg, progress=False)
    seeds = prepare_seeds(model, tok, pool[:4], factors, cfg, progress=False)
    proj = make_projections(seeds.layers, 1, 1, 0, exact=True)
    scorer = CandidateScorer(seeds, proj, "cpu", torch.float64, dense_mb=dense_mb)
    enc = [encode_pair(p, tok, "paper", 512) for p in pool[4:]]
    with GradientCapture(model, seeds.layer_names) as cap:
        got = scorer(cap.run(collate(enc, list(range(len(enc))), 0, "cpu")))[0]
    assert all((d is not None) == (dense_mb > 0) for d in scorer.dense)  # the path taken
    names = select_layers(model, PATTERN)
    ref = reference_grads(model, tok, pool, names)
    want = dense_benefit(ref, ref[:4], ref[4:], 2, "ekfac")
    assert got.dtype == torch.float64
    rel = (got - want).abs().max() / want.abs().max()
    assert rel < 1e-9, f"relative error {rel:.2e}"
