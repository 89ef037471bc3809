"""Factors against a dense float64 oracle built from explicit per-example gradients, and
their saving, loading and refusal against another model or configuration.

The oracle shares nothing with the engine but the loss definition (per-example mean
cross-entropy over target tokens incl. EOS): ``reference_grads`` (test_engine_exact) runs each
example alone through ordinary autograd, giving the weight gradient ``G_b`` and every token's
layer input ``a_t`` and output gradient ``g_t``; A, S, Λ and the damped Hessian are formed
here from those with plain dense algebra.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers_models import tiny_model, toy_pairs
from test_engine_exact import reference_grads

from gdig.engine import Factors, FactorsMismatchError, fit_factors, prepare_seeds
from gdig.engine.config import EngineConfig, FactorConfig

PATTERN = r"mlp\.down_proj$"
F64 = torch.float64
# Every comparison below is float64 against float64 with no approximation in between, so the
# bound is round-off (measured ~1e-15) with room for the eigenvector rotations.
TOL = 1e-10


@pytest.fixture(scope="module")
def fitted():
    model, tok = tiny_model("llama", dtype=F64)
    pool = toy_pairs(10, seed=4)
    # k_in != k_out so a transposed projection cannot pass; batch_size 3 pads every batch.
    cfg = EngineConfig.from_flat(layers=PATTERN, factor_samples=0, k_in=5, k_out=3, batch_size=3)
    return model, tok, pool, cfg, fit_factors(model, tok, pool, cfg, progress=False)


@pytest.fixture(scope="module")
def kfac(fitted):
    model, tok, pool, cfg, _ = fitted
    return fit_factors(model, tok, pool, cfg.with_options(method="kfac"), progress=False)


@pytest.fixture(scope="module")
def oracle(fitted):
    """Per layer: dense A, S, their eigendecompositions, the EK-FAC Λ and the G_b's."""
    model, tok, pool, _, f = fitted
    ref = reference_grads(model, tok, pool, f.layer_names)
    return [dense_factors(ref, lay) for lay in range(len(f.layer_names))], ref


def dense_factors(ref, lay):
    """A = mean over ALL non-padding tokens (prompt + target, pooled across examples) of a aᵀ,
    S likewise of g gᵀ (the engine divides both by the total token count, not per example,
    and g_t carries the 1/n_target of the per-example mean loss); Λ = mean over EXAMPLES of
    (Q_Sᵀ G_b Q_A)²."""
    a = torch.cat([z["a"][lay] for z in ref])  # [tokens, d_in]
    g = torch.cat([z["g"][lay] for z in ref])  # [tokens, d_out]
    grads = torch.stack([z["G"][lay] for z in ref])  # [examples, d_out, d_in], from autograd
    cov_a, cov_s = a.T @ a / a.shape[0], g.T @ g / g.shape[0]
    eig_a, q_a = torch.linalg.eigh(cov_a)
    eig_s, q_s = torch.linalg.eigh(cov_s)
    lam = ((q_s.T @ grads @ q_a) ** 2).mean(0)
    return {"A": cov_a, "S": cov_s, "eig_a": eig_a, "q_a": q_a, "eig_s": eig_s, "q_s": q_s,
            "lam": lam, "G": grads, "tokens": a.shape[0]}  # fmt: skip


def rel(got, want):
    return ((got - want).norm() / want.norm()).item()


def min_gap(eig):
    """Smallest gap between neighbouring eigenvalues, relative to the largest."""
    return (eig.diff().min() / eig.abs().max()).item()


def test_factor_shapes(fitted):
    model, _, _, _, f = fitted
    assert f.layer_names == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    for lf in f.layers:
        d_out, d_in = model.get_submodule(lf.name).weight.shape
        assert lf.q_a.shape == (d_in, d_in) and lf.q_s.shape == (d_out, d_out)
        assert lf.eig_a.shape == (d_in,) and lf.eig_s.shape == (d_out,)
        assert lf.lam.shape == (d_out, d_in) and lf.q_a.dtype == F64
    assert [lf.lam.shape for lf in f.projected] == [(3, 5)] * 2  # [k_out, k_in]
    assert f.stats["examples"] == 10


