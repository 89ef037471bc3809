"""The gradient store: the ScoreSource protocol, pool order, resume, rescore and export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers_models import engine_config, tiny_model, toy_pairs, with_options

import gdig_ext
from gdig.engine import (
    GradStore,
    fit_factors,
    prepare_seeds,
    rescore,
    score_candidates,
)
from gdig.select.source import ScoreSource

PATTERN = r"mlp\.down_proj$"


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    model, tok = tiny_model("llama", hidden=16, inter=48)
    pool = toy_pairs(23, seed=11)
    cfg = engine_config(layers=PATTERN, factor_samples=16, k_in=8, k_out=4, rank=4, top_k=3)
    factors = fit_factors(model, tok, pool, cfg, progress=False)
    seeds = prepare_seeds(model, tok, pool[:5], factors, cfg, progress=False)
    root = tmp_path_factory.mktemp("store")
    store = score_candidates(model, tok, pool, seeds, cfg, root, shard_size=7, progress=False)
    return model, tok, pool, cfg, seeds, root, store


def test_store_implements_score_source(scored):
    _, _, pool, _, seeds, root, store = scored
    assert isinstance(store, ScoreSource)
    assert (store.n, store.n_seeds, store.dim) == (23, 5, 2 * 8 * 4)
    assert store.ids == [p.id for p in pool]
    assert store.cand_norm.shape == (23,) and store.cand_norm.dtype == np.float32
    assert np.all(store.cand_norm > 0)
    assert np.allclose(store.seed_norm, seeds.norm)
    blocks = list(store.benefit_blocks(chunk_rows=5))
    assert [s for s, _ in blocks] == [0, 5, 7, 12, 14, 19, 21]  # chunks never cross shards
    full = np.concatenate([b for _, b in blocks])
    assert full.shape == (23, 5) and full.dtype == np.float32
    rows = np.array([22, 0, 8, 8, 15])
    assert store.feature_rows(rows).shape == (5, store.dim)
    every = store.feature_rows(np.arange(23))
    assert np.array_equal(store.feature_rows(rows), every[rows])
    assert len(list((root).glob("shard-*"))) == 4


def test_stats_match_the_benefit_rows(scored):
    store = scored[-1]
    full = np.concatenate([b for _, b in store.benefit_blocks()])
    st = store.stats()
    assert np.array_equal(st["n_pos"], (full > 0).sum(1))
    assert np.allclose(st["mean"], full.mean(1), rtol=1e-5, atol=1e-6)
    assert np.allclose(st["min"], full.min(1))
    assert np.array_equal(st["topk_idx"][:, 0], full.argmax(1))
    assert np.all(np.diff(st["topk_val"], axis=1) <= 0)


def test_rescore_uses_stored_features_only(scored):
    store = scored[-1]
    feats = torch.from_numpy(store.feature_rows(np.arange(store.n)))
    want = gdig_ext.score_stats(feats, torch.from_numpy(store.seed_features), 3)
    got = rescore(store, top_k=3)
    assert np.array_equal(got["n_pos"], want[0].numpy())
    assert np.allclose(got["mean"], want[1].numpy(), rtol=1e-5)
    other = np.random.default_rng(0).standard_normal((2, store.dim)).astype(np.float32)
    assert rescore(store, other, top_k=1)["topk_idx"].shape == (store.n, 1)
    with pytest.raises(ValueError, match="seed features must be"):
        rescore(store, other[:, :3])


def test_export_benefit_matrix(scored, tmp_path):
    store = scored[-1]
    path = store.export_benefit_matrix(tmp_path / "b.npy")
    mat = np.load(path)
    assert mat.dtype == np.float32 and mat.shape == (23, 5)
    assert np.array_equal(mat, np.concatenate([b for _, b in store.benefit_blocks()]))


def test_resume_skips_good_shards_and_redoes_bad_ones(scored):
    model, tok, pool, cfg, seeds, root, _ = scored
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["shards"]) == 4
    before = {p: p.stat().st_mtime_ns for p in root.glob("shard-*/benefit.npy")}
    damaged = root / "shard-00002" / "features.npy"
    damaged.write_bytes(damaged.read_bytes()[:-8] + b"\0" * 8)
    store = score_candidates(model, tok, pool, seeds, cfg, root, shard_size=7, progress=False)
    after = {p: p.stat().st_mtime_ns for p in root.glob("shard-*/benefit.npy")}
    redone = sorted(p.parent.name for p in before if before[p] != after[p])
    assert redone == ["shard-00002"]
    assert store.n == 23
    # A different configuration invalidates every shard.
    cfg2 = with_options(cfg, top_k=2)
    score_candidates(model, tok, pool, seeds, cfg2, root, shard_size=7, progress=False)
    again = {p: p.stat().st_mtime_ns for p in root.glob("shard-*/benefit.npy")}
    assert all(again[p] != after[p] for p in after)


def test_incomplete_store_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(
        json.dumps(
            {"format": "gdig-gradstore", "version": 1, "complete": False, "n": 1, "shards": {}}
        )
    )
    with pytest.raises(ValueError, match="incomplete"):
        GradStore.open(tmp_path)
    with pytest.raises(ValueError, match="cannot read"):
        GradStore.open(tmp_path / "nowhere")


def test_pool_ids_must_be_unique(scored, tmp_path):
    model, tok, pool, cfg, seeds, _, _ = scored
    with pytest.raises(ValueError, match="not unique"):
        score_candidates(model, tok, [pool[0], pool[0]], seeds, cfg, tmp_path, progress=False)
