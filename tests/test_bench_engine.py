"""benchmarks/bench_engine.py's tables from per-round times: ratios taken round by round,
the targets read from the medians, and a precision left out (``--precisions fp32``) shown
as not run rather than as a figure (the timed runs themselves: `make bench`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_engine

ARGS = argparse.Namespace(fit=8, candidates=8, threads=2, seeds=4, batch_size=4, repeats=3)
CEILINGS = {"shape": (2, 3, 4), "repeats": 1, "float32": 100.0, "bfloat16": 50.0}


def result(times: dict[str, list[float]], agree: dict | None) -> dict:
    fit = {p: (f"fit-{p}", f"train-{p}") for p in ("fp32", "bf16") if f"fit-{p}" in times}
    return {"name": "toy", "n": 8, "n_fit": 8, "times": times, "fit": fit, "agree": agree}


def rows(text: str, first: str) -> list[str]:
    """The cells of the table row of model 'toy' under the header starting with ``first``."""
    lines = text.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith(f"| model | {first}"))
    row = lines[start + 2]
    assert row.startswith("| toy |")
    return [c.strip() for c in row.strip("|").split("|")][1:]


def test_both_precisions_paired_ratios_and_targets():
    # Round by round, scoring fp32 takes half the training time: 2.00x in every round,
    # although the rounds' speeds differ; bf16 scoring also takes half of fp32 training: 2.00x,
    # under the 2.5x target.
    times = {
        "train-fp32": [4.0, 8.0, 2.0],
        "score-fp32": [2.0, 4.0, 1.0],
        "train-bf16": [8.0, 8.0, 8.0],
        "score-bf16": [2.0, 4.0, 1.0],
        "fit-fp32": [4.0, 8.0, 1.0],
        "fit-bf16": [8.0, 8.0, 8.0],
    }
    agree = {"spearman_mean": 0.99, "sign_agree": 0.98, "rel_err": 0.04}
    text = bench_engine.render(ARGS, [result(times, agree)], "Machine: test.", CEILINGS)
    cells = rows(text, "train-fp32")
    assert cells[0] == "2.00 (1.00-4.00)"  # train-fp32 cand/s: 8 candidates / [4, 8, 2] s
    assert cells[4] == "2.00 (2.00-2.00)"  # score-fp32 / train-fp32, paired per round
    assert cells[7] == "0.990 / 0.980 / 0.040"
    fit = rows(text, "fit-fp32")
    assert fit[2] == "1.00 (0.50-1.00)"  # fit / train fp32, per round: 1, 1, 0.5
    assert "score-fp32 >= 1.3x train-fp32 (2.00) met" in text
    assert "score-bf16 >= 2.5x train-fp32 (2.00) MISSED" in text
    assert "fit s/ex <= train s/ex, fp32 (1.00) met" in text
    assert "not run" not in text


def test_fp32_only_says_not_run_and_reads_no_bf16_target():
    times = {
        "train-fp32": [4.0, 4.0, 4.0],
        "score-fp32": [4.0, 4.0, 4.0],
        "fit-fp32": [8.0, 8.0, 8.0],
    }
    text = bench_engine.render(ARGS, [result(times, None)], "Machine: test.", CEILINGS)
    cells = rows(text, "train-fp32")
    assert cells[1] == cells[3] == "not run"  # train-bf16, score-bf16
    assert cells[4] == "1.00 (1.00-1.00)" and cells[5] == cells[6] == cells[7] == "not run"
    fit = rows(text, "fit-fp32")
    assert fit[2] == "2.00 (2.00-2.00)" and fit[3:] == ["not run"] * 3
    assert "score-fp32 >= 1.3x train-fp32 (1.00) MISSED" in text
    assert "score-bf16 >= 2.5x train-fp32 not run" in text
    assert "fit s/ex <= train s/ex, fp32 (2.00) MISSED" in text
