"""benchmarks/peers.py's bookkeeping: agreement figures, rates per round, the order put
back after a length-sorted kronfluence run, and the RESULTS.md section (the runs
themselves need SmolLM2 and kronfluence: `make peers`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import harness
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


def test_rates_count_seed_preparation():
    # gdig: 4 candidates in 2 s, 8 seeds in 6 s.
    assert peers.rates({"fit": 1.0, "seeds": 6.0, "score": 2.0}, 4, 8) == (2.0, 0.5, 1.0)
    # Per-example timings on a sample: the S seeds spread over the N candidates.
    score, with_seeds, fit = peers.rates({"score_per_ex": 0.5, "seeds_per_ex": 0.25}, 4, 8)
    assert (score, fit) == (2.0, None) and with_seeds == pytest.approx(1 / (0.5 + 0.25 * 2))
    assert peers.rates({"fit": 3.0, "score+seeds": 8.0}, 4, 8) == (None, 0.5, 3.0)


def test_sorted_run_is_put_back_in_file_order():
    want = np.arange(12.0).reshape(4, 3)  # [N=4, S=3] in file order
    seed_order, cand_order = [2, 0, 1], [3, 1, 0, 2]
    got = want[np.ix_(cand_order, seed_order)].T  # what kronfluence returns: [S', N']
    assert np.array_equal(peers.in_file_order(got, seed_order, cand_order), want)


def test_samples_are_seeded_and_spread():
    a, b = peers.sample(100, 16, seed=1), peers.sample(100, 16, seed=1)
    assert a == b and len(set(a)) == 16 and a != list(range(16))
    assert peers.sample(5, 16, seed=1) == list(range(5))


def _args(**kw) -> argparse.Namespace:
    base = {"seeds": 8, "candidates": 4, "subset": 2, "threads": 1, "batch_size": 2}
    base.update(model="smollm2", exact_seeds=4, official_bq=2, section=None)
    return argparse.Namespace(**{**base, **kw})


def _round(times: dict, peak: float = 100.0) -> dict:
    return {"times": times, "peak_mib": peak, "layers": "2 down_proj layers (64x256)"}


def test_section_gives_medians_spreads_and_ratios_per_round(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    rng = np.random.default_rng(1)
    kf = rng.standard_normal((4, 8)).astype(np.float32)
    np.save(work / "kronfluence-sorted.npy", kf)
    np.save(work / "gdig-fp32.npy", kf * 2)
    results = {
        # score+seeds: 4 / (2 + s) cand/s with seeds 6, 2, 14 s: 0.5, 1.0, 0.25
        "gdig-fp32": {
            "rounds": [
                _round({"fit": f, "seeds": s, "score": 2.0})
                for f, s in [(1.0, 6.0), (2.0, 2.0), (3.0, 14.0)]
            ]
        },
        # kronfluence: 0.25 cand/s in every round
        "kronfluence-sorted": {"rounds": [_round({"fit": 4.0, "score+seeds": 16.0})] * 3},
        "less-trak": {"rounds": [{"failed": "RuntimeError: vmap"}]},
        "_runs": [{"command": "python benchmarks/peers.py", "machine": "Machine: test."}],
    }
    (work / "results.json").write_text(json.dumps(results))
    text = peers.render(results, _args(), work)
    row = next(ln for ln in text.splitlines() if ln.startswith("| gdig-fp32 |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1] == "2.0 (1.0-3.0)"  # fit s
    assert cells[3] == "0.50 (0.25-1.00)"  # score+seeds cand/s
    assert cells[4] == "2.00 (1.00-4.00)"  # x kf sorted, round by round
    assert cells[6] == "3"  # rounds
    assert "kf-sorted r32: 1.000 / 1.000 / 1.000" in cells[8]
    assert "| less-trak | failed: RuntimeError: vmap" in text
    assert "Machine: test." in text
    # A method that never ran is named, not silently missing (less-trak ran and failed).
    absent = (
        "gdig-bf16, gdig-reference-ops, kronfluence-file-order, gdig-official, "
        "paper-batch1-emulation"
    )
    assert f"Not run for this table: {absent}." in text

    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nbefore\n")
    harness.write_section(md, "peers", "peers.py", text)
    harness.write_section(md, "peers", "peers.py", text.replace("2.00 (1.00-4.00)", "9.99"))
    out = md.read_text()
    assert out.startswith("# Results\n\nbefore\n") and out.count("<!-- peers: start") == 1
    assert "9.99" in out and "2.00 (1.00-4.00)" not in out
    # The tiny LLaMA's table is a section of its own: writing it keeps SmolLM2's.
    tiny = peers.render(results, _args(model="tiny"), work)
    harness.write_section(md, peers.marker("tiny"), "peers.py", tiny)
    both = md.read_text()
    assert both.count("<!-- peers-tiny: start") == 1 and both.count("<!-- peers: start") == 1
    assert "9.99" in both
    # --section: a table of its own beside the others, headed by the methods it compares.
    ops = peers.render(results, _args(section="ops"), work)
    assert ops.startswith("## The peers side by side: gdig-fp32, kronfluence-sorted, less-trak")
    assert "Not run for this table" not in ops
    harness.write_section(md, peers.marker("smollm2", "ops"), "peers.py", ops)
    three = md.read_text()
    assert three.count("<!-- peers-ops: start") == 1 and three.count("<!-- peers: start") == 1


def test_machine_line_warns_only_for_load_beyond_the_scripts_own_threads(monkeypatch):
    """The end-of-run load counts the benchmark's own threads; another process's share warns."""
    cores = os.cpu_count() or 1
    loads = iter([0.1 * cores, 0.1 * cores + 2])  # start quiet; at the end, our 2 threads
    monkeypatch.setattr(os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
    assert "WARNING" not in harness.Machine(threads=2).line()
    loads = iter([0.1 * cores, 0.1 * cores + 2 + cores])  # and a whole other job per core
    assert "WARNING" in harness.Machine(threads=2).line()
    loads = iter([cores, 0.0])  # busy when it started
    assert "WARNING" in harness.Machine(threads=2).line()
