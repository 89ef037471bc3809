"""A new user's first hour, through the `gdig` command (issue: install, recover,
re-select, never lose work): each test drives `gdig.cli.main` or the `python -m gdig`
process, on a tiny random model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_models import toy_pairs

from gdig.cli import main
from gdig.data.pairs import write_jsonl
from gdig.io.integrity import sha256_file

FAST = ["--no-progress", "--factor-samples", "40", "--k-in", "4", "--k-out", "4", "--rank", "4"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("data")
    pairs = toy_pairs(48, seed=3)
    seed, pool = d / "seed.jsonl", d / "pool.jsonl"
    write_jsonl(seed, [p.to_record() for p in pairs[:6]])
    recs = [dict(p.to_record(), noise="clean") for p in pairs[6:]]
    for rec in recs[::4]:
        rec["tgt"], rec["noise"] = rec["src"], "untranslated"
    write_jsonl(pool, recs)
    return seed, pool


def _args(model: Path, data: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    seed, pool = data
    return ["--model", str(model), "--seeds", str(seed), "--pool", str(pool), "--out", str(out),
            *FAST, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tiny_llama_dir, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "done"
    args = _args(tiny_llama_dir, data, out, "--budget", "10", "--tau", "0.5", "--on-short", "fill")
    assert main(["run", *args, "--label-field", "noise"]) == 0
    return out


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def _digests(out: Path) -> dict[str, str]:
    files = [out / "factors.safetensors", *sorted((out / "store").rglob("*.npy"))]
    return {str(p.relative_to(out)): sha256_file(p) for p in files}


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# ------------------------------------------------------------------ errors


def test_user_error_is_one_line_exit_2_and_debug_shows_traceback(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "r"), "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gdig run: error: ")
    assert "Traceback" not in err
    from gdig.io.errors import GdigError

    with pytest.raises(GdigError):
        main(["run", "--out", str(tmp_path / "r"), "--model", str(tmp_path), "--debug"])


def test_unexpected_exception_keeps_its_traceback(tmp_path, monkeypatch):
    import gdig.pipeline.stages as stages

    def boom(*_a, **_k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(stages, "run_stages", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["run", "--out", str(tmp_path / "r")])


def test_process_exit_status_and_message():
    """The real command in its own process: one line, status 2, no traceback."""
    got = subprocess.run(
        [sys.executable, "-m", "gdig", "select", "--out", "/nonexistent/gdig-run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT / 'python'}:{ROOT}", "PATH": "/usr/bin:/bin"},
    )
    assert got.returncode == 2, got.stderr
    assert "no gdig run there" in got.stderr and "Traceback" not in got.stderr


@pytest.mark.parametrize("verb", ["run", "select"])
def test_device_is_checked_in_one_place(verb, finished, capsys):
    assert main([verb, "--out", str(finished), "--device", "gpu"]) == 2
    assert "--device: use cpu, cuda or cuda:N; got 'gpu'" in capsys.readouterr().err


def test_cuda_n_is_accepted_by_selection_too(run_copy, capsys, monkeypatch):
    """`--device cuda:1` passes validation in select (it then needs a GPU faiss)."""
    import gdig.select.diversity as diversity

    seen = {}

    def fake_cluster(source, rows, k, **kw):
        seen["device"] = kw["device"]
        import numpy as np

        return np.arange(len(rows), dtype=np.int32) % k

    monkeypatch.setattr("gdig.select.choosers.cluster_rows", fake_cluster)
    assert diversity is not None
    assert main(["select", "--out", str(run_copy), "--device", "cuda:1", "--budget", "9"]) == 0
    assert seen["device"] == "cuda:1"


# ------------------------------------------------------------------ never lose work


def test_select_never_removes_what_fit_and_score_made(run_copy, data, tmp_path, capsys):
    before = _digests(run_copy)
    # another pool (by content) given to select is refused, naming the stage it would change
    changed = tmp_path / "changed.jsonl"
    changed.write_text(data[1].read_text().replace('"clean"', '"clean "', 1))
    assert main(["select", "--out", str(run_copy), "--force-restart", "--pool", str(changed)]) == 2
    assert "inputs.pool" in capsys.readouterr().err
    # a config file that changes an earlier stage's input is refused, naming it
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"pool: {changed}\n")
    assert main(["select", "--out", str(run_copy), "--config", str(cfg), "--force-restart"]) == 2
    err = capsys.readouterr().err
    assert "inputs.pool" in err and "`fit`" in err
    assert _digests(run_copy) == before


def test_run_with_another_path_to_the_same_pool_recomputes_nothing(
    run_copy, tiny_llama_dir, data, tmp_path
):
    before = _digests(run_copy)
    other = tmp_path / "same_pairs.jsonl"
    shutil.copy(data[1], other)
    args = _args(tiny_llama_dir, (data[0], other), run_copy, "--budget", "10", "--tau", "0.5")
    assert main(["run", *args, "--on-short", "fill", "--label-field", "noise"]) == 0
    assert _digests(run_copy) == before


@pytest.mark.parametrize(("value", "why"), [("10.7", "a fraction must be in (0, 1]"),
                                            ('"ten"', "expected a number of pairs (40), a "
                                                      "fraction (0.15) or a percentage (15%)"),
                                            ("0", "must be >= 1 (or a fraction such as 0.15); "
                                                  "got 0")])  # fmt: skip
def test_bad_config_value_is_named_before_anything_is_removed(run_copy, tmp_path, capsys,
                                                              value, why):  # fmt: skip
    selected = (run_copy / "selected.jsonl").read_text()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"budget: {value}\n")
    assert main(["select", "--out", str(run_copy), "--config", str(cfg), "--force-restart"]) == 2
    assert f"{cfg}: budget: {why}" in capsys.readouterr().err
    assert (run_copy / "selected.jsonl").read_text() == selected


def test_out_must_be_a_run_folder_or_empty(tiny_llama_dir, data, tmp_path, capsys):
    unrelated = tmp_path / "photos"
    unrelated.mkdir()
    (unrelated / "cat.jpg").write_bytes(b"x")
    assert main(["run", *_args(tiny_llama_dir, data, unrelated)]) == 2
    assert "not empty and holds no gdig run" in capsys.readouterr().err
    assert sorted(p.name for p in unrelated.iterdir()) == ["cat.jpg"]
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["run", *_args(tiny_llama_dir, data, a_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["run", *_args(tiny_llama_dir, data, a_file / "run")]) == 2
    assert "lies under the file" in capsys.readouterr().err


# ------------------------------------------------------------------ recovering and re-selecting


def test_display_options_are_not_inputs(run_copy, tiny_llama_dir, data, capsys):
    args = _args(
        tiny_llama_dir, data, run_copy, "--budget", "10", "--tau", "0.5", "--on-short", "fill"
    )
    args = [a for a in args if a != "--no-progress"] + ["--progress"]
    assert main(["run", *args, "--label-field", "noise"]) == 0
    assert "nothing to do" in capsys.readouterr().err


def test_reselect_on_a_finished_run(run_copy, monkeypatch, capsys):
    before = _digests(run_copy)
    report_before = (run_copy / "report.html").stat().st_mtime_ns

    def no_model(*_a, **_k):
        raise AssertionError("select/report must not load the model or tokenizer")

    monkeypatch.setattr("gdig.model.load_model", no_model)
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", no_model)
    argv = ["select", "--out", str(run_copy), "--budget", "20", "--selector", "quality"]
    assert main(argv) == 0
    selected = _lines(run_copy / "selected.jsonl")
    assert len(selected) == 20
    means = [r["benefit_mean"] for r in selected]
    assert means == sorted(means, reverse=True)  # quality: rank order
    assert _digests(run_copy) == before
    assert (run_copy / "report.html").stat().st_mtime_ns != report_before
    manifest = json.loads((run_copy / "manifest.json").read_text())
    assert manifest["config"]["select"]["selector"] == "quality"
    assert manifest["input_checks"]  # kept from the run that read the inputs
    assert "(reused)" not in capsys.readouterr().out


@pytest.mark.parametrize("selector", ["quality", "gdig"])  # rank order / pool order
def test_selected_pairs_stream_in_chunks(run_copy, selector):
    """write_selected reads the pairs a chunk at a time in row order and writes them in the
    file's order (spooled when that is a ranking): any chunk size gives the same file."""
    from gdig.select import Selection
    from gdig.select.writers import selected_order, write_selected

    argv = ["select", "--out", str(run_copy), "--budget", "20", "--selector", selector]
    assert main(argv) == 0
    whole = (run_copy / "selected.jsonl").read_text()
    sel = Selection.load(run_copy / "selection.npz")
    added = ("benefit_mean", "n_pos", "cluster", "rank", "top_seeds", "filled")
    by_id = {r["id"]: {k: v for k, v in r.items() if k not in added} for r in _lines(
        run_copy / "selected.jsonl")}  # fmt: skip
    top = {sel.ids.index(r["id"]): r["top_seeds"] for r in _lines(run_copy / "selected.jsonl")}
    reads = []

    class Rec:
        def __init__(self, rec: dict) -> None:
            self.rec = rec

        def to_record(self) -> dict:
            return dict(self.rec)

    def read(rows):
        reads.append(rows.tolist())
        return [Rec(by_id[sel.ids[r]]) for r in rows.tolist()]

    out = run_copy / "chunked.jsonl"
    write_selected(out, sel, read, top_seeds=_TopLookup(top), chunk=3)
    assert out.read_text() == whole
    got = _lines(out)
    assert [r["id"] for r in got] == [sel.ids[r] for r in selected_order(sel)]
    if selector == "quality":  # a ranking, not the rows' order
        means = [r["benefit_mean"] for r in got]
        assert means == sorted(means, reverse=True) and means != [
            float(sel.benefit_mean[r]) for r in sorted(selected_order(sel))
        ]
    assert [len(r) for r in reads] == [3] * 6 + [2]  # 20 rows, 3 at a time
    flat = [r for part in reads for r in part]
    assert flat == sorted(flat)  # a forward read of the pool


