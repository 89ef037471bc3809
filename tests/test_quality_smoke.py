"""The quality experiment (benchmarks/quality): its data splits, and a smoke run end to end
with a tiny random LLaMA (every selector fine-tuned, decoded and scored; report written)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

QUALITY = Path(__file__).resolve().parents[1] / "benchmarks" / "quality"


def _load(name: str, file: str):
    spec = importlib.util.spec_from_file_location(name, QUALITY / file)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


qdata = _load("quality_data", "data.py")
needs_data = pytest.mark.skipif(
    not (qdata.DEFAULT_DATA_DIR / "tatoeba.zh-en.jsonl").is_file(),
    reason=f"shared pairs not found in {qdata.DEFAULT_DATA_DIR}",
)


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


@needs_data
@pytest.mark.parametrize("direction", ["zh-en", "de-en"])
def test_splits_disjoint_with_documented_noise(direction):
    cfg = qdata.SplitConfig(
        direction=direction, n_seeds=16, n_pool=203, n_dev=30, n_test=40, n_test_other=40
    )
    splits = qdata.build_splits(qdata.DEFAULT_DATA_DIR, cfg)
    assert {k: len(v) for k, v in splits.items()} == {
        "seeds": 16, "pool": 203, "dev": 30, "test_in": 40, "test_other": 40,
    }  # fmt: skip
    # disjoint in id and in source text; the clean targets too
    ids = [p.id for v in splits.values() for p in v]
    assert len(ids) == len(set(ids))
    srcs = [_norm(p.src) for v in splits.values() for p in v]
    assert len(srcs) == len(set(srcs))
    clean_tgts = [
        _norm(p.tgt)
        for name, v in splits.items()
        for p in v
        if name != "pool" or p.extra["noise"] == "clean"
    ]
    assert len(clean_tgts) == len(set(clean_tgts))
    # the documented counts: round(203 * 0.3) = 61 noisy, 13 + 12 x 4
    counts = qdata.noise_plan_counts(203, 0.3)
    assert counts == {
        "clean": 142, "misaligned": 13, "untranslated": 12, "truncated": 12,
        "wrong_language": 12, "other_domain": 12,
    }  # fmt: skip
    summary = qdata.summarize(splits, cfg)
    assert summary["noise_counts"] == counts
    assert summary["noise_rate"] == pytest.approx(61 / 203, abs=1e-4)
    other = "gettext"
    in_domain = "tatoeba" if direction == "zh-en" else "ding"
    for p in splits["pool"]:
        kind = p.extra["noise"]
        assert p.extra["origin"] == (other if kind == "other_domain" else in_domain)
        if kind == "untranslated":
            assert p.tgt == p.src
        elif kind == "truncated":
            assert 0 < len(p.tgt) < len(p.src + p.tgt) and p.tgt.split()
        elif kind in ("misaligned", "wrong_language"):
            assert _norm(p.tgt) not in clean_tgts and p.tgt != p.src
    for name in ("seeds", "dev", "test_in"):
        assert all(p.id.startswith(in_domain + ":") for p in splits[name])
    assert all(p.id.startswith(other + ":") for p in splits["test_other"])
    # deterministic
    again = qdata.build_splits(qdata.DEFAULT_DATA_DIR, cfg)
    assert [p.to_record() for p in again["pool"]] == [p.to_record() for p in splits["pool"]]


@needs_data
def test_smoke_run(tmp_path):
    out = tmp_path / "q"
    cmd = [sys.executable, str(QUALITY / "run_quality.py"), "--smoke", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    rows = {r["selector"]: r for r in report["table"]}
    assert set(rows) == {"gdig", "quality", "diversity", "random", "all"}
    for sel, row in rows.items():
        assert 0.0 <= row["noise_rate"] <= 1.0, sel
        assert sum(row["noise_kinds_mean"].values()) == row["n_pairs"]
        for split in ("test_in", "test_other"):
            assert math.isfinite(row[f"{split}.chrf"]["mean"]), (sel, split)
            assert math.isfinite(row[f"{split}.bleu"]["mean"]), (sel, split)
    assert rows["all"]["n_pairs"] == 40 and rows["gdig"]["n_pairs"] == 10
    assert rows["all"]["noise_rate"] == pytest.approx(12 / 40)
    assert report["data"]["noise_counts"] == qdata.noise_plan_counts(40, 0.3)
    assert {(s["b"], s["test"], s["metric"]) for s in report["significance"]} == {
        ("random", t, m) for t in ("test_in", "test_other") for m in ("chrf", "bleu")
    }
    for run in report["runs"]:  # hypotheses kept, one per test sentence
        for split in ("test_in", "test_other"):
            hyps = (out / "runs" / run["key"] / f"hyps_{split}.jsonl").read_text().splitlines()
            assert len(hyps) == 10
    assert (out / "RESULTS.md").read_text().count("| 10 | gdig | 1 |") == 2  # both test sets
    assert (out / "quality.png").stat().st_size > 0
