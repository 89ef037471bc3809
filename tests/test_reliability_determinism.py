"""Same inputs and seeds give the same outputs: byte for byte with the same batches, and
within a stated tolerance (with the same selection) across batch sizes. Also: the disk
estimate covers what a run really writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_models import toy_pairs

from gdig.cli import main
from gdig.data.pairs import write_jsonl
from gdig.engine.store import bytes_per_candidate
from gdig.pipeline.diskspace import factor_bytes, folder_bytes, store_bytes

FAST = ["--no-progress", "--factor-samples", "30", "--k-in", "4", "--k-out", "4", "--rank", "4",
        "--budget", "8", "--tau", "0.5", "--on-short", "fill", "--shard-size", "16"]  # fmt: skip
# Across batch sizes float32 sums are reordered; RELIABILITY.md states this tolerance:
# |difference| <= RTOL * |value| + ATOL_SCALE * max |value| over the pool.
RTOL, ATOL_SCALE = 1e-4, 1e-5


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_llama_dir) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("determinism")
    pairs = toy_pairs(46, seed=21)
    write_jsonl(d / "seed.jsonl", pairs[:6])
    write_jsonl(d / "pool.jsonl", pairs[6:])
    return {"dir": d, "model": tiny_llama_dir, "seed": d / "seed.jsonl",
            "pool": d / "pool.jsonl"}  # fmt: skip


def _run(env, name: str, *extra: str) -> Path:
    out = env["dir"] / name
    if not (out / "scores.csv").exists():
        args = ["--model", str(env["model"]), "--seeds", str(env["seed"]),
                "--pool", str(env["pool"]), "--out", str(out), *FAST, *extra]  # fmt: skip
        assert main(["run", *args]) == 0
    return out


def _scores(out: Path) -> dict[str, np.ndarray]:
    with open(out / "scores.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def test_same_inputs_same_bytes(env):
    a = _run(env, "a", "--batch-size", "2")
    b = _run(env, "b", "--batch-size", "2")
    for name in ("scores.csv", "selected.jsonl", "factors.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for shard in sorted((a / "store").glob("shard-*")):
        for f in sorted(shard.iterdir()):
            assert f.read_bytes() == (b / "store" / shard.name / f.name).read_bytes(), f


def test_batch_size_changes_scores_only_within_tolerance(env):
    two, seven = (
        _scores(_run(env, "a", "--batch-size", "2")),
        _scores(_run(env, "bs7", "--batch-size", "7")),
    )
    assert list(two["id"]) == list(seven["id"])
    for key in ("benefit_mean", "benefit_min"):
        x, y = two[key].astype(float), seven[key].astype(float)
        atol = ATOL_SCALE * np.abs(y).max()
        np.testing.assert_allclose(x, y, rtol=RTOL, atol=atol, err_msg=key)
        assert not np.isnan(x).any()
    # no benefit lies within the tolerance of 0, so the quality filter and the selection agree
    for key in ("n_pos", "passed_quality", "selected", "cluster"):
        assert list(two[key]) == list(seven[key]), key


def test_auto_batch_size_is_fixed_at_the_first_run(env, tmp_path, monkeypatch):
    out = tmp_path / "auto"
    args = ["--model", str(env["model"]), "--seeds", str(env["seed"]), "--pool",
            str(env["pool"]), "--out", str(out), *FAST]  # fmt: skip
    fit_args = [
        "--model",
        str(env["model"]),
        "--pool",
        str(env["pool"]),
        "--out",
        str(out),
        *FAST[: FAST.index("--rank")],
    ]  # fmt: skip  (fit takes only its own options)
    assert main(["fit", *fit_args]) == 0
    chosen = json.loads((out / "manifest.json").read_text())["execution"]["max_batch_tokens"]
    assert chosen >= 64

    def changed(*_a, **_k):
        raise AssertionError("a resumed run must reuse the recorded batch size")

    for mod in ("gdig.engine.batching", "gdig.engine.score", "gdig.engine.seeds",
                "gdig.engine.factors"):  # fmt: skip
        monkeypatch.setattr(f"{mod}.auto_max_tokens", changed)
    assert main(["run", *args]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["execution"]["max_batch_tokens"] == chosen


def _npy_header_bytes(path: Path) -> int:
    fmt = np.lib.format
    with open(path, "rb") as fh:
        version = fmt.read_magic(fh)
        (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(fh)
        return fh.tell()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_disk_estimate_covers_the_written_store(env, dtype):
    extra = [] if dtype == "float32" else ["--feature-dtype", dtype]
    out = _run(env, "a" if dtype == "float32" else dtype, "--batch-size", "2", *extra)
    store = json.loads((out / "store" / "manifest.json").read_text())
    assert store["feature_dtype"] == dtype
    n, s, d = store["n"], store["n_seeds"], store["dim"]
    # the manifest records the bytes per candidate the estimate is made of
    assert store["bytes_per_candidate"] == bytes_per_candidate(s, d, 5, dtype)
    est_store = store_bytes(n, s, d, top_k=5, feature_dtype=dtype)
    # + seed files: preconditioned and raw features (S x D each) and the S norms
    assert est_store == n * store["bytes_per_candidate"] + 4 * s * (2 * d + 1)
    real_store = folder_bytes(out / "store")
    # exactly the arrays' bytes: the rest is npy headers, ids.json and the manifest
    overhead = sum(_npy_header_bytes(p) for p in (out / "store").rglob("*.npy"))
    overhead += sum(p.stat().st_size for p in (out / "store").rglob("*.json"))
    assert real_store - overhead == est_store
    layers = store["layers"]
    est_factors = factor_bytes([(ly["d_out"], ly["d_in"]) for ly in layers], 4, 4, exact=False)
    real_factors = folder_bytes(out / "factors.safetensors")
    assert 0.5 * real_factors < est_factors * 1.05 + (16 << 10)
    assert est_factors <= real_factors * 1.5


def test_resume_with_another_thread_count_is_flagged(env):
    """Byte-identity across a resume needs the thread count it began with: another count is
    said in a warning (kept in the manifest), and the kept stages are still reused."""
    out = _run(env, "threads", "--batch-size", "2")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["versions"]["torch_threads"] == str(torch.get_num_threads())
    manifest["versions"]["torch_threads"] = "97"
    (out / "manifest.json").write_text(json.dumps(manifest))
    factors = (out / "factors.safetensors").stat().st_mtime_ns
    args = ["--model", str(env["model"]), "--seeds", str(env["seed"]),
            "--pool", str(env["pool"]), "--out", str(out), *FAST, "--batch-size", "2"]  # fmt: skip
    assert main(["run", *args]) == 0
    warnings = json.loads((out / "manifest.json").read_text())["warnings"]
    flagged = [w for w in warnings if "thread count" in w]
    assert flagged and f"torch_threads 97 -> {torch.get_num_threads()}" in flagged[0]
    assert (out / "factors.safetensors").stat().st_mtime_ns == factors  # reused, not redone
