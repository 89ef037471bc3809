"""Bad input through the whole `gdig run`: every problem names file, line and field;
--bad-lines skip lists what it leaves out; over-long pairs are truncated or skipped and
counted; degenerate sizes (one-pair pool, seeds outnumbering the pool) work or say why;
a disk too small for the store stops the run before it starts."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
from helpers_models import toy_pairs

from gdig.cli import main
from gdig.data.pairs import write_jsonl

FAST = ["--no-progress", "--factor-samples", "24", "--k-in", "4", "--k-out", "4", "--rank", "4",
        "--budget", "4", "--tau", "0", "--batch-size", "4"]  # fmt: skip
BAD_LINE = 5  # 1-based line of the pool file that carries the defect

# (name, bad line bytes, field the message must name)
DEFECTS = [
    ("malformed_json", b'{"id": "bad", "src": "haus", "tgt": ', "<line>"),
    ("missing_src", b'{"id": "bad", "tgt": "esuah"}', "src"),
    ("empty_tgt", b'{"id": "bad", "src": "haus", "tgt": "  "}', "tgt"),
    ("non_utf8", b'{"id": "bad", "src": "h\xe4us", "tgt": "esuah"}', "<line>"),
    ("megabyte_line", b'{"id": "bad", "src": "' + b"a" * 2_000_000 + b'", "tgt": "x"}', "<line>"),
    ("duplicate_id", b'{"id": "toy-5", "src": "haus", "tgt": "esuah"}', "id"),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_llama_dir) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    pairs = toy_pairs(26, seed=2)
    write_jsonl(d / "seed.jsonl", pairs[:4])
    write_jsonl(d / "pool.jsonl", pairs[4:])
    return {"dir": d, "model": tiny_llama_dir, "seed": d / "seed.jsonl",
            "pool": d / "pool.jsonl"}  # fmt: skip


def _args(env, out: Path, seed: Path | None = None, pool: Path | None = None) -> list[str]:
    return ["--model", str(env["model"]), "--seeds", str(seed or env["seed"]),
            "--pool", str(pool or env["pool"]), "--out", str(out), *FAST]  # fmt: skip


def _pool_with(env, tmp_path: Path, defects: list[bytes]) -> Path:
    """The pool with the defect lines inserted from line BAD_LINE on."""
    lines = env["pool"].read_bytes().splitlines()
    lines[BAD_LINE - 1 : BAD_LINE - 1] = defects
    path = tmp_path / "pool_bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize(("name", "line", "field"), DEFECTS, ids=[d[0] for d in DEFECTS])
def test_bad_line_stops_with_file_line_field(env, tmp_path, capsys, name, line, field):
    pool = _pool_with(env, tmp_path, [line])
    assert main(["run", *_args(env, tmp_path / "run", pool=pool)]) == 2
    err = capsys.readouterr().err
    assert f"{pool}:{BAD_LINE}: field '{field}'" in err, err
    assert len(err) < 2000  # the megabyte line is not echoed back


def test_skip_policy_lists_every_skipped_line(env, tmp_path, caplog):
    pool = _pool_with(env, tmp_path, [d[1] for d in DEFECTS])
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="gdig"):
        assert main(["run", *_args(env, out, pool=pool), "--bad-lines", "skip"]) == 0
    skipped = [json.loads(x) for x in (out / "skipped_lines.jsonl").read_text().splitlines()]
    assert [(s["line"], s["field"]) for s in skipped] == [
        (BAD_LINE + i, d[2]) for i, d in enumerate(DEFECTS)
    ]
    assert all(s["file"] == str(pool) for s in skipped)
    with open(out / "scores.csv", encoding="utf-8") as fh:
        ids = [r["id"] for r in csv.DictReader(fh)]
    assert ids == [json.loads(x)["id"] for x in env["pool"].read_text().splitlines()]
    assert "skipped 6 bad line(s)" in caplog.text
    manifest = json.loads((out / "manifest.json").read_text())
    assert any("skipped 6 bad line(s)" in w for w in manifest["warnings"])
    assert manifest["input_checks"]["skipped_lines"] == {"seeds": 0, "pool": 6}


def _long_pool(env, tmp_path: Path) -> tuple[Path, list[str]]:
    recs = [json.loads(x) for x in env["pool"].read_text().splitlines()]
    long_ids = []
    for rec in recs[2:5]:
        rec["tgt"] = "sehr lange uebersetzung " * 20  # ~480 byte tokens
        long_ids.append(rec["id"])
    path = tmp_path / "pool_long.jsonl"
    write_jsonl(path, recs)
    return path, long_ids


def test_too_long_pairs_are_truncated_and_counted(env, tmp_path, caplog):
    pool, long_ids = _long_pool(env, tmp_path)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="gdig"):
        assert main(["run", *_args(env, out, pool=pool), "--max-length", "96"]) == 0
    too_long = json.loads((out / "manifest.json").read_text())["input_checks"]["too_long"]
    assert too_long["policy"] == "truncate" and too_long["max_length"] == 96
    assert too_long["truncated"] == {"seeds": 0, "pool": len(long_ids)}
    assert "3 pool and 0 seed pair(s) exceed --max-length 96" in caplog.text
    assert len((out / "scores.csv").read_text().splitlines()) == 1 + 22  # all kept


def test_too_long_pairs_are_skipped_and_listed(env, tmp_path):
    pool, long_ids = _long_pool(env, tmp_path)
    out = tmp_path / "run"
    args = [*_args(env, out, pool=pool), "--max-length", "96", "--too-long", "skip"]
    assert main(["run", *args]) == 0
    skipped = [json.loads(x) for x in (out / "skipped_lines.jsonl").read_text().splitlines()]
    assert [s["id"] for s in skipped] == long_ids
    assert [s["line"] for s in skipped] == [3, 4, 5]
    assert all("tokens > max_length 96" in s["reason"] for s in skipped)
    too_long = json.loads((out / "manifest.json").read_text())["input_checks"]["too_long"]
    assert too_long["skipped"] == {"seeds": 0, "pool": 3}
    with open(out / "scores.csv", encoding="utf-8") as fh:
        ids = [r["id"] for r in csv.DictReader(fh)]
    assert len(ids) == 19 and not set(ids) & set(long_ids)


def test_max_length_beyond_model_context_is_refused(env, tmp_path, capsys):
    assert main(["run", *_args(env, tmp_path / "run"), "--max-length", "4096"]) == 2
    err = capsys.readouterr().err
    assert "--max-length 4096 exceeds the model's context of 512 tokens" in err


def test_one_pair_pool_and_more_seeds_than_pool(env, tmp_path, caplog):
    pool = tmp_path / "one.jsonl"
    pool.write_text(env["pool"].read_text().splitlines()[0] + "\n")
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="gdig"):
        assert main(["run", *_args(env, out, pool=pool), "--budget", "1"]) == 0
    assert "seed set" in caplog.text and "4 pairs) is larger than the pool" in caplog.text
    assert len((out / "selected.jsonl").read_text().splitlines()) == 1


def test_budget_over_one_pair_pool_says_why(env, tmp_path, capsys):
    pool = tmp_path / "one.jsonl"
    pool.write_text(env["pool"].read_text().splitlines()[0] + "\n")
    assert main(["run", *_args(env, tmp_path / "run", pool=pool), "--budget", "3"]) == 2
    err = capsys.readouterr().err
    assert "--budget 3 is larger than the pool" in err and "1 pairs" in err


def test_too_little_disk_stops_before_any_model_pass(env, tmp_path, capsys, monkeypatch):
    import shutil as shutil_mod
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_mod, "disk_usage", lambda _p: usage(10 << 30, 10 << 30, 1 << 20))
    out = tmp_path / "run"
    assert main(["run", *_args(env, out)]) == 1  # a failure while running, not bad input
    err = capsys.readouterr().err
    assert "1.0 MiB free but this run needs about" in err and "gradient store" in err
    assert not (out / "factors.safetensors").exists() and not (out / "store").exists()
