"""gdig.data: reading/writing pairs (every error path) and the demo data set."""

from __future__ import annotations

import gzip
import json
import pickle
import re
from pathlib import Path

import pytest
from helpers_models import data_dir

import gdig.data.demo
from gdig.data import Pair, PairsError, demo_paths, iter_pairs, read_pairs, write_jsonl
from gdig.data.build_demo import NOISE_KINDS, DemoConfig, DemoError, build_demo, main
from gdig.data.checks import compare_seeds_pool
from gdig.data.labels import check_label_field, is_noise
from gdig.data.pairs import FILE_FIELD, LINE_FIELD
from gdig.io.errors import GdigError, UsageError

TATOEBA = data_dir() / "tatoeba.zh-en.jsonl"
CJK = re.compile(r"[\u4e00-\u9fff]")


def _jsonl(path: Path, *objs) -> Path:
    """Write objects (dicts, or raw str lines as they are) one a line."""
    lines = [o if isinstance(o, str) else json.dumps(o, ensure_ascii=False) for o in objs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rec(i: int, **kw) -> dict:
    return {"id": f"p{i}", "src": f"源{i}", "tgt": f"target {i}", **kw}


# --- reading JSONL ---------------------------------------------------------------------------


def test_jsonl_fields_ids_and_extra_round_trip(tmp_path):
    recs = [
        {
            "id": "a",
            "src_lang": "zh",
            "tgt_lang": "en",
            "src": "你好",
            "tgt": "Hello",
            "noise": "x",
        },
        {"src": "再见", "tgt": "Bye", "score": 0.5, "meta": {"k": [1, 2]}},
        {"id": 7, "src": "谢谢", "tgt": "Thanks"},
    ]
    path = _jsonl(tmp_path / "mine.jsonl", recs[0], "", recs[1], "   ", recs[2])
    pairs = read_pairs(path)
    assert [p.id for p in pairs] == [
        "a",
        "mine-3",
        "7",
    ]  # missing id -> stem-line, blank lines count
    assert pairs[0].src_lang == "zh" and pairs[0].tgt_lang == "en"
    assert pairs[1].src_lang is None
    assert pairs[0].extra == {"noise": "x"}
    assert pairs[1].extra == {"score": 0.5, "meta": {"k": [1, 2]}}
    assert pairs[0].to_record() == recs[0]

    out = tmp_path / "sub" / "out.jsonl"
    assert write_jsonl(out, pairs) == 3
    again = read_pairs(out)
    assert again == pairs
    assert [p.to_record() for p in again] == [p.to_record() for p in pairs]


def test_crlf_bom_gz_and_unknown_extension(tmp_path):
    body = "\ufeff" + json.dumps(_rec(1)) + "\r\n" + json.dumps(_rec(2)) + "\r\n"
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(body.encode("utf-8"))
    assert [(p.id, p.tgt) for p in read_pairs(crlf)] == [("p1", "target 1"), ("p2", "target 2")]

    gz = tmp_path / "pool.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"src": "一", "tgt": "one"}) + "\n")
    assert read_pairs(gz)[0].id == "pool-1"

    sniff_json = _jsonl(tmp_path / "data.txt", _rec(1))
    assert read_pairs(sniff_json)[0].id == "p1"
    sniff_tsv = tmp_path / "data2.txt"
    sniff_tsv.write_text("一\tone\n", encoding="utf-8")
    assert read_pairs(sniff_tsv)[0].tgt == "one"


def test_iter_pairs_streams_before_a_later_error(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", _rec(1), "{broken")
    it = iter_pairs(path)
    assert next(it).id == "p1"  # the good line arrives before the bad one is even read
    with pytest.raises(PairsError, match=r":2: "):
        next(it)


# --- every error path names file, line and field ----------------------------------------------

_BAD_JSONL_CASES = {
    "malformed_json": ('{"src": "a", "tgt": ', 2, LINE_FIELD, "malformed JSON"),
    "non_object": ('["a", "b"]', 2, LINE_FIELD, "expected a JSON object"),
    "missing_src": ({"tgt": "x"}, 2, "src", "missing"),
    "missing_tgt": ({"src": "x"}, 2, "tgt", "missing"),
    "empty_src": ({"src": "  ", "tgt": "x"}, 2, "src", "empty"),
    "empty_tgt": ({"src": "x", "tgt": ""}, 2, "tgt", "empty"),
    "non_string_src": ({"src": ["x"], "tgt": "y"}, 2, "src", "expected a string"),
    "non_string_tgt": ({"src": "x", "tgt": 3}, 2, "tgt", "expected a string"),
    "null_tgt": ({"src": "x", "tgt": None}, 2, "tgt", "expected a string"),
    "bad_id": ({"id": "", "src": "x", "tgt": "y"}, 2, "id", "non-empty string"),
    "bad_lang": ({"src": "x", "tgt": "y", "tgt_lang": 5}, 2, "tgt_lang", "expected a string"),
}


@pytest.mark.parametrize("case", sorted(_BAD_JSONL_CASES))
def test_jsonl_errors_name_file_line_field(tmp_path, case):
    bad, line, field_name, what = _BAD_JSONL_CASES[case]
    path = _jsonl(tmp_path / "in.jsonl", _rec(1), bad, _rec(3))
    with pytest.raises(PairsError) as exc:
        read_pairs(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}:{line}: field '{field_name}': ")
    assert what in msg
    assert ";" in msg.split(what, 1)[1]  # followed by what to do
    assert isinstance(exc.value, ValueError)
    assert (exc.value.line, exc.value.field) == (line, field_name)


def test_non_utf8_line_number(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(_rec(1)).encode()
    bad = '{"src": "caf\u00e9", "tgt": "x"}'.encode("latin-1")
    path.write_bytes(good + b"\n\n" + bad + b"\n" + json.dumps(_rec(4)).encode() + b"\n")
    with pytest.raises(PairsError, match=rf"^{re.escape(str(path))}:3: field '<line>': not valid"):
        read_pairs(path)


def test_line_too_long(tmp_path):
    long = json.dumps({"src": "x" * 500, "tgt": "y"})
    path = _jsonl(tmp_path / "long.jsonl", _rec(1), long, _rec(3))
    with pytest.raises(
        PairsError, match=r":2: field '<line>': line longer than max_line_bytes=100"
    ):
        read_pairs(path, max_line_bytes=100)
    skipped: list = []
    pairs = read_pairs(path, max_line_bytes=100, bad_lines="skip", skipped=skipped)
    assert [p.id for p in pairs] == [
        "p1",
        "p3",
    ]  # the rest of the long line is drained, not misread
    assert [s["line"] for s in skipped] == [2]
    assert len(read_pairs(path)) == 3  # default limit is generous


def test_duplicate_id_names_both_lines(tmp_path):
    path = _jsonl(tmp_path / "dup.jsonl", _rec(1), _rec(2), _rec(1, tgt="again"))
    with pytest.raises(PairsError) as exc:
        read_pairs(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}:3: field 'id': duplicate id 'p1'")
    assert "line 1" in msg and "line 3" in msg


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(
        PairsError, match=rf"^{re.escape(str(path))}:0: field '{FILE_FIELD}': no pairs"
    ):
        read_pairs(path)


def test_json_array_file_gets_a_hint(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([_rec(1), _rec(2)]), encoding="utf-8")
    with pytest.raises(PairsError, match=r":1: field '<line>': this looks like a JSON array"):
        read_pairs(path)


def test_bad_arguments(tmp_path):
    path = _jsonl(tmp_path / "ok.jsonl", _rec(1))
    with pytest.raises(ValueError, match="bad_lines='ignore'"):
        read_pairs(path, bad_lines="ignore")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_pairs(tmp_path / "nope.jsonl")
    unknown = tmp_path / "plain.txt"
    unknown.write_text("just words\n", encoding="utf-8")
    with pytest.raises(PairsError, match="cannot tell the format"):
        read_pairs(unknown)


# --- skip policy --------------------------------------------------------------------------------


def test_skip_records_every_bad_line_and_keeps_first_duplicate(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps(_rec(1)).encode(),
        b"{not json",
        json.dumps({"src": "x"}).encode(),
        b"\xff\xfe bad bytes",
        json.dumps(_rec(1, tgt="second copy")).encode(),
        json.dumps(_rec(6)).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    skipped: list = []
    pairs = read_pairs(path, bad_lines="skip", skipped=skipped)
    assert [(p.id, p.tgt) for p in pairs] == [("p1", "target 1"), ("p6", "target 6")]
    assert [(s["line"], s["field"]) for s in skipped] == [
        (2, LINE_FIELD),
        (3, "tgt"),
        (4, LINE_FIELD),
        (5, "id"),
    ]
    assert all(s["file"] == str(path) and s["reason"] for s in skipped)
    assert "first on line 1" in skipped[3]["reason"]


def test_skip_without_list_warns_and_all_bad_still_errors(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", _rec(1), "oops")
    with pytest.warns(UserWarning, match=r"skipped 1 bad lines.*:2: field '<line>'"):
        assert len(read_pairs(path, bad_lines="skip")) == 1
    all_bad = _jsonl(tmp_path / "bad.jsonl", "oops", "[]")
    skipped: list = []
    with pytest.raises(PairsError, match=r"no pairs \(2 bad lines skipped\)"):
        read_pairs(all_bad, bad_lines="skip", skipped=skipped)
    assert len(skipped) == 2


# --- TSV ------------------------------------------------------------------------------------------


def test_tsv_without_header(tmp_path):
    path = tmp_path / "plain.tsv"
    path.write_text("你好\tHello\n\n再见\tBye\tbye-1\n谢谢\tThanks\t\n", encoding="utf-8")
    pairs = read_pairs(path)
    assert [(p.id, p.src, p.tgt) for p in pairs] == [
        ("plain-1", "你好", "Hello"),
        ("bye-1", "再见", "Bye"),
        ("plain-4", "谢谢", "Thanks"),
    ]
    assert all(p.extra == {} and p.src_lang is None for p in pairs)


def test_tsv_with_header_names_columns(tmp_path):
    path = tmp_path / "head.tsv"
    path.write_text(
        "SRC\tTgt\tid\ttgt_lang\tdomain\n你好\tHello\th1\ten\tchat\n再见\tBye\th2\ten\tchat\n",
        encoding="utf-8",
    )
    pairs = read_pairs(path)
    assert [p.id for p in pairs] == ["h1", "h2"]
    assert pairs[0].tgt_lang == "en" and pairs[0].extra == {"domain": "chat"}
    assert pairs[1].to_record() == {
        "id": "h2",
        "tgt_lang": "en",
        "src": "再见",
        "tgt": "Bye",
        "domain": "chat",
    }
    # the header is line 1: a missing id on line 2 gives <stem>-2
    short = tmp_path / "h.tsv"
    short.write_text("src\ttgt\n一\tone\n", encoding="utf-8")
    assert read_pairs(short)[0].id == "h-2"


@pytest.mark.parametrize(
    ("body", "line", "field_name", "what"),
    [
        ("a\tb\nno tab here\n", 2, "tgt", "missing"),
        ("a\tb\na\tb\tc\td\n", 2, LINE_FIELD, "4 tab-separated columns, expected 2 or 3"),
        ("a\tb\n\t x\n", 2, "src", "empty"),
        ("src\ttgt\tid\na\tb\n", 2, LINE_FIELD, "the header has 3"),
        ("src\ttgt\tsrc\na\tb\tc\n", 1, LINE_FIELD, "empty or repeated"),
        ("a\tb\tk\nc\td\tk\n", 2, "id", "duplicate id 'k'"),
    ],
)
def test_tsv_errors(tmp_path, body, line, field_name, what):
    path = tmp_path / "bad.tsv"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(PairsError) as exc:
        read_pairs(path)
    assert str(exc.value).startswith(f"{path}:{line}: field '{field_name}': ")
    assert what in str(exc.value)


# --- writing --------------------------------------------------------------------------------------


def test_write_jsonl_is_atomic(tmp_path):
    out = tmp_path / "out.jsonl"
    write_jsonl(out, [{"a": 1}])

    def records():
        yield {"a": 2}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(out, records())
    assert out.read_text(encoding="utf-8") == '{"a": 1}\n'  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no temp left
    write_jsonl(out, [Pair(id="x", src="中", tgt="mid")])
    assert out.read_text(encoding="utf-8") == '{"id": "x", "src": "中", "tgt": "mid"}\n'


# --- error family -----------------------------------------------------------------------------


def test_pairs_error_is_a_usage_error(tmp_path):
    path = _jsonl(tmp_path / "u.jsonl", _rec(1), {"src": "x"})
    with pytest.raises(UsageError) as exc:
        read_pairs(path)
    err = exc.value
    assert isinstance(err, PairsError) and isinstance(err, GdigError)
    assert isinstance(err, ValueError) and err.exit_status == 2
    assert str(err).startswith(f"{path}:2: field 'tgt': missing; fields found: src;")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is PairsError and str(again) == str(err)
    assert (again.path, again.line, again.field) == (str(path), 2, "tgt")


# --- other field names and default languages ----------------------------------------------------


def test_src_tgt_field_names_read_and_written_back(tmp_path):
    recs = [
        {"id": "a", "source": "你好", "target": "Hello", "src": "kept as extra"},
        {"source": "再见", "target": "Bye", "noise": "clean"},
    ]
    path = _jsonl(tmp_path / "st.jsonl", *recs)
    pairs = read_pairs(path, src_field="source", tgt_field="target")
    assert [(p.src, p.tgt) for p in pairs] == [("你好", "Hello"), ("再见", "Bye")]
    assert pairs[0].extra == {"src": "kept as extra"}  # not a text field under these names
    assert pairs[1].extra == {"noise": "clean"}
    # written back under the input's names: no src/tgt added, nothing lost
    assert pairs[0].to_record() == recs[0]
    assert pairs[1].to_record() == {"id": "st-2", **recs[1]}
    out = tmp_path / "out.jsonl"
    write_jsonl(out, pairs)
    written = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert all("target" in r and "tgt" not in r for r in written)
    again = read_pairs(out, src_field="source", tgt_field="target")
    assert again == pairs
    assert [p.to_record() for p in again] == [p.to_record() for p in pairs]
    # the same content read under the default names is the same pair (names are not identity)
    plain = Pair(id="st-2", src="再见", tgt="Bye", extra={"noise": "clean"})
    assert plain == pairs[1] and plain.to_record()["src"] == "再见"


def test_missing_text_field_lists_the_fields_found(tmp_path):
    path = _jsonl(tmp_path / "st.jsonl", {"source": "你好", "target": "Hello", "id": "x1"})
    with pytest.raises(PairsError) as exc:
        read_pairs(path)  # default names: src/tgt
    msg = str(exc.value)
    assert msg.startswith(f"{path}:1: field 'src': missing; fields found: source, target, id;")
    assert "--src-field" in msg
    assert (exc.value.line, exc.value.field) == (1, "src")

    path2 = _jsonl(tmp_path / "half.jsonl", {"source": "a", "target": "b"}, {"source": "c"})
    with pytest.raises(PairsError) as exc:
        read_pairs(path2, src_field="source", tgt_field="target")
    msg = str(exc.value)
    assert msg.startswith(f"{path2}:2: field 'target': missing; fields found: source;")
    assert "--tgt-field" in msg
    # other errors name the field as the input calls it
    path3 = _jsonl(tmp_path / "e.jsonl", {"source": " ", "target": "b"})
    with pytest.raises(PairsError, match=r":1: field 'source': empty"):
        read_pairs(path3, src_field="source", tgt_field="target")
    path4 = _jsonl(tmp_path / "empty_rec.jsonl", {})
    with pytest.raises(PairsError, match=r":1: field 'src': missing; fields found: none;"):
        read_pairs(path4)


def test_field_names_in_skip_policy(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", {"s": "a", "t": "b"}, {"src": "c", "tgt": "d"})
    skipped: list = []
    pairs = read_pairs(path, src_field="s", tgt_field="t", bad_lines="skip", skipped=skipped)
    assert [p.src for p in pairs] == ["a"]
    assert [(s["line"], s["field"]) for s in skipped] == [(2, "s")]


def test_tsv_with_other_field_names(tmp_path):
    plain = tmp_path / "plain.tsv"
    plain.write_text("你好\tHello\n", encoding="utf-8")
    (pair,) = read_pairs(plain, src_field="source", tgt_field="target")
    assert pair.to_record() == {"id": "plain-1", "source": "你好", "target": "Hello"}
    head = tmp_path / "head.tsv"
    head.write_text("Source\tTARGET\tid\n你好\tHello\th1\n", encoding="utf-8")
    (pair,) = read_pairs(head, src_field="source", tgt_field="target")
    assert (pair.id, pair.src, pair.tgt, pair.extra) == ("h1", "你好", "Hello", {})
    assert pair.to_record() == {"id": "h1", "source": "你好", "target": "Hello"}
    # with the default names that header is a data line, as before
    assert read_pairs(head)[0].src == "Source"
    notab = tmp_path / "notab.tsv"
    notab.write_text("a\tb\nno tab\n", encoding="utf-8")
    with pytest.raises(PairsError, match=r":2: field 'target': missing \(no tab"):
        read_pairs(notab, src_field="source", tgt_field="target")


@pytest.mark.parametrize(
    ("kw", "what"),
    [
        ({"src_field": ""}, r"src_field='' \(--src-field\): must be a non-empty"),
        ({"tgt_field": None}, r"tgt_field=None \(--tgt-field\)"),
        ({"src_field": "id"}, r"src_field='id' .*reserved"),
        ({"tgt_field": "src_lang"}, r"tgt_field='src_lang' .*reserved"),
        ({"src_field": "x", "tgt_field": "x"}, r"both 'x'"),
        ({"src_lang": 5}, r"src_lang=5 \(--src-lang\)"),
    ],
)
def test_bad_field_and_language_options(tmp_path, kw, what):
    path = _jsonl(tmp_path / "ok.jsonl", _rec(1))
    with pytest.raises(UsageError, match=what):
        read_pairs(path, **kw)


def test_default_languages_apply_only_where_missing(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("你好\tHello\n", encoding="utf-8")
    assert read_pairs(tsv)[0].src_lang is None  # unchanged without the options
    (pair,) = read_pairs(tsv, src_lang="zh", tgt_lang="en")
    assert (pair.src_lang, pair.tgt_lang) == ("zh", "en")
    # the languages given are written out, so the output says what it holds
    assert pair.to_record() == {
        "id": "p-1",
        "src_lang": "zh",
        "tgt_lang": "en",
        "src": "你好",
        "tgt": "Hello",
    }
    path = _jsonl(
        tmp_path / "l.jsonl",
        _rec(1, src_lang="de"),  # its own src_lang wins, tgt_lang from the option
        _rec(2, src_lang="", tgt_lang="fr"),  # empty counts as none
        _rec(3),
    )
    pairs = read_pairs(path, src_lang="zh", tgt_lang="en")
    assert [(p.src_lang, p.tgt_lang) for p in pairs] == [("de", "en"), ("zh", "fr"), ("zh", "en")]
    bad = _jsonl(tmp_path / "b.jsonl", _rec(1, src_lang=7))
    with pytest.raises(PairsError, match=r":1: field 'src_lang': expected a string"):
        read_pairs(bad, src_lang="zh")  # a default does not hide a bad value


# --- noise labels -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "noise"),
    [
        ("clean", False),
        (" Clean ", False),
        ("misaligned", True),
        ("wrong_language", True),
        ("true", True),
        ("TRUE", True),
        ("false", False),
        ("1", True),
        ("0", False),
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        (1.0, True),
        (0.0, False),
    ],
)
def test_is_noise_accepts(value, noise):
    assert is_noise(value, "pool.jsonl:3") is noise


@pytest.mark.parametrize("value", [None, "", "   ", 2, -1, 0.5, float("nan"), ["clean"], {"k": 1}])
def test_is_noise_rejects_with_where_and_value(value):
    with pytest.raises(UsageError) as exc:
        is_noise(value, "pool.jsonl:3")
    msg = str(exc.value)
    assert msg.startswith("pool.jsonl:3: noise label ")
    assert repr(value) in msg
    assert "'clean'" in msg  # says what a label may be


def test_check_label_field(tmp_path):
    path = _jsonl(
        tmp_path / "pool.jsonl",
        _rec(1, noise="clean"),
        _rec(2, noise="misaligned"),
        _rec(3, noise=True),
        _rec(4, noise=0),
    )
    pairs = read_pairs(path)
    assert check_label_field(pairs, "noise", str(path)) == [False, True, True, False]
    assert check_label_field([], "noise", str(path)) == []

    missing = _jsonl(
        tmp_path / "miss.jsonl", _rec(1, noise="clean"), "", {"src": "a", "tgt": "b", "k": 1}
    )
    with pytest.raises(UsageError) as exc:
        check_label_field(read_pairs(missing), "noise", str(missing))
    msg = str(exc.value)
    assert msg.startswith(f"{missing}:3: field 'noise': missing; fields found: id, src, tgt, k;")
    assert "--label-field" in msg

    bad = _jsonl(tmp_path / "bad.jsonl", _rec(1, label="clean"), _rec(2, label=0.5))
    with pytest.raises(UsageError) as exc:
        check_label_field(read_pairs(bad), "label", str(bad))
    msg = str(exc.value)
    assert msg.startswith(f"{bad}:2: field 'label': noise label 0.5 ")
    assert "fields found: id, src, tgt, label" in msg

    null = _jsonl(tmp_path / "null.jsonl", _rec(1, noise=None))
    with pytest.raises(UsageError, match=r"null\.jsonl:1: field 'noise': null; fields found"):
        check_label_field(read_pairs(null), "noise", str(null))
    # pairs made in code have no line: the id names them
    with pytest.raises(UsageError, match=r"^mem: pair 'x': field 'noise': missing"):
        check_label_field([Pair(id="x", src="a", tgt="b")], "noise", "mem")
    # a label may live in any field, not only extra; names follow the input's
    st = _jsonl(tmp_path / "st.jsonl", {"source": "a", "target": "b", "tgt_lang": "en"})
    st_pairs = read_pairs(st, src_field="source", tgt_field="target")
    with pytest.raises(UsageError, match=r"fields found: id, tgt_lang, source, target"):
        check_label_field(st_pairs, "noise", str(st))
    assert check_label_field(st_pairs, "tgt_lang", str(st)) == [True]  # 'en': some kind


# --- seeds vs pool ------------------------------------------------------------------------------


def _pairs(prefix: str, n: int, langs=("zh", "en"), **kw) -> list[Pair]:
    return [
        Pair(f"{prefix}{i}", f"{prefix}源{i}", f"{prefix} t{i}", *langs, **kw) for i in range(n)
    ]


def test_compare_seeds_pool_clean_case_has_no_warnings():
    assert compare_seeds_pool(_pairs("s", 3), _pairs("p", 10)) == []
    # no languages on one side: nothing to compare
    assert compare_seeds_pool(_pairs("s", 3, (None, None)), _pairs("p", 5, ("en", "zh"))) == []


def test_compare_seeds_pool_direction():
    seeds = _pairs("s", 3, ("zh", "en")) + _pairs("x", 1, ("en", "zh"))
    pool = (
        _pairs("p", 4, ("en", "zh")) + _pairs("q", 1, ("zh", "en")) + _pairs("n", 2, (None, None))
    )
    msg, no_target = compare_seeds_pool(seeds, pool)
    assert "zh->en (3 of 4" in msg and "en->zh (4 of 5)" in msg
    assert msg.index("zh->en") < msg.index("en->zh")  # seeds first, then the pool
    assert no_target.startswith("2 of 7 pool pairs name no target language")
    # same most common direction: no warning even though both are mixed
    assert (
        compare_seeds_pool(seeds, _pairs("p", 4, ("zh", "en")) + _pairs("q", 1, ("en", "zh"))) == []
    )


def test_compare_seeds_pool_overlap():
    seeds = _pairs("s", 8)
    pool = _pairs("p", 20)
    # 7 seeds copied into the pool, two with extra whitespace, one under the same id
    for i in range(7):
        src, tgt = seeds[i].src, seeds[i].tgt
        if i < 2:
            src, tgt = f"  {src}\n", f"{tgt} "
        pool.append(Pair("s0" if i == 0 else f"dup{i}", src, tgt, "zh", "en"))
    pool.append(Pair("near", seeds[7].src, seeds[7].tgt + "!", "zh", "en"))  # not the same
    (msg,) = compare_seeds_pool(seeds, pool)
    assert msg.startswith("7 of 8 seed pairs also occur in the pool")
    assert "'s0', 's1' (pool 'dup1'), 's2' (pool 'dup2')" in msg
    assert "'s4' (pool 'dup4') and 2 more" in msg and "'s5'" not in msg
    (one,) = compare_seeds_pool(seeds[:1], pool)
    assert one.startswith("1 of 1 seed pairs") and "more" not in one


# --- demo builder -------------------------------------------------------------------------------


@pytest.fixture
def small_source(tmp_path) -> Path:
    """A Tatoeba source made of the shipped demo's clean lines (always available)."""
    seed, pool = demo_paths()
    clean = read_pairs(seed) + [p for p in read_pairs(pool) if p.extra["noise"] == "clean"]
    for p in clean:
        p.extra.pop("noise", None)
    path = tmp_path / "source.jsonl"
    write_jsonl(path, clean)
    return path


SMALL = DemoConfig(n_seed=8, n_pool=100)


def _norm(s: str) -> str:
    return " ".join(s.casefold().split())


def test_build_demo_is_deterministic(tmp_path, small_source):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build_demo(small_source, a, SMALL)
    build_demo(small_source, b, SMALL)
    build_demo(small_source, c, DemoConfig(n_seed=8, n_pool=100, seed=SMALL.seed + 1))
    for name in ("seed.jsonl", "pool.jsonl", "README.md"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "pool.jsonl").read_bytes() != (c / "pool.jsonl").read_bytes()


def test_build_demo_noise_is_what_it_says(tmp_path, small_source):
    summary = build_demo(small_source, tmp_path / "d", SMALL)
    original = {p.id: p for p in read_pairs(small_source)}
    all_src = {p.src for p in original.values()}
    all_tgt = {p.tgt for p in original.values()}
    seed = read_pairs(tmp_path / "d" / "seed.jsonl")
    pool = read_pairs(tmp_path / "d" / "pool.jsonl")
    assert len(seed) == 8 and len(pool) == 100
    kinds = [p.extra["noise"] for p in pool]
    assert kinds.count("clean") == 70
    per_kind = [kinds.count(k) for k in NOISE_KINDS]
    assert sum(per_kind) == 30 and max(per_kind) - min(per_kind) <= 1  # an even split
    assert summary["noise"]["clean"] == 70

    # seed and pool disjoint in id and in (normalised) text
    assert not {p.id for p in seed} & {p.id for p in pool}
    seed_text = {_norm(p.src) for p in seed} | {_norm(p.tgt) for p in seed}
    assert not seed_text & ({_norm(p.src) for p in pool} | {_norm(p.tgt) for p in pool})
    assert all(original[p.id] == p for p in seed)

    for p in pool:
        orig = original[p.id]
        kind = p.extra["noise"]
        assert (p.src, p.src_lang, p.tgt_lang) == (orig.src, orig.src_lang, orig.tgt_lang)
        if kind == "clean":
            assert p.tgt == orig.tgt
        elif kind == "untranslated":
            assert p.tgt == p.src
        elif kind == "truncated":
            assert orig.tgt.startswith(p.tgt) and len(p.tgt.split()) <= len(orig.tgt.split()) - 2
        elif kind == "misaligned":
            assert p.tgt != orig.tgt and p.tgt in all_tgt
        else:
            assert kind == "wrong_language"
            assert p.tgt != p.src and p.tgt in all_src and CJK.search(p.tgt)


def test_build_demo_too_small_source(tmp_path, small_source):
    with pytest.raises(DemoError, match="source.jsonl: only .* usable pairs"):
        build_demo(small_source, tmp_path / "x", DemoConfig(n_seed=8, n_pool=5000))


def test_build_demo_cli(tmp_path, small_source, capsys):
    out = tmp_path / "cli"
    assert main(["--source", str(small_source), "--out", str(out), "--n-seed", "4",
                 "--n-pool", "40", "--noise-frac", "0.5"]) == 0  # fmt: skip
    assert "seed 4, pool 40" in capsys.readouterr().out
    pool = read_pairs(out / "pool.jsonl")
    assert sum(p.extra["noise"] != "clean" for p in pool) == 20
    assert "--n-seed 4 --n-pool 40 --noise-frac 0.5" in (out / "README.md").read_text()


# --- the shipped demo ---------------------------------------------------------------------------


def test_shipped_demo_parses_and_has_declared_noise():
    seed_path, pool_path = demo_paths()
    assert gdig.data.demo.demo_paths() == (seed_path, pool_path)
    seed, pool = read_pairs(seed_path), read_pairs(pool_path)
    assert 24 <= len(seed) <= 64 and 800 <= len(pool) <= 1200
    kinds = [p.extra.get("noise") for p in pool]
    assert set(kinds) == {"clean", *NOISE_KINDS}
    assert 0.2 <= 1 - kinds.count("clean") / len(pool) <= 0.4
    assert not {p.id for p in seed} & {p.id for p in pool}
    assert all(p.src_lang == "zh" and p.tgt_lang == "en" and CJK.search(p.src) for p in seed)
    assert all(not CJK.search(p.tgt) for p in seed)
    readme = (seed_path.parent / "README.md").read_text(encoding="utf-8")
    assert "Tatoeba" in readme and "CC BY 2.0 FR" in readme and "build_demo" in readme
    total = sum(f.stat().st_size for f in seed_path.parent.glob("*.*") if f.is_file())
    assert total < 300_000


@pytest.mark.skipif(not TATOEBA.is_file(), reason=f"needs {TATOEBA} (set GDIG_DATA_DIR)")
def test_shipped_demo_is_reproducible(tmp_path):
    build_demo(TATOEBA, tmp_path, DemoConfig())
    seed_path, pool_path = demo_paths()
    assert (tmp_path / "seed.jsonl").read_bytes() == seed_path.read_bytes()
    assert (tmp_path / "pool.jsonl").read_bytes() == pool_path.read_bytes()
    assert (tmp_path / "README.md").read_bytes() == (seed_path.parent / "README.md").read_bytes()
