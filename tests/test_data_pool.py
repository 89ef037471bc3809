"""The streamed pool (gdig.data.pool): the same pairs, errors and skips as read_pairs for
every format, read back by seeking, and a whole run on a Parquet pool keeping every
field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from helpers_models import toy_pairs

from gdig.cli import main
from gdig.data.examples import ExampleList, as_examples
from gdig.data.pair import Pair, PairsError
from gdig.data.pairs import read_pairs, write_jsonl
from gdig.data.pool import open_pool

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

N = 2600  # more than two read-back blocks (1024)


def _records() -> list[dict]:
    recs = [
        {"id": f"p{i}", "src": f"源 {i}", "tgt": f"target {i}", "noise": ["clean", "x"][i % 3 == 0]}
        for i in range(N)
    ]
    recs.insert(7, {"id": "p3", "src": "again", "tgt": "again", "noise": "clean"})  # repeat
    return recs


def _clean() -> list[dict]:
    return [r for r in _records() if r["src"] != "again"]


def _write(path: Path, recs: list[dict], bad_tail: bool = True) -> Path:
    name = path.name
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(recs), path, row_group_size=700)
    elif name.endswith(".tsv"):
        with open(path, "w", encoding="utf-8") as f:
            f.write("src\ttgt\tid\tnoise\n")
            for r in recs:
                f.write(f"{r['src']}\t{r['tgt']}\t{r['id']}\t{r['noise']}\n")
            if bad_tail:
                f.write("only one column\n")
    else:
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "wt", encoding="utf-8") as f:
            for r in recs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            if bad_tail:
                f.write("\n{not json\n")
    return path


@pytest.mark.parametrize("name", ["pool.jsonl", "pool.jsonl.gz", "pool.tsv", "pool.parquet"])
def test_pool_matches_read_pairs(tmp_path, name):
    path = _write(tmp_path / name, _records(), bad_tail=not name.endswith(".parquet"))
    skips_list, skips_pool = [], []
    want = read_pairs(path, bad_lines="skip", skipped=skips_list)
    pool = open_pool(path, bad_lines="skip", skipped=skips_pool)
    assert len(pool) == len(want) == N
    assert list(pool) == want  # every field, in file order
    assert [p.line for p in pool] == [p.line for p in want]
    assert [p.to_record() for p in pool] == [p.to_record() for p in want]
    assert skips_pool == skips_list  # same records, in line order
    assert any("duplicate id 'p3'" in s["reason"] for s in skips_pool)
    rows = [N - 1, 5, 5, 0, 1500, 1024]
    assert pool.take(rows) == [want[r] for r in rows]
    assert as_examples(pool) is pool  # a pool is already what the engine reads
    assert ExampleList(want).take(rows) == pool.take(rows)
    assert pool[-1] == want[-1] and pool[1023:1026] == want[1023:1026]
    assert pool.id(10) == want[10].id and list(pool.ids()) == [p.id for p in want]
    got = pool.rows_of(["p8", "nope", "p3"])
    assert got.tolist() == [[p.id for p in want].index("p8"), -1, 3]
    half = pool.subset(np.arange(N) % 2 == 0)
    assert list(half) == want[::2]


@pytest.mark.parametrize("name", ["pool.jsonl", "pool.parquet"])
def test_repeated_id_is_an_error_naming_both_lines(tmp_path, name):
    path = _write(tmp_path / name, _records(), bad_tail=False)
    with pytest.raises(PairsError) as err:
        open_pool(path)
    assert str(err.value).startswith(f"{path}:8: field 'id': duplicate id 'p3' (first on line 4")


def test_changed_file_is_named_not_misread(tmp_path):
    path = _write(tmp_path / "pool.jsonl", _clean()[:50], bad_tail=False)
    pool = open_pool(path)
    text = path.read_text(encoding="utf-8").replace('"p20"', '"q20"')
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PairsError, match="changed while gdig was using it"):
        pool.take([20])


def test_parquet_without_extension_is_sniffed(tmp_path):
    path = _write(tmp_path / "pool.parquet", _clean()[:20], bad_tail=False)
    bare = path.rename(tmp_path / "pool.data")
    assert [p.id for p in open_pool(bare)] == [r["id"] for r in _clean()[:20]]


def test_run_on_a_parquet_pool_keeps_every_field(tiny_llama_dir, tmp_path):
    pairs = toy_pairs(48, seed=3)
    seeds = tmp_path / "seeds.jsonl"
    write_jsonl(seeds, [p.to_record() for p in pairs[:6]])
    recs = [
        dict(p.to_record(), noise="clean" if i % 4 else "untranslated", score=i / 7, tag=[i])
        for i, p in enumerate(pairs[6:])
    ]
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(recs), pool, row_group_size=9)
    out = tmp_path / "run"
    args = ["--model", str(tiny_llama_dir), "--seeds", str(seeds), "--pool", str(pool),
            "--out", str(out), "--no-progress", "--factor-samples", "40", "--k-in", "4",
            "--k-out", "4", "--rank", "4", "--budget", "10", "--tau", "0.5", "--on-short",
            "fill", "--label-field", "noise"]  # fmt: skip
    assert main(["run", *args]) == 0
    chosen = [json.loads(x) for x in (out / "selected.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in recs}
    assert len(chosen) == 10
    for rec in chosen:
        assert {k: rec[k] for k in by_id[rec["id"]]} == by_id[rec["id"]]
    assert "untranslated" in (out / "report.html").read_text(encoding="utf-8")


def test_the_index_holds_a_few_numbers_a_pair(tmp_path):
    import tracemalloc

    path = tmp_path / "pool.jsonl"
    n = 20_000
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):  # ~250 bytes of text a pair, ids of 12 characters
            src, tgt = "这是一个用来测试的句子。" * 4, "A sentence that is here to be tested. " * 3
            rec = {"id": f"pair-{i:07d}", "src": src, "tgt": tgt, "noise": "clean"}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    open_pool(_write(tmp_path / "warm.jsonl", _clean()[:5], bad_tail=False))  # imports
    tracemalloc.start()
    pool = open_pool(path)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(pool) == n
    # id (12 B) + id start, line and offset (8 B each) = 36 B; the pairs themselves ~900 B
    assert held / n < 60, held / n
    assert peak / n < 120, peak / n  # + the 64-bit hashes of the duplicate check


def test_example_list_ids_are_distinct():
    pairs = [Pair(i, "src", "tgt") for i in ("a", "b", "a")]
    with pytest.raises(ValueError, match="not unique: 'a' occurs twice"):
        ExampleList(pairs)
    ids = ExampleList(pairs[:2]).ids()
    assert list(ids) == ["a", "b"]
