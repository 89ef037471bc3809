"""benchmarks/scale.py --smoke end to end (N=2000): every phase timed, peak memory taken,
and the selection written with the pool's own fields (issue 11)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_models import data_dir

ROOT = Path(__file__).resolve().parents[1]
DATA = data_dir()
PHASES = {"read_validate", "lengths", "store_synth", "select", "writers", "report"}


@pytest.mark.skipif(not (DATA / "tatoeba.zh-en.jsonl").is_file(), reason=f"no pairs in {DATA}")
def test_scale_smoke(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--smoke", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    by_kind = {r["kind"]: r for r in rows}
    assert set(by_kind) == {"pipeline", "rescore_store", "rescore"}

    pipe = by_kind["pipeline"]
    assert pipe["n"] == 2000 and set(pipe["phases"]) == PHASES
    assert all(s > 0 for s in pipe["phases"].values()), pipe["phases"]
    assert pipe["total_s"] == pytest.approx(
        sum(s for p, s in pipe["phases"].items() if p != "store_synth")
    )
    assert pipe["peak_mib"] >= pipe["start_mib"] > 0
    assert pipe["selected"] == 200 and pipe["passed_quality"] >= 200

    resc = by_kind["rescore"]
    assert resc["n"] == 2000 and resc["dim"] == 10240  # 10 tracked layers x 32 x 32
    assert resc["seconds"] > 0 and resc["cand_per_s"] > 0 and resc["peak_mib"] > 0
    assert not (tmp_path / "rescore-2000-D10240-float32").exists()  # removed after use

    # selected.jsonl: budget N/10 lines, each carrying its pool record's fields unchanged.
    pool = {}
    for line in (tmp_path / "pool-2000.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        pool[rec["id"]] = rec
    noisy = sum(r["noise"] != "clean" for r in pool.values()) / len(pool)
    assert 0.25 < noisy < 0.35, noisy
    out = tmp_path / "pipeline-2000"
    selected = [json.loads(s) for s in (out / "selected.jsonl").read_text().splitlines()]
    assert len(selected) == 200 == len({s["id"] for s in selected})
    for rec in selected:
        assert {k: rec.get(k) for k in pool[rec["id"]]} == pool[rec["id"]]
        assert rec["noise"] in {"clean", "misaligned", "untranslated", "truncated"}
    kinds = {s["noise"] for s in selected}
    assert "clean" in kinds  # the synthetic benefits favour clean pairs
    assert sum(s["noise"] == "clean" for s in selected) > 0.9 * len(selected)
    assert (out / "report.html").is_file() and (out / "scores.csv").is_file()
    assert len((out / "scores.csv").read_text().splitlines()) == 2001
