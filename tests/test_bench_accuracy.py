"""benchmarks/accuracy.py's bookkeeping: how a setting's benefits are compared with an exact
reference (the runs themselves need SmolLM2 and kronfluence: `make peers`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import accuracy


def _case(n: int = 40, s: int = 10):
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((n, s)) + 0.8  # most pairs positive: some candidates pass
    feats = rng.standard_normal((n, 6)).astype(np.float32)
    return ref, feats


def test_identical_benefits_agree_everywhere():
    ref, feats = _case()
    got = accuracy.compare(2.0 * ref, ref, feats)  # a positive scale changes no rank or sign
    assert got == pytest.approx(
        {"spearman": 1.0, "sign": 1.0, "top10": 1.0, "n_pos_equal": 1.0, "pass_equal": 1.0,
         "selection": 1.0}
    )  # fmt: skip


def test_flipped_signs_count_against_every_measure():
    ref, feats = _case()
    got = accuracy.compare(-ref, ref, feats)
    assert got["spearman"] == pytest.approx(-1.0) and got["sign"] == 0.0
    assert got["top10"] == 0.0 and got["n_pos_equal"] < 0.2


def test_n_pos_and_pass_follow_the_filter_at_tau():
    ref, feats = _case(n=4, s=10)
    ref[:] = 1.0
    got = ref.copy()
    got[0, :2] = -1.0  # 8 of 10 positive: n_pos differs, and 8 < ceil(0.9 * 10) fails
    got[1, 0] = -1.0  # 9 of 10: n_pos differs, still passes
    a = accuracy.compare(got, ref, feats)
    assert a["n_pos_equal"] == 0.5 and a["pass_equal"] == 0.75


def test_cost_cells_are_medians_of_the_timed_rounds_with_their_spread():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(8, 4))
    feats = rng.normal(size=(8, 5)).astype(np.float32)
    base = accuracy.Row("r = 32", ref, None, feats, 10.0, [4.0, 2.0, 3.0], [8.0, 6.0, 7.0], 1.0)
    wide = accuracy.Row("r = 64", ref, None, feats, 10.0, [5.0, 5.0, 6.0], [9.0, 7.0, 14.0], 2.0)
    args = argparse.Namespace(seeds=4, candidates=8, argv=["--seeds", "4"])
    table = accuracy.render([base, wide], {"exact": ref}, args, "machine")
    row64 = next(line for line in table.splitlines() if line.startswith("| r = 64"))
    cells = [c.strip() for c in row64.strip("|").split("|")]
    # s/seed: median 5/4 of (5, 5, 6)/4; cand/s: 8/9 from the median 9 s, spread 8/14-8/7
    assert cells[3] == "1.250 (1.250-1.500)"
    assert cells[4] == "0.89 (0.57-1.14)"
    assert cells[5] == f"{9.0 / 7.0:.2f}"  # score time against r = 32's medians
    assert cells[7] == f"{(10 + 5 + 9) / (10 + 3 + 7):.2f}"  # end to end, medians