def test_oracle_gradients_are_token_sums(oracle):
    """The oracle's hooks see the same G_b as autograd on the weights: G_b = Σ_t g_t a_tᵀ."""
    _, ref = oracle
    for z in ref:
        for lay in range(2):
            assert rel(z["g"][lay].T @ z["a"][lay], z["G"][lay]) < 1e-12


def test_covariances_match_dense_per_token_means(fitted, oracle):
    """Q_A diag(eig_A) Q_Aᵀ = A and Q_S diag(eig_S) Q_Sᵀ = S, A and S per-token means."""
    _, _, _, _, f = fitted
    dense, ref = oracle
    assert f.stats["tokens"] == sum(z["a"][0].shape[0] for z in ref) == dense[0]["tokens"]
    for lf, want in zip(f.layers, dense, strict=True):
        for q, eig, cov, ev in (
            (lf.q_a, lf.eig_a, want["A"], want["eig_a"]),
            (lf.q_s, lf.eig_s, want["S"], want["eig_s"]),
        ):
            n = q.shape[0]
            assert torch.allclose(q.T @ q, torch.eye(n, dtype=F64), atol=1e-12)
            assert rel(q @ torch.diag(eig) @ q.T, cov) < TOL
            assert rel(eig, ev.clamp_min(0)) < TOL  # ascending, round-off negatives clamped


def test_ekfac_diagonal_matches_dense(fitted, oracle):
    """Λ = mean_b (Q_Sᵀ G_b Q_A)² with the oracle's own eigenbases and autograd G_b."""
    _, _, _, _, f = fitted
    dense, _ = oracle
    for lf, want in zip(f.layers, dense, strict=True):
        # Distinct eigenvalues: the eigenbases are unique up to sign, which Λ squares away.
        assert min_gap(want["eig_a"]) > 1e-6 and min_gap(want["eig_s"]) > 1e-6
        assert rel(lf.lam, want["lam"]) < TOL
        # And it is a refit: even after removing the overall scale (K-FAC's is per token,
        # EK-FAC's per example: ~60-100x apart here), far from K-FAC's outer product.
        outer = torch.outer(want["eig_s"], want["eig_a"])
        assert rel(outer / outer.mean(), want["lam"] / want["lam"].mean()) > 0.3


def test_kfac_diagonal_is_outer_product_of_dense_eigenvalues(kfac, oracle):
    dense, _ = oracle
    for lf, want in zip(kfac.layers, dense, strict=True):
        lam = torch.outer(want["eig_s"].clamp_min(0), want["eig_a"].clamp_min(0))
        assert rel(lf.lam, lam) < TOL
        assert rel(lf.q_a @ torch.diag(lf.eig_a) @ lf.q_a.T, want["A"]) < TOL


def test_damping_default_factor_and_absolute(fitted, oracle):
    _, _, _, cfg, f = fitted
    dense, _ = oracle
    for lf, want in zip(f.layers, dense, strict=True):
        mean = want["lam"].mean().item()
        assert lf.damping(cfg.scoring) == pytest.approx(0.1 * mean, rel=TOL)
        assert lf.damping(cfg.with_options(damping_factor=0.37).scoring) == pytest.approx(
            0.37 * mean, rel=TOL
        )
        # Absolute damping overrides the factor, whatever the factor is.
        assert lf.damping(cfg.with_options(damping=2.5, damping_factor=0.37).scoring) == 2.5
        assert lf.damping(cfg.with_options(damping=0.0).scoring) == 0.0


def dense_damped_hessian(want, lam, damping):
    """(Q_S ⊗ Q_A) diag(vec Λ) (Q_S ⊗ Q_A)ᵀ + λI on row-major vec(G), d_out·d_in square."""
    basis = torch.kron(want["q_s"], want["q_a"])
    hess = basis @ torch.diag(lam.flatten()) @ basis.T
    return hess + damping * torch.eye(hess.shape[0], dtype=F64)