class _TopLookup:
    def __init__(self, top: dict) -> None:
        self.top = top

    def __getitem__(self, row: int) -> list[str]:
        return self.top[row]


def test_budget_larger_than_pool_is_refused_before_any_model_pass(tiny_llama_dir, data, tmp_path,
                                                                  capsys):  # fmt: skip
    out = tmp_path / "run"
    assert main(["run", *_args(tiny_llama_dir, data, out, "--budget", "500")]) == 2
    err = capsys.readouterr().err
    assert "--budget 500" in err and "42 pairs" in err
    assert not (out / "factors.safetensors").exists()


def test_quality_stop_still_writes_scores_and_names_flags(run_copy, capsys):
    assert main(["select", "--out", str(run_copy), "--tau", "1", "--on-short", "stop",
                 "--budget", "42"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "--on-short fill" in err and "--tau" in err and "scores.csv" in err
    rows = (run_copy / "scores.csv").read_text().splitlines()
    assert len(rows) == 43 and rows[0].startswith("id,n_pos")


def test_fill_warning_gives_the_true_count(run_copy, caplog):
    assert main(["select", "--out", str(run_copy), "--tau", "1", "--on-short", "fill",
                 "--budget", "30"]) == 0  # fmt: skip
    selected = _lines(run_copy / "selected.jsonl")
    filled = sum(1 for r in selected if r.get("filled"))
    notes = [r.message for r in caplog.records if "filled by mean benefit" in r.message]
    assert notes and f"{filled} filled by mean benefit" in notes[-1]


# ------------------------------------------------------------------ inputs


def test_label_field_accepts_booleans_and_is_checked_first(tiny_llama_dir, data, tmp_path, capsys):
    seed, pool = data
    recs = _lines(pool)
    for i, rec in enumerate(recs):
        rec["bad"] = rec.pop("noise") != "clean" if i else None
    labelled = tmp_path / "pool.jsonl"
    write_jsonl(labelled, recs)
    out = tmp_path / "run"
    argv = ["run", *_args(tiny_llama_dir, (seed, labelled), out, "--budget", "5", "--tau", "0"),
            "--label-field", "bad"]  # fmt: skip
    assert main(argv) == 2
    assert f"{labelled}:1" in capsys.readouterr().err
    assert not (out / "factors.safetensors").exists()
    recs[0]["bad"] = False
    write_jsonl(labelled, recs)
    assert main(argv) == 0


def test_seed_checks_and_field_options(tiny_llama_dir, tmp_path, caplog):
    pairs = toy_pairs(30, seed=5)
    seeds = tmp_path / "seeds.jsonl"
    # other field names (in both files), another direction, two seeds repeated in the pool
    write_jsonl(seeds, [{"id": p.id, "source": p.src, "target": p.tgt, "src_lang": "en",
                         "tgt_lang": "de"} for p in pairs[:4]])  # fmt: skip
    pool = tmp_path / "pool.jsonl"
    write_jsonl(pool, [{"id": p.id, "source": p.src, "target": p.tgt, "src_lang": "de",
                        "tgt_lang": "en"} for p in pairs[2:]])  # fmt: skip
    out = tmp_path / "run"
    args = ["--model", str(tiny_llama_dir), "--seeds", str(seeds), "--pool", str(pool), "--out",
            str(out), *FAST, "--budget", "5", "--tau", "0"]  # fmt: skip
    assert main(["run", *args]) == 2  # --src-field missing: the fields found are listed
    assert main(["run", *args, "--src-field", "source", "--tgt-field", "target"]) == 0
    text = " ".join(r.message for r in caplog.records)
    assert "en->de" in text and "de->en" in text
    assert "2 of 4 seed pairs also occur in the pool" in text
    selected = _lines(out / "selected.jsonl")
    assert all("source" in r and "src" not in r for r in selected)


def test_tsv_takes_language_flags(tiny_llama_dir, tmp_path):
    pairs = toy_pairs(20, seed=6)
    seeds, pool = tmp_path / "seeds.tsv", tmp_path / "pool.tsv"
    seeds.write_text("".join(f"{p.src}\t{p.tgt}\n" for p in pairs[:3]))
    pool.write_text("".join(f"{p.src}\t{p.tgt}\n" for p in pairs[3:]))
    out = tmp_path / "run"
    args = ["--model", str(tiny_llama_dir), "--seeds", str(seeds), "--pool", str(pool), "--out",
            str(out), *FAST, "--budget", "4", "--tau", "0", "--src-lang", "de",
            "--tgt-lang", "en"]  # fmt: skip
    assert main(["run", *args]) == 0
    assert {(r["src_lang"], r["tgt_lang"]) for r in _lines(out / "selected.jsonl")} == {
        ("de", "en")
    }


def test_old_seed_flag(tiny_llama_dir, data, tmp_path, capsys, caplog):
    seed, pool = data
    out = tmp_path / "run"
    base = ["--model", str(tiny_llama_dir), "--pool", str(pool), "--out", str(out), *FAST,
            "--budget", "4", "--tau", "0"]  # fmt: skip
    assert main(["run", *base, "--seed", "42"]) == 2
    err = capsys.readouterr().err
    assert "--seeds FILE" in err and "--random-seed" in err
    assert main(["run", *base, "--seed", str(seed)]) == 0
    assert any("deprecated" in r.message for r in caplog.records)


# ------------------------------------------------------------------ console and folder


def test_rerun_says_nothing_to_do_and_marks_reused(finished, tiny_llama_dir, data, capsys):
    args = _args(
        tiny_llama_dir, data, finished, "--budget", "10", "--tau", "0.5", "--on-short", "fill"
    )
    assert main(["run", *args, "--label-field", "noise"]) == 0
    captured = capsys.readouterr()
    assert "nothing to do" in captured.err
    assert "(reused)" in captured.out


def test_no_lock_file_left_after_success(finished):
    assert not (finished / ".gdig.lock").exists()


# ------------------------------------------------------------------ outputs that answer "why"


def test_outputs_say_why(finished, data):
    import csv

    seed_ids = {r["id"] for r in _lines(data[0])}
    with open(finished / "scores.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    ranks = sorted(int(r["rank"]) for r in rows)
    assert ranks == list(range(1, len(rows) + 1))
    best = min(rows, key=lambda r: int(r["rank"]))
    assert float(best["benefit_mean"]) == max(float(r["benefit_mean"]) for r in rows)
    for r in rows:
        assert set(filter(None, r["top_seeds"].split(";"))) <= seed_ids
    assert any(r["top_seeds"] for r in rows)
    by_id = {r["id"]: r for r in rows}
    for rec in _lines(finished / "selected.jsonl"):
        assert rec["rank"] == int(by_id[rec["id"]]["rank"])
        assert ";".join(rec["top_seeds"]) == by_id[rec["id"]]["top_seeds"]
    page = (finished / "report.html").read_text()
    assert "Why a highly ranked pair can be left out" in page and "Scale (raw scoring)" in page


def test_report_has_a_noise_kind_table(finished):
    page = (finished / "report.html").read_text()
    assert "Noise kinds" in page and "untranslated" in page
    kinds = json.loads((finished / "manifest.json").read_text())["stages"]["report"]["noise"]
    assert kinds["kinds"]["untranslated"]["pool"] == 11  # every 4th of 42
    assert sum(k["selected"] for k in kinds["kinds"].values()) == 10


# ------------------------------------------------------------------ the paper's flow


def test_finetune_first_then_score_with_the_tuned_model(tiny_llama_dir, data, tmp_path, capsys):
    out = tmp_path / "run"
    tune = ["--finetune-first", "--max-steps", "3", "--learning-rate", "1e-2"]
    args = _args(tiny_llama_dir, data, out, "--budget", "5", "--tau", "0", *tune)
    assert main(["run", *args]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    tuned = manifest["stages"]["fit"]["finetune"]
    assert tuned["steps"] == 3 and tuned["final_loss"] < tuned["first_loss"]
    assert (out / "finetuned" / "config.json").is_file()
    # another fine-tuning option changes fit's fingerprint: refused without --force-restart
    capsys.readouterr()
    assert main(["run", *args, "--learning-rate", "2e-2"]) == 2
    assert "finetune.learning_rate" in capsys.readouterr().err
    # without --finetune-first, fine-tuning options are not inputs
    plain = tmp_path / "plain"
    assert main(["run", *_args(tiny_llama_dir, data, plain, "--budget", "5", "--tau", "0")]) == 0
    again = [*_args(tiny_llama_dir, data, plain, "--budget", "5", "--tau", "0"),
             "--learning-rate", "3e-2"]  # fmt: skip
    assert main(["run", *again]) == 0 and not (plain / "finetuned").exists()


def test_finetune_and_eval_commands(tiny_llama_dir, data, tmp_path, capsys):
    tuned = tmp_path / "tuned"
    assert main(["finetune", "--model", str(tiny_llama_dir), "--data", str(data[1]),
                 "--out", str(tuned), "--max-steps", "2", "--no-progress"]) == 0  # fmt: skip
    assert (tuned / "config.json").is_file()
    hyp = tmp_path / "hyp.jsonl"
    assert main(["eval", "--model", str(tuned), "--test", str(data[0]), "--out", str(hyp),
                 "--max-new-tokens", "4", "--no-progress"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "BLEU" in text and "chrF" in text and "nrefs:1" in text
    assert len(hyp.read_text().splitlines()) == 6 and hyp.with_suffix(".json").is_file()
    assert main(["eval", "--model", str(tuned), "--out", str(hyp)]) == 2


def test_resumed_run_says_what_it_kept(tiny_llama_dir, data, tmp_path, monkeypatch, capsys):
    from gdig.engine.store import StoreWriter

    real = StoreWriter.write_shard
    calls = {"n": 0}

    def dies_at_the_third(self, *a, **k):
        calls["n"] += self.root.name == "store"  # the run's store (not the estimate's scratch)
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if stopped while scoring
        return real(self, *a, **k)

    monkeypatch.setattr(StoreWriter, "write_shard", dies_at_the_third)
    args = _args(tiny_llama_dir, data, tmp_path / "run", "--budget", "5", "--tau", "0",
                 "--shard-size", "8")  # fmt: skip
    assert main(["run", *args]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["run", *args]) == 0
    assert "resuming: 16/42 candidates already scored" in capsys.readouterr().err


def test_a_resumed_scoring_pass_reuses_the_prepared_seeds(
    finished, tiny_llama_dir, data, tmp_path, monkeypatch
):
    import gdig.engine
    from gdig.engine.seeds import load_seeds
    from gdig.engine.store import StoreWriter

    real = StoreWriter.write_shard

    def stopped(self, *a, **k):
        if self.root.name == "store":  # the run's store, not the start's estimate
            raise KeyboardInterrupt  # as if stopped once the seeds were prepared
        return real(self, *a, **k)

    out = tmp_path / "run"
    args = ["run", *_args(tiny_llama_dir, data, out, "--budget", "10", "--tau", "0.5"),
            "--on-short", "fill", "--label-field", "noise"]  # fmt: skip
    monkeypatch.setattr(StoreWriter, "write_shard", stopped)
    assert main(args) == 130
    monkeypatch.undo()
    assert (out / "seeds.pt").is_file()  # an unfinished scoring pass keeps them
    key = json.loads((out / "manifest.json").read_text())["fingerprints"]["score"]
    assert load_seeds(out / "seeds.pt", key, "cpu") is not None
    assert load_seeds(out / "seeds.pt", "another key", "cpu") is None  # other options
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    assert load_seeds(tmp_path / "bad.pt", key, "cpu") is None

    def no_preparing(*args, **kwargs):
        raise AssertionError("the seeds were prepared again")

    monkeypatch.setattr(gdig.engine, "prepare_seeds", no_preparing)
    assert main(args) == 0
    assert _digests(out) == _digests(finished)  # the same bytes as the uninterrupted run
    assert not (out / "seeds.pt").exists()  # a finished scoring pass keeps no copy
