"""The input-format table: every format reads the same pairs, a saved Hugging Face dataset
is a pool (read with pyarrow alone) and a selection can be written back as one."""

from __future__ import annotations

import json

import pytest

from gdig.data.formats import FORMATS, format_from_name, formats_text, input_files, sniff
from gdig.data.hfdataset import write_dataset
from gdig.data.pair import PairsError
from gdig.data.pairs import read_pairs, write_jsonl
from gdig.data.pool import open_pool
from gdig.io.errors import UsageError


def _records(n: int = 30) -> list[dict]:
    return [
        {
            "id": f"p{i}",
            "src": f"源 {i}",
            "tgt": f"target {i}",
            "src_lang": "zh",
            "tgt_lang": "en",
            "noise": "clean" if i % 3 else "swap",
            **({"score": i / 7} if i % 2 else {}),  # a field only some records have
        }
        for i in range(n)
    ]


def test_every_writable_format_reads_back_the_same_pairs(tmp_path):
    want = read_pairs(_jsonl(tmp_path, _records()))
    for name, fmt in FORMATS.items():
        if fmt.write is None:
            continue
        path = tmp_path / ("as_" + name + (fmt.suffixes[0] if fmt.suffixes else ""))
        assert fmt.write(path, [p.to_record() for p in want]) == len(want)
        assert (format_from_name(path) or sniff(path)) is fmt
        got = read_pairs(path)
        # a field missing from a record reads back as null from a table: compare the rest
        assert [p.id for p in got] == [p.id for p in want], name
        assert [(p.src, p.tgt, p.src_lang, p.extra["noise"]) for p in got] == [
            (p.src, p.tgt, p.src_lang, p.extra["noise"]) for p in want
        ], name
        pool = open_pool(path)
        assert pool.take([29, 3, 3]) == [got[29], got[3], got[3]], name
        assert list(pool.ids()) == [p.id for p in want], name


def _jsonl(tmp_path, recs):
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, recs)
    return path


def test_a_dataset_saved_by_datasets_is_a_pool(tmp_path):
    datasets = pytest.importorskip("datasets")
    recs = _records(12)
    folder = tmp_path / "ds"
    datasets.Dataset.from_list(recs).save_to_disk(str(folder))
    assert sniff(folder) is FORMATS["hf"] and format_from_name(folder) is None
    pool = open_pool(folder)
    assert [p.to_record()["noise"] for p in pool] == [r["noise"] for r in recs]
    assert pool.take([5])[0].src == recs[5]["src"] and pool.lines[5] == 6  # rows from 1
    # its identity is its files' content: the same rows saved again elsewhere are equal
    assert [f.name for f in input_files(folder)] == sorted(
        p.name for p in folder.iterdir() if not p.name.startswith(".")
    )


def test_a_written_dataset_opens_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    recs = _records(9)
    folder = tmp_path / "selected"
    write_dataset(folder, recs)
    ds = datasets.load_from_disk(str(folder))
    assert ds.num_rows == 9 and ds[4]["id"] == "p4" and ds[4]["noise"] == recs[4]["noise"]
    assert ds[1]["score"] == pytest.approx(1 / 7) and ds[0]["score"] is None
    write_dataset(folder, recs[:2])  # a dataset folder is replaced whole
    assert datasets.load_from_disk(str(folder)).num_rows == 2


def test_folders_that_are_not_one_dataset_are_named(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.jsonl").write_text("{}\n")
    with pytest.raises(PairsError, match="is a folder; give a file of pairs"):
        open_pool(plain)
    splits = tmp_path / "dd"
    write_dataset(splits / "train", _records(3))
    (splits / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    with pytest.raises(UsageError, match=r"a DatasetDict \(splits: train\); give the folder"):
        open_pool(splits)
    with pytest.raises(UsageError, match="exists and is not a saved dataset"):
        write_dataset(plain, _records(1))


def test_help_text_names_every_format():
    text = formats_text()
    for fmt in FORMATS.values():
        assert fmt.label in text