@pytest.mark.parametrize("method", ["ekfac", "kfac"])
@pytest.mark.parametrize("damping", [None, 1e-3])
def test_precondition_solves_dense_damped_hessian(fitted, kfac, oracle, method, damping):
    _, _, _, cfg, ek = fitted
    dense, _ = oracle
    f = ek if method == "ekfac" else kfac
    scoring = cfg.with_options(damping=damping).scoring
    gen = torch.Generator().manual_seed(5)
    for lf, want in zip(f.layers, dense, strict=True):
        lam = want["lam"] if method == "ekfac" else torch.outer(want["eig_s"], want["eig_a"])
        lam_damp = 0.1 * lam.mean().item() if damping is None else damping
        hess = dense_damped_hessian(want, lam, lam_damp)
        # Real per-example gradients and a random direction.
        grads = torch.cat([want["G"][:3], torch.randn(1, *lam.shape, generator=gen, dtype=F64)])
        solved = torch.linalg.solve(hess, grads.flatten(1).T).T.reshape(grads.shape)
        got = lf.precondition(grads, scoring)
        assert got.dtype == F64  # measured <= 1.1e-14 (cond(H + λI) <= ~600 here)
        assert rel(got, solved) < 1e-8
        got32 = lf.precondition(grads.float(), scoring)
        # float32 gradients stay float32: single-precision rounding (measured ~2e-7).
        assert got32.dtype == torch.float32 and rel(got32.double(), solved) < 1e-5


