"""gdig.data: reading/writing pairs (every error path) and the demo data set."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

import gdig.data.demo
from gdig.data import Pair, PairsError, demo_paths, iter_pairs, read_pairs, write_jsonl
from gdig.data.build_demo import NOISE_KINDS, DemoConfig, DemoError, build_demo, main
from gdig.data.pairs import FILE_FIELD, LINE_FIELD

TATOEBA = Path("/work/shared/data/tatoeba.zh-en.jsonl")
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


@pytest.mark.skipif(not TATOEBA.is_file(), reason="needs the dev data in /work/shared/data")
def test_shipped_demo_is_reproducible(tmp_path):
    build_demo(TATOEBA, tmp_path, DemoConfig())
    seed_path, pool_path = demo_paths()
    assert (tmp_path / "seed.jsonl").read_bytes() == seed_path.read_bytes()
    assert (tmp_path / "pool.jsonl").read_bytes() == pool_path.read_bytes()
    assert (tmp_path / "README.md").read_bytes() == (seed_path.parent / "README.md").read_bytes()
