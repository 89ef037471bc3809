"""The extension points are tables: a scoring variant and an input format added through
their tables alone run end to end (command options, config check, select, report, noise
metrics, outputs) with nothing else changed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers_models import toy_pairs

import gdig
from gdig.data.formats import FORMATS, InputFormat
from gdig.data.pairs import write_jsonl
from gdig.select.scorings import SCORINGS, Scoring

SIZES = {"factor_samples": 30, "k_in": 4, "k_out": 4, "rank": 4, "batch_size": 4}
FIELDS = ("id", "src", "tgt", "noise")


def _bar_rows(path: Path):
    """A '|'-separated pairs file (id|src|tgt|noise), one pair a line, as records."""
    with open(path, encoding="utf-8") as fh:
        for row, line in enumerate(fh, start=1):
            yield row, {**dict(zip(FIELDS, line.rstrip("\n").split("|"), strict=True)),
                        "src_lang": "de", "tgt_lang": "en"}  # fmt: skip


class _BarReader:
    def __init__(self, path: Path, max_line_bytes: int) -> None:
        self.rows = dict(_bar_rows(path))

    def read(self, where):
        return (self.rows[w] for w in where)

    def close(self) -> None:
        self.rows = {}


BAR = InputFormat(
    "bar",
    "bar-separated pairs",
    (".bar",),
    scan=lambda path, max_line_bytes: ((row, row, rec) for row, rec in _bar_rows(path)),
    reader=_BarReader,
    sniff=lambda path: False,
)
SIGN = Scoring(
    "sign",
    "the sign of each benefit (a test variant)",
    "the share of seeds helped minus the share hurt",
    lambda block, ctx: np.sign(block).astype(np.float32),
)


@pytest.fixture
def tables(monkeypatch):
    monkeypatch.setitem(FORMATS, "bar", BAR)
    monkeypatch.setitem(SCORINGS, "sign", SIGN)


def test_a_new_scoring_and_a_new_format_run_end_to_end(tiny_llama_dir, tmp_path, tables):
    pairs = toy_pairs(36, seed=4)
    seeds = tmp_path / "seeds.jsonl"
    write_jsonl(seeds, [p.to_record() for p in pairs[:5]])
    pool = tmp_path / "pool.bar"
    lines = []
    for i, p in enumerate(pairs[5:]):
        tgt, noise = (p.src, "copy") if i % 4 == 0 else (p.tgt, "clean")
        lines.append(f"{p.id}|{p.src}|{tgt}|{noise}\n")
    pool.write_text("".join(lines), encoding="utf-8")

    run = gdig.run(
        model=tiny_llama_dir, seeds=seeds, pool=pool, out=tmp_path / "run", budget=6,
        scoring="sign", tau=0.5, on_short="fill", label_field="noise", **SIZES,
    )  # fmt: skip

    with open(run.out / "scores.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == [p.id for p in pairs[5:]]  # read through the format
    assert {r["scoring"] for r in rows} == {"sign"}
    for r in rows:  # the mean of signs, from the counts alone
        n_pos, n = int(r["n_pos"]), int(r["n_seeds"])
        assert float(r["benefit_mean"]) == pytest.approx((2 * n_pos - n) / n, abs=1e-6)
    chosen = list(run.selected())
    assert len(chosen) == 6 and {c["noise"] for c in chosen} <= {"copy", "clean"}
    # the report's noise metrics iterate the scoring table: the new variant is there
    noise = run.manifest.stages["report"]["noise"]
    assert {"raw", "sign"} <= set(noise) and 0.0 <= noise["sign"]["auc_neg_benefit_mean"] <= 1
    assert run.options.select.scoring == "sign"
    assert json.loads((run.out / "manifest.json").read_text())["inputs"]["pool"]["sha256"]
