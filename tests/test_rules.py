"""Rule-based cleaning (OpusFilter's filters): each rule and its threshold on hand-made
pairs, and `--prefilter rules` / `--selector rules` through the command: the prefilter
drops exactly the pairs the rules flag, before any model pass, and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("opusfilter")

from gdig.cli import main
from gdig.data.pairs import write_jsonl
from gdig.data.rules import RulesConfig, apply_rules
from gdig.engine.store import GradStore
from gdig.io.validate import OptionError

GOOD = [
    ("Das Haus ist sehr alt.", "The house is very old."),
    ("Ich trinke gern Kaffee am Morgen.", "I like to drink coffee in the morning."),
    ("Wo ist der Bahnhof?", "Where is the train station?"),
    ("Meine Schwester wohnt in Berlin.", "My sister lives in Berlin."),
    ("Der Hund schläft unter dem Tisch.", "The dog is sleeping under the table."),
    ("Wir fahren morgen an die See.", "We are going to the seaside tomorrow."),
    ("Das Buch liegt auf dem Stuhl.", "The book is on the chair."),
    ("Es regnet seit drei Tagen.", "It has been raining for three days."),
    ("Kannst du mir bitte helfen?", "Can you help me, please?"),
    ("Der Zug hat zehn Minuten Verspätung.", "The train is ten minutes late."),
]
# (src, tgt, the rule it must fail)
BAD = [
    ("Das Wetter ist heute schön.", "Das Wetter ist heute schön.", "copy"),
    ("Ich habe keine Zeit.", "...", "alphabet"),
    ("Er liest jeden Abend eine Zeitung.", "Il lit un journal tous les soirs.", "language"),
    ("Guten Morgen, wie geht es dir heute?", "Good", "length_ratio"),
    ("", "Hello there, my friend.", "length"),
    ("Wie spät ist es?", "Сколько сейчас времени?", "charset"),
]


def _pairs(rows):
    return [(s, t, "de", "en") for s, t, *_ in rows]


def test_each_rule_flags_its_pair_and_clean_pairs_pass():
    rows = GOOD + BAD
    flags = apply_rules(_pairs(rows), len(rows), RulesConfig())
    assert flags.ok[: len(GOOD)].all(), {r: np.flatnonzero(f) for r, f in flags.failed.items()}
    for j, (_, _, rule) in enumerate(BAD):
        assert flags.failed[rule][len(GOOD) + j], (rule, BAD[j])
    counts = flags.counts()
    assert counts["removed"] == len(BAD)
    assert all(counts[rule] >= 1 for *_, rule in BAD)


def test_thresholds_are_options_that_change_the_verdict():
    short = [("Guten Morgen, wie geht es dir heute?", "Good morning", "de", "en")]  # 7 vs 2
    assert apply_rules(short, 1, RulesConfig(rule_max_ratio=3.0)).failed["length_ratio"][0]
    assert not apply_rules(short, 1, RulesConfig(rule_max_ratio=4.0)).failed["length_ratio"][0]
    near = [("Berlin Berlin Berlin", "Berlin Berlin Berlin!", "de", "en")]
    assert apply_rules(near, 1, RulesConfig(rules="copy")).failed["copy"][0]
    assert not apply_rules(near, 1, RulesConfig(rules="copy", rule_max_similarity=1.0)).failed[
        "copy"
    ][0]
    long = [(" ".join(["Wort"] * 12), " ".join(["word"] * 12), "de", "en")]
    assert apply_rules(long, 1, RulesConfig(rules="length", rule_max_length=10)).failed["length"][0]
    assert not apply_rules(long, 1, RulesConfig(rules="length")).failed["length"][0]
    only = apply_rules(short, 1, RulesConfig(rules="copy,alphabet"))
    assert set(only.failed) == {"copy", "alphabet"}


def test_pairs_without_languages_are_not_judged_by_language_rules():
    flags = apply_rules([("Hallo Welt", "Bonjour le monde", None, None)], 1, RulesConfig())
    assert flags.ok[0] and flags.skipped["language"] == 1 and flags.skipped["charset"] == 1


def test_bad_rule_options_name_the_option():
    with pytest.raises(OptionError, match="rules"):
        RulesConfig(rules="copy,nonsense")
    with pytest.raises(OptionError, match="--rule-min-alpha"):
        RulesConfig(rule_min_alpha=1.5)


# --- through the command, on a tiny model ---

IN_FILE = [b for b in BAD if b[0]]  # a pool file may not hold an empty source
FAST = ["--no-progress", "--factor-samples", "16", "--k-in", "4", "--k-out", "4", "--rank", "4"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("rules")
    seeds, pool = d / "seeds.jsonl", d / "pool.jsonl"
    write_jsonl(seeds, [{"id": f"s{i}", "src": s, "tgt": t, "src_lang": "de",
                         "tgt_lang": "en"} for i, (s, t) in enumerate(GOOD[:3])])  # fmt: skip
    recs = [{"id": f"p{i}", "src": s, "tgt": t, "src_lang": "de", "tgt_lang": "en"}
            for i, (s, t, *_) in enumerate(GOOD + IN_FILE)]  # fmt: skip
    write_jsonl(pool, recs)
    return seeds, pool


def _run(model, files, out, *extra) -> int:
    seeds, pool = files
    return main(["run", "--model", str(model), "--seeds", str(seeds), "--pool", str(pool),
                 "--out", str(out), *FAST, *extra])  # fmt: skip


def test_prefilter_drops_exactly_the_flagged_pairs_and_resumes(
    tiny_llama_dir, files, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    assert _run(tiny_llama_dir, files, out, "--prefilter", "rules", "--budget", "4") == 0
    recs = [json.loads(x) for x in files[1].read_text().splitlines()]
    want = apply_rules([(r["src"], r["tgt"], "de", "en") for r in recs], len(recs), RulesConfig())
    store = GradStore.open(out / "store")
    assert list(store.ids) == [r["id"] for r, ok in zip(recs, want.ok, strict=True) if ok]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input_checks"]["prefilter"] == want.counts()
    # a resume judges nothing again and keeps the store
    import gdig.pipeline.prefilter as prefilter

    monkeypatch.setattr(prefilter, "apply_rules", lambda *a, **k: pytest.fail("re-judged"))
    before = (out / "store" / "manifest.json").read_bytes()
    assert _run(tiny_llama_dir, files, out, "--prefilter", "rules", "--budget", "4") == 0
    assert (out / "store" / "manifest.json").read_bytes() == before
    # the prefilter is part of the fit's fingerprint: another threshold is refused
    monkeypatch.undo()
    assert _run(tiny_llama_dir, files, out, "--prefilter", "rules", "--rule-max-ratio", "9",
                "--budget", "4") == 2  # fmt: skip


def test_rules_selector_through_select(tiny_llama_dir, files, tmp_path):
    out = tmp_path / "run"
    assert _run(tiny_llama_dir, files, out, "--budget", "5") == 0
    assert main(["select", "--out", str(out), "--selector", "rules", "--budget", "5",
                 "--no-progress"]) == 0  # fmt: skip
    chosen = {json.loads(x)["id"] for x in (out / "selected.jsonl").read_text().splitlines()}
    bad_ids = {f"p{len(GOOD) + j}" for j in range(len(IN_FILE))}
    assert len(chosen) == 5 and not chosen & bad_ids
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["select"]["rules"]["removed"] == len(IN_FILE)
