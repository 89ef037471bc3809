"""benchmarks/peers.py's bookkeeping: agreement figures, rates and the RESULTS.md section
(the runs themselves need SmolLM2 and kronfluence: `make peers`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import peers


def test_agreement_of_identical_and_opposite_scores():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 8))
    same = peers.agreement(a, 3 * a)  # a positive scale changes no rank or sign
    assert same == pytest.approx(
        {"spearman_pairs": 1.0, "spearman_mean": 1.0, "sign_agree": 1.0, "top10_overlap": 1.0}
    )
    flip = peers.agreement(a, -a)
    assert flip["spearman_pairs"] == pytest.approx(-1.0) and flip["sign_agree"] == 0.0
    assert flip["top10_overlap"] == 0.0


def _args(**kw) -> argparse.Namespace:
    base = {"seeds": 8, "candidates": 4, "subset": 2, "threads": 1, "batch_size": 2}
    base["model"] = "smollm2"
    return argparse.Namespace(**{**base, "exact_seeds": 4, **kw})


def test_rates_count_seed_preparation():
    args = _args()
    # gdig: 4 candidates in 2 s, 8 seeds in 6 s.
    assert peers._rates({"fit": 1.0, "seeds": 6.0, "score": 2.0}, args) == (2.0, 0.5, 1.0)
    # Per-example timings on a subset: the S seeds spread over the N candidates.
    score, with_seeds, fit = peers._rates({"score_per_ex": 0.5, "seeds_per_ex": 0.25}, args)
    assert (score, fit) == (2.0, None) and with_seeds == pytest.approx(1 / (0.5 + 0.25 * 2))
    assert peers._rates({"fit": 3.0, "score+seeds": 8.0}, args) == (None, 0.5, 3.0)


def test_section_is_written_and_replaced(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    rng = np.random.default_rng(1)
    kf = rng.standard_normal((4, 8)).astype(np.float32)
    np.save(work / "kronfluence-fp32.npy", kf)
    np.save(work / "gdig-fp32.npy", kf * 2)
    results = {
        "gdig-fp32": {"times": {"fit": 1.0, "seeds": 6.0, "score": 2.0}, "peak_mib": 100.0},
        "kronfluence-fp32": {"times": {"fit": 4.0, "score+seeds": 16.0}, "peak_mib": 200.0},
        "less-trak": {"method": "less-trak", "failed": "RuntimeError: vmap"},
        "_runs": [{"methods": "all", "load": [0.5, 1.0], "date": "2026-11-26 08:00"}],
    }
    (work / "results.json").write_text(json.dumps(results))
    text = peers.render(results, _args(), work)
    row = next(ln for ln in text.splitlines() if ln.startswith("| gdig-fp32 |"))
    # 0.5 cand/s with seeds against kronfluence's 0.25: 2.00x; same ranks as kronfluence.
    assert "| 0.50 | 2.00 |" in row and "kf r32: 1.000 / 1.000 / 1.000" in row
    assert "| less-trak | failed: RuntimeError: vmap" in text
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nbefore\n")
    peers.write_section(md, text)
    peers.write_section(md, text.replace("2.00", "9.99"))  # a rerun replaces, keeps the rest
    out = md.read_text()
    assert out.startswith("# Results\n\nbefore\n") and out.count("<!-- peers: start") == 1
    assert "9.99" in out and "| 0.50 | 2.00 |" not in out

    # The tiny LLaMA's table is a section of its own: writing it keeps SmolLM2's.
    results["gdig-fp32"]["layers"] = "2 down_proj layers (64x256)"
    tiny = peers.render(results, _args(model="tiny"), work)
    assert "2 down_proj layers (64x256)" in tiny and "--model tiny" in tiny
    peers.write_section(md, tiny, peers._marker("tiny"))
    both = md.read_text()
    assert both.count("<!-- peers-tiny: start") == 1 and both.count("<!-- peers: start") == 1
    assert "9.99" in both
