"""Numerical and memory faults: non-finite examples are found per example and left out
(listed, never averaged into factors or scores); running out of memory halves the batch
and retries instead of dying."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_models import toy_pairs

from gdig.cli import main
from gdig.data.pairs import write_jsonl
from gdig.engine.faults import finite_rows, is_out_of_memory, run_with_backoff
from gdig.select.rowsubset import RowSubset
from gdig.select.source import ArraySource


def test_finite_rows_flags_each_example():
    a = torch.ones(4, 3, 2)
    b = torch.ones(4, 5)
    a[1, 2, 0] = float("nan")
    b[3, 4] = float("inf")
    assert finite_rows(a, b).tolist() == [True, False, True, False]


@pytest.mark.parametrize(
    ("exc", "oom"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), True),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                "memory: you tried to allocate 87960930222080 bytes. Error code 12"
            ),
            True,
        ),
        (RuntimeError("HIP out of memory. Tried to allocate 2.00 GiB"), True),
        (MemoryError(), True),
        (RuntimeError("shape mismatch"), False),
    ],
)
def test_out_of_memory_is_recognised(exc, oom):
    assert is_out_of_memory(exc) is oom


def test_backoff_halves_until_it_fits(caplog):
    calls = []

    def step(rows):
        calls.append(list(rows))
        if len(rows) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return sum(rows)

    with caplog.at_level(logging.WARNING, logger="gdig"):
        parts = run_with_backoff(step, list(range(7)), "scoring batch")
    assert [list(r) for r, _ in parts] == [[0], [1, 2], [3, 4], [5, 6]]
    assert sum(v for _, v in parts) == 21  # every row processed exactly once
    assert "out of memory on a scoring batch of 7 examples; retrying as 3 + 4" in caplog.text


def test_backoff_on_a_real_cpu_allocation_failure():
    def step(rows):
        # 256 TiB for more than two rows: torch's CPU allocator refuses it for real
        n = (1 << 46) if len(rows) > 2 else 4
        return torch.empty(n, dtype=torch.float32).numel()

    parts = run_with_backoff(step, list(range(5)))
    assert [list(r) for r, _ in parts] == [[0, 1], [2], [3, 4]]


def test_backoff_gives_up_on_one_example_and_passes_other_errors():
    def oom(_rows):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(MemoryError, match="batch of one example"):
        run_with_backoff(oom, [0, 1])

    def bug(_rows):
        raise RuntimeError("index out of range")

    with pytest.raises(RuntimeError, match="index out of range"):
        run_with_backoff(bug, [0, 1])


def test_row_subset_is_a_score_source_over_the_kept_rows():
    rng = np.random.default_rng(0)
    feats, seeds = rng.normal(size=(10, 3)), rng.normal(size=(4, 3))
    full = ArraySource(feats, seed_grads=seeds, ids=[f"c{i}" for i in range(10)])
    keep = np.array([0, 2, 3, 7, 9])
    sub = RowSubset(full, keep)
    assert sub.n == 5 and sub.ids == ["c0", "c2", "c3", "c7", "c9"]
    blocks = list(sub.benefit_blocks(chunk_rows=3))
    assert [s for s, _ in blocks] == [0, 2, 3, 4]  # contiguous renumbering
    np.testing.assert_allclose(np.concatenate([b for _, b in blocks]), (feats @ seeds.T)[keep],
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(sub.feature_rows(np.array([1, 4])), feats[[2, 9]], rtol=1e-6)
    np.testing.assert_allclose(sub.cand_norm, np.linalg.norm(feats, axis=1)[keep], rtol=1e-6)
    with pytest.raises(ValueError, match="ascending"):
        RowSubset(full, np.array([3, 1]))


# ---------------------------------------------------------------- whole runs

FAST = ["--no-progress", "--factor-samples", "0", "--k-in", "4", "--k-out", "4", "--rank", "4",
        "--budget", "6", "--tau", "0", "--batch-size", "4", "--shard-size", "8"]  # fmt: skip
POISON = "~"  # a pair whose text holds this byte gets NaN embeddings (forward hook)


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_llama_dir) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("faults")
    pairs = toy_pairs(30, seed=4)
    for i in (9, 17):  # two pool pairs poisoned
        pairs[i].src += f" {POISON}"
    write_jsonl(d / "seed.jsonl", pairs[:5])
    write_jsonl(d / "pool.jsonl", pairs[5:])
    return {"dir": d, "model": tiny_llama_dir, "seed": d / "seed.jsonl",
            "pool": d / "pool.jsonl", "poisoned": [pairs[9].id, pairs[17].id]}  # fmt: skip


def _args(env, out: Path) -> list[str]:
    return ["--model", str(env["model"]), "--seeds", str(env["seed"]), "--pool",
            str(env["pool"]), "--out", str(out), *FAST]  # fmt: skip


def _poisoning_loader(monkeypatch):
    import gdig.model

    real = gdig.model.load_model

    def load(*args, **kwargs):
        model, tok = real(*args, **kwargs)
        marker = tok.convert_tokens_to_ids(POISON)

        def hook(_module, inputs, output):
            rows = (inputs[0] == marker).any(dim=1)
            return output.masked_fill(rows[:, None, None], float("nan"))

        model.get_input_embeddings().register_forward_hook(hook)
        return model, tok

    monkeypatch.setattr(gdig.model, "load_model", load)


def test_nan_examples_are_excluded_and_listed(env, tmp_path, monkeypatch, caplog):
    from safetensors.torch import load_file

    _poisoning_loader(monkeypatch)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="gdig"):
        assert main(["run", *_args(env, out)]) == 0
    listed = [json.loads(x) for x in (out / "nonfinite.jsonl").read_text().splitlines()]
    assert {r["id"] for r in listed if r["stage"] == "score"} == set(env["poisoned"])
    # factor_samples 0 = the whole pool: the poisoned pairs were in the fit, and left out
    assert {r["id"] for r in listed if r["stage"] == "fit"} == set(env["poisoned"])
    assert all(r["file"] == str(env["pool"]) and r["line"] for r in listed)
    for name, t in load_file(out / "factors.safetensors").items():
        assert torch.isfinite(t).all(), name
    with open(out / "scores.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 23 and not {r["id"] for r in rows} & set(env["poisoned"])
    assert all(np.isfinite(float(r["benefit_mean"])) for r in rows)
    assert env["poisoned"][0] in caplog.text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["score"]["nonfinite"] == 2


def test_nan_seed_stops_with_its_id(env, tmp_path, monkeypatch, capsys):
    _poisoning_loader(monkeypatch)
    seed = tmp_path / "seed.jsonl"
    recs = [json.loads(x) for x in env["seed"].read_text().splitlines()]
    recs[2]["tgt"] += POISON
    write_jsonl(seed, recs)
    args = _args(env, tmp_path / "run")
    args[args.index("--seeds") + 1] = str(seed)
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert recs[2]["id"] in err and "non-finite" in err


def test_out_of_memory_halves_the_batch_and_matches(env, tmp_path, monkeypatch, caplog):
    from gdig.engine.capture import GradientCapture

    clean = dict(env)
    clean_pool = tmp_path / "pool.jsonl"
    write_jsonl(clean_pool, [json.loads(x) for x in env["pool"].read_text().splitlines()
                             if POISON not in x])  # fmt: skip
    clean["pool"] = clean_pool
    ref = tmp_path / "ref"
    assert main(["run", *_args(clean, ref)]) == 0

    real_run = GradientCapture.run
    calls = {"big": 0, "failed": 0}

    def flaky(self, batch, *args, **kwargs):
        # every other batch of more than 2 examples runs out of memory (fit, seeds, scoring)
        if batch.size > 2:
            calls["big"] += 1
            if calls["big"] % 2:
                calls["failed"] += 1
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_run(self, batch, *args, **kwargs)

    monkeypatch.setattr(GradientCapture, "run", flaky)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="gdig"):
        assert main(["run", *_args(clean, out)]) == 0
    print(f"out-of-memory errors injected: {calls['failed']}")  # shown with pytest -s
    assert calls["failed"] >= 5
    for what in ("factor batch", "seed batch", "scoring batch"):
        assert f"out of memory on a {what} of 4 examples; retrying as 2 + 2" in caplog.text
    with open(ref / "scores.csv", encoding="utf-8") as fh:
        a = list(csv.DictReader(fh))
    with open(out / "scores.csv", encoding="utf-8") as fh:
        b = list(csv.DictReader(fh))
    x = np.array([float(r["benefit_mean"]) for r in a])
    y = np.array([float(r["benefit_mean"]) for r in b])
    np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5 * np.abs(x).max())
    assert [r["selected"] for r in a] == [r["selected"] for r in b]