@pytest.mark.parametrize("tokens", [3, 400])  # 400: forming G first is the cheaper branch
def test_precondition_tokens_is_the_rotated_solve(fitted, tokens):
    """From per-token ``a``, ``g`` (padding rows zero in g), ``precondition_tokens`` is
    ``Q_Sᵀ H⁻¹G Q_A`` for ``G = Σ_t g_t a_tᵀ``, whichever side it multiplies first."""
    _, _, _, cfg, ek = fitted
    gen = torch.Generator().manual_seed(7)
    for lf in ek.layers:
        d_out, d_in = lf.lam.shape
        a = torch.randn(2, tokens, d_in, generator=gen, dtype=F64)
        g = torch.randn(2, tokens, d_out, generator=gen, dtype=F64)
        g[1, tokens // 2 :] = 0  # a shorter, padded example
        grads = g.transpose(1, 2) @ a
        want = lf.q_s.T @ lf.precondition(grads, cfg.scoring) @ lf.q_a
        got = lf.precondition_tokens(a, g, cfg.scoring)
        assert got.dtype == F64 and rel(got, want) < 1e-10  # measured ~1e-15


def test_cache_does_not_change_the_fit(fitted):
    model, tok, pool, cfg, f = fitted
    no_cache = cfg.with_options(factor_cache_mb=0)
    g = fit_factors(model, tok, pool, no_cache, progress=False)
    for a, b in zip(f.layers + f.projected, g.layers + g.projected, strict=True):
        assert torch.allclose(a.lam, b.lam, rtol=1e-10)


def test_save_load_roundtrip(fitted, tmp_path):
    model, tok, pool, cfg, f = fitted
    path = f.save(tmp_path / "factors.safetensors")
    g = Factors.load(path, model, cfg.factors)
    assert g.layer_names == f.layer_names and g.method == f.method
    for a, b in zip(f.layers + f.projected, g.layers + g.projected, strict=True):
        for key in ("q_a", "eig_a", "q_s", "eig_s", "lam"):
            assert torch.equal(getattr(a, key), getattr(b, key))
    s1 = prepare_seeds(model, tok, pool[:2], f, cfg, progress=False)
    s2 = prepare_seeds(model, tok, pool[:2], g, cfg, progress=False)
    assert (s1.features == s2.features).all()


# One changed value per FactorConfig field; the test below insists every field is listed.
CHANGED_FACTOR_OPTIONS = {
    "template": "Source: {src}\nTranslation: ",
    "max_length": 64,
    "layers": r"layers\.1\.mlp\.down_proj$",
    "layer_stride": 2,
    "method": "kfac",
    "factor_samples": 5,
    "factor_seed": 1,
    "fisher_labels": "sampled",
    "k_in": 4,
    "k_out": 4,
    "proj_seed": 1,
    "exact": True,
    "autocast": "bf16",
}


def test_load_checks_the_full_factor_config(fitted, tmp_path):
    model, _, _, cfg, f = fitted
    fields = {fl.name for fl in dataclasses.fields(FactorConfig)}
    assert set(CHANGED_FACTOR_OPTIONS) == fields, "list a changed value for every new field"
    path = f.save(tmp_path / "factors.safetensors")
    for name, value in CHANGED_FACTOR_OPTIONS.items():
        old = getattr(cfg.factors, name)
        assert value != old
        other = cfg.with_options(**{name: value}).factors
        with pytest.raises(FactorsMismatchError) as err:
            Factors.load(path, model, other)
        msg = str(err.value)
        if name == "layers":  # another layer set is refused before the options are compared
            assert "cover layers" in msg
            continue
        # Names the changed option with both values, and no other option.
        assert f"{name}: {old!r} -> {value!r}" in msg, msg
        assert msg.count(" -> ") == 1, msg
    # The same factor config loads, whatever the scoring and execution options.
    same = cfg.with_options(damping=1.0, rank=3, top_k=2, batch_size=7, factor_cache_mb=0)
    g = Factors.load(path, model, same.factors)
    assert torch.equal(g.layers[0].lam, f.layers[0].lam)
    f.check(model, same.factors)  # the in-memory check agrees


def test_load_refuses_other_model_layers_or_method(fitted, tmp_path):
    model, _, _, cfg, f = fitted
    path = f.save(tmp_path / "factors.safetensors")
    with pytest.raises(FactorsMismatchError, match="layers"):
        Factors.load(path, model, cfg.with_options(layers=r"layers\.1\.mlp\.down_proj$").factors)
    with pytest.raises(FactorsMismatchError, match="method"):
        Factors.load(path, model, cfg.with_options(method="kfac").factors)
    other_weights, _ = tiny_model("llama", dtype=F64, seed=1)
    with pytest.raises(FactorsMismatchError, match="weights differ"):
        Factors.load(path, other_weights, cfg.factors)
    bigger, _ = tiny_model("llama", dtype=F64, hidden=12)
    with pytest.raises(FactorsMismatchError, match="config differs"):
        Factors.load(path, bigger, cfg.factors)
    gpt2, _ = tiny_model("gpt2", dtype=F64)
    with pytest.raises(FactorsMismatchError, match="GPT2LMHeadModel"):
        Factors.load(path, gpt2, cfg.with_options(layers=r"mlp\.c_proj$").factors)
    with pytest.raises(FileNotFoundError, match="fit_factors"):
        Factors.load(tmp_path / "missing.safetensors", model, cfg.factors)


def test_sampled_labels_fit(fitted):
    model, tok, pool, cfg, f = fitted
    sampled = cfg.with_options(fisher_labels="sampled")
    g1 = fit_factors(model, tok, pool, sampled, progress=False)
    g2 = fit_factors(
        model,
        tok,
        pool,
        sampled.with_options(factor_cache_mb=0),
        progress=False,
    )
    assert not torch.allclose(g1.layers[0].lam, f.layers[0].lam)
    assert torch.allclose(g1.layers[0].lam, g2.layers[0].lam)  # same labels in both passes


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="method"):
        EngineConfig.from_flat(method="sgd")
    with pytest.raises(ValueError, match="template"):
        EngineConfig.from_flat(template="no placeholder")
    with pytest.raises(ValueError, match="rank"):
        EngineConfig.from_flat(rank=-1)
    with pytest.raises(TypeError, match="rnak"):
        EngineConfig.from_flat(rnak=3)
    assert EngineConfig.from_flat(rank=7).scoring.rank == 7
