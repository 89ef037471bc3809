"""The gradient store: the ScoreSource protocol, pool order, resume, rescore and export."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from helpers_models import tiny_model, toy_pairs

import gdig_ext
from gdig.engine import (
    GradStore,
    ScoreConfig,
    fit_factors,
    prepare_seeds,
    rescore,
    score_candidates,
)
from gdig.engine.config import EngineConfig
from gdig.engine.score import run_key
from gdig.engine.store import (
    OPTIONAL_SHARD_FILES,
    SHARD_FILES,
    StoreWriter,
    bytes_per_candidate,
    forget_shards,
    to_float16,
)
from gdig.io.validate import OptionError
from gdig.select.source import ScoreSource

PATTERN = r"mlp\.down_proj$"


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    model, tok = tiny_model("llama", hidden=16, inter=48)
    pool = toy_pairs(23, seed=11)
    cfg = EngineConfig.from_flat(
        layers=PATTERN, factor_samples=16, k_in=8, k_out=4, rank=4, top_k=3
    )
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
    # tiles smaller than a shard (7 rows) and not dividing it: the same statistics
    tiled = rescore(store, top_k=3, tile_rows=3)
    assert np.array_equal(tiled["n_pos"], got["n_pos"])
    assert np.array_equal(tiled["topk_idx"], got["topk_idx"])
    assert np.allclose(tiled["mean"], got["mean"], rtol=1e-5)


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
    cfg2 = cfg.with_options(top_k=2)
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


def _npy_data_bytes(path) -> int:
    """Bytes of an .npy file after its header (the array's own bytes)."""
    fmt = np.lib.format
    with open(path, "rb") as fh:
        version = fmt.read_magic(fh)
        (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(fh)
        return path.stat().st_size - fh.tell()


def test_manifest_records_bytes_per_candidate_and_file_stats(scored):
    *_, root, store = scored
    manifest = json.loads((root / "manifest.json").read_text())
    top_k = manifest["run"]["config"]["scoring"]["top_k"]  # 2 after the resume test
    bpc = bytes_per_candidate(store.n_seeds, store.dim, top_k)
    assert manifest["bytes_per_candidate"] == bpc and manifest["feature_dtype"] == "float32"
    data = sum(_npy_data_bytes(p) for p in root.glob("shard-*/*.npy"))
    assert data == store.n * bpc  # the formula is the arrays' bytes, exactly
    per_shard = len(SHARD_FILES) + len(OPTIONAL_SHARD_FILES)  # scoring writes the loss too
    assert len(list(root.glob("shard-*/*.npy"))) == per_shard * len(manifest["shards"])
    for name, shard in manifest["shards"].items():
        for fname, rec in shard["files"].items():
            st = (root / name / fname).stat()
            assert rec["size"] == st.st_size and rec["mtime_ns"] == st.st_mtime_ns
            assert len(rec["sha256"]) == 64


def test_float16_store_round_trip(scored, tmp_path):
    model, tok, pool, cfg, seeds, _, _ = scored
    cfg16 = cfg.with_options(feature_dtype="float16")
    store32 = score_candidates(model, tok, pool, seeds, cfg, tmp_path / "32", 7, progress=False)
    store = score_candidates(model, tok, pool, seeds, cfg16, tmp_path, 7, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["feature_dtype"] == "float16"
    assert manifest["bytes_per_candidate"] == bytes_per_candidate(5, store.dim, 3, "float16")
    # features take 2 bytes instead of 4, plus a float32 scale per row
    bpc32 = bytes_per_candidate(5, store.dim, 3)
    assert manifest["bytes_per_candidate"] == bpc32 - 2 * store.dim + 4
    assert np.load(tmp_path / "shard-00000" / "features.npy").dtype == np.float16
    scale = np.load(tmp_path / "shard-00000" / "feature_scale.npy")
    assert scale.dtype == np.float32 and scale.shape == (7,)
    assert np.array_equal(scale, 2.0 ** np.round(np.log2(scale)))  # powers of two
    assert np.load(tmp_path / "shard-00000" / "benefit.npy").dtype == np.float32
    assert np.load(tmp_path / "seed_features.npy").dtype == np.float32
    # benefits, norms and stats come from the model pass: exactly the float32 store's
    full = np.concatenate([b for _, b in store.benefit_blocks()])
    assert np.array_equal(full, np.concatenate([b for _, b in store32.benefit_blocks()]))
    assert np.array_equal(store.cand_norm, store32.cand_norm)
    for key, val in store.stats().items():
        assert np.array_equal(val, store32.stats()[key]), key
    # features: read back as float32, within float16 rounding of the float32 ones (each
    # row scaled by a power of two first, so small gradients keep their 11 bits)
    want = store32.feature_rows(np.arange(store.n))
    got = store.feature_rows(np.arange(store.n))
    assert got.dtype == np.float32
    row_max = np.abs(want).max(axis=1, keepdims=True)
    assert np.all(np.abs(got - want) <= 2**-11 * np.abs(want) + 2**-24 * 2 * row_max)
    assert np.all(np.abs(got).max(axis=1) > 0)
    tiny = to_float16(want * 1e-9)  # below float16's range without the scale
    small = tiny[0].astype(np.float32) * tiny[1][:, None]
    np.testing.assert_allclose(small, want * 1e-9, rtol=2**-10, atol=1e-9 * 2**-23 * row_max.max())
    shards = list(store.feature_shards())
    assert all(s.dtype == np.float32 for s in shards)
    assert np.array_equal(np.concatenate(shards), got)
    # rescore from float16 features: the same counts and order, means within rounding
    a, b = rescore(store32, top_k=3), rescore(store, top_k=3)
    assert b["mean"].dtype == np.float32
    np.testing.assert_allclose(b["mean"], a["mean"], rtol=1e-2, atol=1e-3 * np.abs(a["mean"]).max())


def test_feature_dtype_is_checked():
    with pytest.raises(OptionError, match="feature-dtype"):
        ScoreConfig(feature_dtype="bfloat16")
    assert ScoreConfig().feature_dtype == "float32"


def test_quick_resume_checks_size_and_mtime_full_the_sha256(scored, tmp_path):
    """shard_done under quick keeps a shard whose file changed with size and mtime kept (it
    cannot see that; --verify full can), catches a touched or truncated one."""
    model, tok, pool, cfg, seeds, _, _ = scored
    root = tmp_path
    score_candidates(model, tok, pool, seeds, cfg, root, shard_size=7, progress=False)
    writer = StoreWriter(
        root,
        run_key=run_key(model, seeds, cfg),
        n=len(pool),
        shard_size=7,
        seed_ids=seeds.ids,
        seed_features=seeds.features,
        seed_norm=seeds.norm,
        layers=[],
        top_k=3,
    )
    ids = [p.id for p in pool]
    assert all(writer.shard_done(i, ids[i * 7 : i * 7 + 7]) for i in range(4))
    path = root / "shard-00001" / "mean.npy"
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime restored
    assert writer.shard_done(1, ids[7:14])  # quick: size and mtime match
    writer.verify = "full"
    assert not writer.shard_done(1, ids[7:14])
    writer.verify = "quick"
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: hashed, caught
    assert not writer.shard_done(1, ids[7:14])
    good = root / "shard-00002" / "min.npy"
    os.utime(good, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes: kept
    assert writer.shard_done(2, ids[14:21])
    cut = root / "shard-00003" / "n_pos.npy"
    os.truncate(cut, cut.stat().st_size - 8)  # truncated: size differs
    assert not writer.shard_done(3, ids[21:23])


def test_forgotten_shards_make_the_store_incomplete(scored, tmp_path):
    import shutil

    shutil.copytree(scored[5], tmp_path / "s")
    forget_shards(tmp_path / "s", ["shard-00002"])
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert sorted(manifest["shards"]) == ["shard-00000", "shard-00001", "shard-00003"]
    with pytest.raises(ValueError, match="incomplete"):
        GradStore.open(tmp_path / "s")


def test_seed_features_digest_survives_large_values_and_last_bit_noise():
    """The resume key's digest: no float16 overflow for exact-mode sized features, the same
    digest for a last-bit difference, another one for a real change."""
    import warnings

    from gdig.engine.score import features_digest

    rng = np.random.default_rng(5)
    f = (rng.standard_normal((6, 40)) * 1e6).astype(np.float32)  # far beyond float16's 65504
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in the cast would raise here
        key = features_digest(f)
    nudged = np.nextafter(f, np.float32(np.inf), dtype=np.float32)
    nudged[0, 0] = f[0, 0]  # keep the peak (and so the scale) as it was
    assert features_digest(nudged) == key
    changed = f.copy()
    changed[2, 3] *= 1.5
    assert features_digest(changed) != key
