"""The quality experiment (benchmarks/quality): its data splits, and a smoke run end to end
with a tiny random LLaMA (every default arm of both directions fine-tuned, decoded, scored
and tested; report written with relative paths; resumed)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gdig.data.pairs import read_pairs
from gdig.train.checkpoint import pairs_digest

QUALITY = Path(__file__).resolve().parents[1] / "benchmarks" / "quality"


def _load(name: str, file: str):
    spec = importlib.util.spec_from_file_location(name, QUALITY / file)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


qdata = _load("quality_data", "data.py")
# The arms (issue 18): gdig, quality (raw and cosine), diversity, random, rules,
# loss, less, coverage, and the whole pool.
ARMS = "gdig,quality-raw,quality-cosine,diversity,random,rules,loss,less,coverage-cosine,all"
needs_data = pytest.mark.skipif(
    not (qdata.DEFAULT_DATA_DIR / "tatoeba.zh-en.jsonl").is_file(),
    reason=f"shared pairs not found in {qdata.DEFAULT_DATA_DIR}",
)


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


@needs_data
@pytest.mark.parametrize("direction", ["zh-en", "de-en"])
def test_splits_disjoint_with_documented_noise(direction):
    cfg = qdata.SplitConfig(
        direction=direction, n_seeds=16, n_pool=203, n_dev=30, n_test=40, n_test_other=40
    )
    splits = qdata.build_splits(qdata.DEFAULT_DATA_DIR, cfg)
    assert {k: len(v) for k, v in splits.items()} == {
        "seeds": 16, "pool": 203, "dev": 30, "test_in": 40, "test_other": 40,
    }  # fmt: skip
    # disjoint in id and in source text; the clean targets too
    ids = [p.id for v in splits.values() for p in v]
    assert len(ids) == len(set(ids))
    srcs = [_norm(p.src) for v in splits.values() for p in v]
    assert len(srcs) == len(set(srcs))
    clean_tgts = [
        _norm(p.tgt)
        for name, v in splits.items()
        for p in v
        if name != "pool" or p.extra["noise"] == "clean"
    ]
    assert len(clean_tgts) == len(set(clean_tgts))
    # the documented counts: round(203 * 0.3) = 61 noisy, 13 + 12 x 4
    counts = qdata.noise_plan_counts(203, 0.3)
    assert counts == {
        "clean": 142, "misaligned": 13, "untranslated": 12, "truncated": 12,
        "wrong_language": 12, "other_domain": 12,
    }  # fmt: skip
    summary = qdata.summarize(splits, cfg)
    assert summary["noise_counts"] == counts
    assert summary["noise_rate"] == pytest.approx(61 / 203, abs=1e-4)
    other = "gettext"
    in_domain = "tatoeba" if direction == "zh-en" else "ding"
    for p in splits["pool"]:
        kind = p.extra["noise"]
        assert p.extra["origin"] == (other if kind == "other_domain" else in_domain)
        if kind == "untranslated":
            assert p.tgt == p.src
        elif kind == "truncated":
            assert 0 < len(p.tgt) < len(p.src + p.tgt) and p.tgt.split()
        elif kind in ("misaligned", "wrong_language"):
            assert _norm(p.tgt) not in clean_tgts and p.tgt != p.src
    for name in ("seeds", "dev", "test_in"):
        assert all(p.id.startswith(in_domain + ":") for p in splits[name])
    assert all(p.id.startswith(other + ":") for p in splits["test_other"])
    # deterministic
    again = qdata.build_splits(qdata.DEFAULT_DATA_DIR, cfg)
    assert [p.to_record() for p in again["pool"]] == [p.to_record() for p in splits["pool"]]


@needs_data
@pytest.mark.parametrize("direction", ["zh-en", "de-en"])
def test_more_seeds_keep_every_split(direction):
    """The study's more seeds: the split's seeds first, then pairs no split touches."""
    cfg = qdata.SplitConfig(direction=direction, n_seeds=8, n_pool=120, n_dev=20, n_test=20)
    splits = qdata.build_splits(qdata.DEFAULT_DATA_DIR, cfg)
    seeds = qdata.more_seeds(qdata.DEFAULT_DATA_DIR, cfg, splits, 40)
    assert len(seeds) == 40 and seeds[:8] == splits["seeds"]
    assert qdata.more_seeds(qdata.DEFAULT_DATA_DIR, cfg, splits, 5) == splits["seeds"][:5]
    texts = {_norm(t) for v in splits.values() for p in v for t in (p.src, p.tgt)}
    ids = {p.id for v in splits.values() for p in v}
    for p in seeds[8:]:
        assert p.id not in ids and _norm(p.src) not in texts and _norm(p.tgt) not in texts
        assert 5 <= len(p.tgt.split()) <= 14
    assert len({p.id for p in seeds}) == 40
    # deterministic, and the splits themselves do not move
    assert seeds == qdata.more_seeds(qdata.DEFAULT_DATA_DIR, cfg, splits, 40)
    assert qdata.build_splits(qdata.DEFAULT_DATA_DIR, cfg) == splits
    with pytest.raises(qdata.DataError, match="unused seed-like pairs"):
        qdata.more_seeds(qdata.DEFAULT_DATA_DIR, cfg, splits, 10**7)


def test_completed_yields_each_run_as_it_finishes():
    """The driver reports a run as soon as it is done, not when the slowest one is."""
    import concurrent.futures as cf
    import threading

    rq = _load("quality_run", "run_quality.py")
    release = threading.Event()
    with cf.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(release.wait, 30)
        fast = pool.submit(lambda: 1)
        futures = {slow: "slow", fast: "fast"}
        fast.result()
        assert list(rq.completed(futures, block=False)) == [fast]
        first = next(rq.completed(futures, block=True))
        assert first is fast and not slow.done()
        release.set()
    assert slow.result() is True


def test_mirror_copies_what_differs_and_only_that(tmp_path):
    """--durable's mirror: a new run and a rewritten one (same size, other bytes) are copied;
    an unchanged one is not; missing_only never overwrites."""
    import os

    rq = _load("quality_run", "run_quality.py")
    src, dst = tmp_path / "work", tmp_path / "durable"
    run = src / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "result.json").write_text('{"chrf": 1}')
    assert rq.mirror(src, dst, missing_only=False) == 1
    assert rq.mirror(src, dst, missing_only=False) == 0  # unchanged: nothing copied
    kept = dst / "runs" / "r1" / "result.json"
    # same size, other bytes, another mtime: the bytes decide
    (run / "result.json").write_text('{"chrf": 2}')
    os.utime(run / "result.json", ns=(0, kept.stat().st_mtime_ns + 10**9))
    assert rq.mirror(src, dst, missing_only=True) == 0
    assert kept.read_text() == '{"chrf": 1}'
    assert rq.mirror(src, dst, missing_only=False) == 1
    assert kept.read_text() == '{"chrf": 2}'
    # equal bytes under another mtime: not copied, and the mtime is synced for next time
    os.utime(kept, ns=(0, 12345))
    assert rq.mirror(src, dst, missing_only=False) == 0
    assert kept.stat().st_mtime_ns == (run / "result.json").stat().st_mtime_ns
    assert not list(dst.rglob("*.part"))


def test_study_table_reads_variant_minus_gdig():
    """The study's significance rows hold gdig minus the variant; its table shows the
    variant minus gdig, so a variant that lost reads negative (it once read +2.86)."""
    qstudy = _load("quality_run", "run_quality.py").qstudy

    def sig(b, delta, low, high):
        return {"b": b, "metric": "chrf", "delta": delta, "ci_low": low, "ci_high": high}

    def row(arm, chrf):
        stat = {"mean": chrf, "std": 0.0}
        return {"arm": arm, "noise_rate": 0.1, "dev.chrf": stat, "dev.bleu": stat,
                "reused": 0, "n_runs": 1}  # fmt: skip

    study = {
        "status": {"done": 3, "planned": 3, "partial": False}, "command": "c",
        "commit": {"commit": "abc"}, "machine": "m", "written": "w", "direction": "zh-en",
        "budget": 150, "seeds": [1], "n_dev": 200, "tau": 0.9, "scoring": "raw",
        "variants": [
            {"name": n, "what": n, "how": n} for n in ("gdig", "worse", "better", "same")
        ],
        "table": [row("gdig", 27.0), row("worse", 24.0), row("better", 28.0), row("same", 27.0)],
        "significance": [
            sig("worse", 3.0, 1.0, 5.0), sig("better", -1.0, -2.5, 0.25), sig("same", 0, 0, 0)
        ],
        "scorings": {},
    }  # fmt: skip
    lines = {ln.split(" | ")[0]: ln for ln in qstudy.markdown(study).splitlines()}
    assert "| -3.00 [-5.00, -1.00] |" in lines["| worse"]
    assert "| +1.00 [-0.25, +2.50] |" in lines["| better"]
    assert "Selection bias" not in "\n".join(lines.values())  # no dev choice in this study
    # the verdict reads the same intervals: worse loses, better ties (its interval spans 0)
    words = next(ln for ln in lines.values() if ln.startswith("**In words"))
    assert (
        "gdig's very translations: same; no variant beats gdig; lose to it: worse; "
        "tie with it: better (" in words
    )
    assert "| +0.00 [+0.00, +0.00] |" in lines["| same"]  # no "-0.00" from the sign flip
    assert "the best of them by its mean: better, +1.00 [-0.25, +2.50]" in words


# An absolute path inside a string: a "/" not preceded by a name character, then a name.
ABSOLUTE = re.compile(r"(?<![\w.~-])/[\w.+@-]+")


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


@needs_data
def test_smoke_run(tmp_path):
    """Every default arm (rules, loss, less, coverage included) and the --also direction,
    end to end on a tiny model; relative paths only; a lost result is redone on resume."""
    out = tmp_path / "q"
    cmd = [sys.executable, str(QUALITY / "run_quality.py"), "--smoke", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (out / "results.json").read_text()
    report = json.loads(text)
    arms = [a["name"] for a in report["arms"]]
    assert arms == ARMS.split(",")
    assert report["status"] == {"done": 20, "planned": 20, "partial": False}
    assert [e["direction"] for e in report["experiments"]] == ["zh-en", "de-en"]
    # precision auto is decided once: every run trains with the same numerics
    chosen = report["precision"]["train"]
    assert chosen in ("fp32", "bf16") and report["precision"]["why"].startswith("auto")
    assert {
        r["finetune"]["precision"]["name"] for e in report["experiments"] for r in e["runs"]
    } == {chosen}
    for exp in report["experiments"]:
        rows = {r["arm"]: r for r in exp["table"]}
        assert list(rows) == arms, exp["direction"]
        for arm, row in rows.items():
            assert 0.0 <= row["noise_rate"] <= 1.0, arm
            assert sum(row["noise_kinds_mean"].values()) == row["n_pairs"]
            for split in ("test_in", "test_other"):
                assert math.isfinite(row[f"{split}.chrf"]["mean"]), (arm, split)
                assert math.isfinite(row[f"{split}.bleu"]["mean"]), (arm, split)
        assert rows["all"]["n_pairs"] == 40 and rows["gdig"]["n_pairs"] == 10  # 25% of 40
        assert rows["all"]["noise_rate"] == pytest.approx(12 / 40)
        # the copy rule drops every untranslated pair (target = source) before the draw
        assert rows["rules"]["noise_kinds_mean"]["untranslated"] == 0
        assert exp["data"]["noise_counts"] == qdata.noise_plan_counts(40, 0.3)
        selectors = {r["selection"].get("selector") for r in exp["table"]}
        assert {"rules", "loss", "less", "coverage"} <= selectors
        assert rows["coverage-cosine"]["selection"]["scoring"] == "cosine"
        assert rows["gdig"]["selection"]["scoring"] == exp["dev_choice"]["chosen"]["scoring"]
        assert {(s["b"], s["test"], s["metric"]) for s in exp["significance"]} == {
            (a, t, m) for a in arms[1:] for t in ("test_in", "test_other") for m in ("chrf", "bleu")
        }
        for s in exp["significance"]:
            assert s["a"] == "gdig" and s["seeds"] == [0] and len(s["seed_deltas"]) == 1
        for run in exp["runs"]:  # hypotheses kept, one per test sentence
            for split in ("test_in", "test_other"):
                hyps = out / exp["direction"] / "runs" / run["key"] / f"hyps_{split}.jsonl"
                assert len(hyps.read_text().splitlines()) == 10
    assert len(report["summary"]) == 2  # one budget per direction, in words
    assert all(
        line.startswith(("zh-en, budget 10", "de-en, budget 10")) for line in report["summary"]
    )
    md = (out / "RESULTS.md").read_text()
    assert "## zh-en" in md and "## de-en" in md and "Summary (generated" in md
    # a gdig row in the table of each test set of each direction
    assert sum(line.startswith("| 10 (25%) | gdig | 1 |") for line in md.splitlines()) == 4
    assert (out / "quality.png").stat().st_size > 0
    # relative paths only: the work folder given as an absolute path is shown as DIR/q
    bad = [x for x in _strings(report) if ABSOLUTE.search(x) or str(tmp_path) in x]
    assert not bad, bad[:5]
    assert not ABSOLUTE.search(md.replace("](quality.png)", "")), md
    assert "DIR/q" in report["command"]

    # resume on two worker processes: the lost results are redone, every other run skipped
    lost = ["de-en/runs/b10-random-s0", "de-en/runs/b10-loss-s0", "zh-en/runs/b10-less-s0"]
    lost.append("zh-en/runs/all-s0")  # the whole pool: submitted first with --workers
    lost.append("de-en/runs/dev-b10-gdig-tau0.9-raw")  # a dev trial: the same way
    # the cosine trial chose the same pairs: it waits for the raw one and reuses it
    twin = "de-en/runs/dev-b10-gdig-tau0.9-cosine"
    specs = {key: json.loads((out / key / "result.json").read_text())["spec"] for key in lost}
    for key in [*lost, twin]:  # lost from the work folder and from its durable copy
        (out / key / "result.json").unlink()
        (out / "durable" / key / "result.json").unlink()
    workers = [*cmd, "--workers", "2", "--threads-per-worker", "1"]
    proc = subprocess.run(workers, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trained = [line for line in proc.stdout.splitlines() if "fine-tuning on" in line]
    assert sorted(line.split("] ")[1].split(":")[0] for line in trained) == sorted(
        key.replace("/runs/", " ") for key in lost
    ), trained
    assert "de-en: 2 worker processes, 1 torch thread(s) each" in proc.stdout
    assert (
        json.loads((out / twin / "result.json").read_text())["same_as"] == lost[-1].split("/")[-1]
    )
    again = json.loads((out / "results.json").read_text())
    assert again["status"]["done"] == 20
    # the whole pool's model of training seed 0 is kept: --finetune-first's scorer
    for direction in ("zh-en", "de-en"):
        kept = json.loads((out / direction / "scorer_model" / "gdig_finetune.json").read_text())
        pool = read_pairs(out / direction / "data" / "pool.jsonl")
        assert kept["fingerprint"]["pairs"]["sha256"] == pairs_digest(pool)
        assert kept["fingerprint"]["config"]["train_seed"] == 0
    for key in lost:  # the same subset and settings, trained in a one-thread worker
        redone = json.loads((out / key / "result.json").read_text())
        assert redone["torch_threads"] == 1 and redone["key"] == key.split("/")[-1]
        assert redone["spec"] == specs[key]

    # the dev study on the same work folder: dev only, its own report, RESULTS.md untouched
    md_before = (out / "RESULTS.md").read_bytes()
    variants = "zscore,best-first,rank0,seeds128,pool-finetuned"
    study_cmd = [*workers, "--study", "--study-variants", variants]
    proc = subprocess.run(study_cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "RESULTS.md").read_bytes() == md_before
    study = json.loads((out / "study.json").read_text())
    names = ["gdig", *variants.split(",")]
    assert [v["name"] for v in study["variants"]] == names
    assert study["status"] == {"done": 6, "planned": 6, "partial": False}
    rows = {r["arm"]: r for r in study["table"]}
    assert list(rows) == names
    for row in rows.values():
        assert row["n_pairs"] == 10 and math.isfinite(row["dev.chrf"]["mean"])
        assert "test_in.chrf" not in row  # the test sets never enter the study
    # the reference is the dev choice's own trial: the same subset and settings, reused
    assert rows["gdig"]["reused"] == 1
    assert {s["b"] for s in study["significance"] if s["metric"] == "chrf"} == set(names[1:])
    # the variants that score again have their own gdig run; the pool-finetuned scorer is
    # the whole pool's kept model (no fine-tune on the raw pool here)
    assert set(study["scorings"]) == {"rank0", "seeds128", "pool-finetuned"}
    assert "fine-tuning the base model on the raw pool" not in proc.stdout
    seeds = (out / "zh-en" / "study" / "seeds128" / "seeds.jsonl").read_text().splitlines()
    own = (out / "zh-en" / "data" / "seeds.jsonl").read_text().splitlines()
    assert len(seeds) == 128 and seeds[:4] == own
    rank0 = json.loads(
        (out / "zh-en" / "study" / "rank0" / "gdig_run" / "manifest.json").read_text()
    )
    assert rank0["config"]["scoring"]["rank"] == 0
    trained = {
        line.split("] ")[1].split(":")[0]
        for line in proc.stdout.splitlines()
        if "fine-tuning on" in line
    }
    for run in study["runs"]:
        assert run.get("same_as") or f"zh-en {run['key']}" in trained, run["key"]
    md = (out / "STUDY.md").read_text()
    assert all(f"| {n} |" in md for n in names)
    # the dev choice (2 trials) picked gdig at this budget and training seed 0: said, since
    # the reference is favoured there
    assert study["chosen_at"] == {"budget": study["budget"], "seed": 0}
    assert "Selection bias at training seed 0" in md
    bad = [x for x in _strings(study) if ABSOLUTE.search(x) or str(tmp_path) in x]
    assert not bad, bad[:5]

    # what won on dev is confirmed on the test sets as an arm: gdig+VARIANT selects the
    # study's very subset (at the study's budget and seed) and is tested against gdig
    confirm = [
        *cmd,
        "--arms",
        "gdig,gdig+best-first",
        "--also",
        "",
        "--report-dir",
        str(tmp_path / "c"),
    ]
    proc = subprocess.run(confirm, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads((tmp_path / "c" / "results.json").read_text())
    (exp,) = rep["experiments"]
    assert [r["arm"] for r in exp["table"]] == ["gdig", "gdig+best-first"]
    run = {r["key"]: r for r in exp["runs"]}["b10-gdig+best-first-s0"]
    assert run["selection"]["variant"] == "best-first"
    studied = {r["key"]: r for r in study["runs"]}["study-b10-best-first-s0"]
    assert run["spec"]["subset_sha256"] == studied["spec"]["subset_sha256"]
    assert {s["b"] for s in exp["significance"]} == {"gdig+best-first"}

    # a work folder lost with its machine: --directions de-en runs de-en alone (all its runs
    # are still there) and keeps zh-en's part of results.json as it was, its origin named
    before = json.loads((out / "results.json").read_text())
    shutil.rmtree(out / "zh-en")
    keep = [*workers, "--directions", "de-en"]
    proc = subprocess.run(keep, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fine-tuning on" not in proc.stdout and "zh-en: kept from" in proc.stdout
    after = json.loads((out / "results.json").read_text())
    assert after["status"] == before["status"]
    zh, de = after["experiments"]
    assert zh["kept"]["commit"] == before["commit"] and zh["kept"]["command"] == before["command"]
    assert {k: v for k, v in zh.items() if k != "kept"} == before["experiments"][0]
    assert de["table"] == before["experiments"][1]["table"] and "kept" not in de
    assert "**Kept as an earlier invocation left it**" in (out / "RESULTS.md").read_text()
    # kept results must compare with this invocation's: other settings are refused, named
    written = (out / "results.json").read_bytes()
    proc = subprocess.run([*keep, "--bootstrap-n", "60"], capture_output=True, text=True)
    assert proc.returncode == 2 and "bootstrap_n 50 there, 60 here" in proc.stderr, proc.stderr
    assert (out / "results.json").read_bytes() == written
    proc = subprocess.run([*cmd, "--directions", "fr-en"], capture_output=True, text=True)
    assert proc.returncode == 2 and "fr-en not planned (planned: zh-en, de-en)" in proc.stderr

    # the durable copy beside the report: a work folder lost with its machine is restored
    # from it, and only gdig run is redone (the subsets are found by its fingerprint)
    durable = out / "durable" / "de-en"
    work = sorted(str(f.relative_to(out / "de-en")) for f in (out / "de-en").glob("*/*/*.json*"))
    kept = sorted(str(f.relative_to(durable)) for f in durable.glob("*/*/*.json*"))
    assert kept == [
        f for f in work if f.startswith(("runs/", "subsets/")) and f.endswith(("result.json", "l"))
    ]
    assert len(kept) > 2 * len(de["runs"]), kept  # results, hypotheses, subsets
    decided = (out / "precision.json").read_bytes()
    assert (out / "durable" / "precision.json").read_bytes() == decided
    shutil.rmtree(out / "de-en")
    (out / "precision.json").unlink()  # restored too, not decided anew
    proc = subprocess.run(keep, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fine-tuning on" not in proc.stdout
    assert f"de-en: {len(kept)} files restored from DIR/durable" in proc.stdout, proc.stdout
    assert "precision restored from DIR/durable" in proc.stdout
    restored = json.loads((out / "results.json").read_text())["experiments"][1]
    assert restored["table"] == de["table"] and restored["runs"] == de["runs"]
