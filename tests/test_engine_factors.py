"""Factors: what they contain, saving and loading, and refusal against another model."""

from __future__ import annotations

import pytest
import torch
from helpers_models import tiny_model, toy_pairs

from gdig.engine import EngineConfig, Factors, FactorsMismatchError, fit_factors, prepare_seeds

PATTERN = r"mlp\.down_proj$"


@pytest.fixture(scope="module")
def fitted():
    model, tok = tiny_model("llama", dtype=torch.float64)
    pool = toy_pairs(10, seed=4)
    cfg = EngineConfig(layers=PATTERN, factor_samples=0, k_in=4, k_out=4, batch_size=3)
    return model, tok, pool, cfg, fit_factors(model, tok, pool, cfg, progress=False)


def test_factor_contents(fitted):
    model, _, _, cfg, f = fitted
    assert f.layer_names == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    for lf in f.layers:
        d_out, d_in = model.get_submodule(lf.name).weight.shape
        assert lf.q_a.shape == (d_in, d_in) and lf.q_s.shape == (d_out, d_out)
        assert lf.lam.shape == (d_out, d_in) and lf.q_a.dtype == torch.float64
        assert torch.allclose(lf.q_a.T @ lf.q_a, torch.eye(d_in, dtype=torch.float64), atol=1e-10)
        assert torch.all(lf.lam >= 0) and lf.lam.sum() > 0
        # EK-FAC's diagonal is refitted, so it is not K-FAC's outer product.
        assert not torch.allclose(lf.lam, torch.outer(lf.eig_s, lf.eig_a), rtol=1e-3)
        assert lf.damping(cfg) == pytest.approx(0.1 * lf.lam.mean().item())
        assert lf.damping(EngineConfig(damping=2.5)) == 2.5
    assert f.projected is not None and f.projected[0].lam.shape == (4, 4)
    assert f.stats["examples"] == 10


def test_cache_does_not_change_the_fit(fitted):
    model, tok, pool, cfg, f = fitted
    no_cache = EngineConfig(**{**cfg.to_dict(), "factor_cache_mb": 0})
    g = fit_factors(model, tok, pool, no_cache, progress=False)
    for a, b in zip(f.layers, g.layers, strict=True):
        assert torch.allclose(a.lam, b.lam, rtol=1e-10)


def test_kfac_diagonal_is_outer_product(fitted):
    model, tok, pool, cfg, _ = fitted
    f = fit_factors(
        model, tok, pool, EngineConfig(**{**cfg.to_dict(), "method": "kfac"}), progress=False
    )
    for lf in f.layers:
        assert torch.allclose(lf.lam, torch.outer(lf.eig_s, lf.eig_a))


def test_precondition_inverts_the_damped_hessian(fitted):
    _, _, _, cfg, f = fitted
    lf = f.layers[0]
    grads = torch.randn(3, *lf.lam.shape, dtype=torch.float64)
    pre = lf.precondition(grads, cfg)
    # Apply H + λI back: Q_S ((Q_Sᵀ X Q_A) * (Λ + λ)) Q_Aᵀ must give G again.
    back = lf.q_s @ ((lf.q_s.T @ pre @ lf.q_a) * (lf.lam + lf.damping(cfg))) @ lf.q_a.T
    assert torch.allclose(back, grads, atol=1e-9)


def test_save_load_roundtrip(fitted, tmp_path):
    model, tok, pool, cfg, f = fitted
    path = f.save(tmp_path / "factors.safetensors")
    g = Factors.load(path, model, cfg)
    assert g.layer_names == f.layer_names and g.method == f.method
    for a, b in zip(f.layers + f.projected, g.layers + g.projected, strict=True):
        for key in ("q_a", "eig_a", "q_s", "eig_s", "lam"):
            assert torch.equal(getattr(a, key), getattr(b, key))
    s1 = prepare_seeds(model, tok, pool[:2], f, cfg, progress=False)
    s2 = prepare_seeds(model, tok, pool[:2], g, cfg, progress=False)
    assert (s1.features == s2.features).all()


def test_load_refuses_other_model_layers_or_method(fitted, tmp_path):
    model, _, _, cfg, f = fitted
    path = f.save(tmp_path / "factors.safetensors")
    with pytest.raises(FactorsMismatchError, match="layers"):
        Factors.load(
            path, model, EngineConfig(**{**cfg.to_dict(), "layers": r"layers\.1\.mlp\.down_proj$"})
        )
    with pytest.raises(FactorsMismatchError, match="method"):
        Factors.load(path, model, EngineConfig(**{**cfg.to_dict(), "method": "kfac"}))
    other_weights, _ = tiny_model("llama", dtype=torch.float64, seed=1)
    with pytest.raises(FactorsMismatchError, match="weights differ"):
        Factors.load(path, other_weights, cfg)
    bigger, _ = tiny_model("llama", dtype=torch.float64, hidden=12)
    with pytest.raises(FactorsMismatchError, match="config differs"):
        Factors.load(path, bigger, cfg)
    gpt2, _ = tiny_model("gpt2", dtype=torch.float64)
    with pytest.raises(FactorsMismatchError, match="GPT2LMHeadModel"):
        Factors.load(path, gpt2, EngineConfig(**{**cfg.to_dict(), "layers": r"mlp\.c_proj$"}))
    with pytest.raises(FileNotFoundError, match="fit_factors"):
        Factors.load(tmp_path / "missing.safetensors", model, cfg)


def test_sampled_labels_fit(fitted):
    model, tok, pool, cfg, f = fitted
    sampled = EngineConfig(**{**cfg.to_dict(), "fisher_labels": "sampled"})
    g1 = fit_factors(model, tok, pool, sampled, progress=False)
    g2 = fit_factors(
        model,
        tok,
        pool,
        EngineConfig(**{**sampled.to_dict(), "factor_cache_mb": 0}),
        progress=False,
    )
    assert not torch.allclose(g1.layers[0].lam, f.layers[0].lam)
    assert torch.allclose(g1.layers[0].lam, g2.layers[0].lam)  # same labels in both passes


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="method"):
        EngineConfig(method="sgd")
    with pytest.raises(ValueError, match="template"):
        EngineConfig(template="no placeholder")
    with pytest.raises(ValueError, match="rank"):
        EngineConfig(rank=-1)
    with pytest.raises(ValueError, match="unknown EngineConfig fields"):
        EngineConfig.from_dict({"rnak": 3})
    assert EngineConfig.from_dict(EngineConfig(rank=7).to_dict()).rank == 7
