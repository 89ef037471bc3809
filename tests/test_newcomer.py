"""The newcomer's first hour, round 3 (issue 22): each test drives `gdig` as a user types
it, on a tiny random model: defaults that finish, errors that name the verb and the fix,
options that a failed command leaves alone, named selections, budgets as a share."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from helpers_models import toy_pairs

from gdig.cli import main
from gdig.data.pairs import write_jsonl
from gdig.engine.config import EngineConfig

FAST = ["--no-progress", "--factor-samples", "40", "--k-in", "4", "--k-out", "4", "--rank", "4"]
POOL = 42


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """6 seeds and a pool of 42 with a `noise` label; every third target is just '...'."""
    d = tmp_path_factory.mktemp("inputs")
    pairs = toy_pairs(6 + POOL, seed=11)
    seeds, pool = d / "seeds.jsonl", d / "pool.jsonl"
    write_jsonl(seeds, [p.to_record() for p in pairs[:6]])
    recs = []
    for i, p in enumerate(pairs[6:]):
        rec = dict(p.to_record(), noise="clean")
        if i % 3 == 0:
            rec["tgt"], rec["noise"] = "...", "empty"
        recs.append(rec)
    write_jsonl(pool, recs)
    return seeds, pool


def _run_args(model: Path, inputs: tuple[Path, Path], out: Path) -> list[str]:
    seeds, pool = inputs
    return ["run", "--model", str(model), "--seeds", str(seeds), "--pool", str(pool),
            "--out", str(out), *FAST]  # fmt: skip


@pytest.fixture(scope="module")
def defaults_run(tiny_llama_dir, inputs, tmp_path_factory):
    """`gdig run` with no selection option but --budget: every default as shipped."""
    out = tmp_path_factory.mktemp("runs") / "first"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main([*_run_args(tiny_llama_dir, inputs, out), "--budget", "30"])
    return out, status, stdout.getvalue(), stderr.getvalue()


@pytest.fixture
def run(defaults_run, tmp_path) -> Path:
    """A copy of the finished run, free to change."""
    out = tmp_path / "run"
    shutil.copytree(defaults_run[0], out)
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _saved(out: Path) -> dict:
    """The options a run folder keeps for its next command (`run`'s are per command)."""
    config = json.loads((out / "manifest.json").read_text())["config"]
    return {k: v for k, v in config.items() if k != "run"}


def _one_error(err: str, verb: str) -> str:
    """The single line a user error prints: ``gdig VERB: error: ...``, no traceback."""
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.strip()]
    errors = [x for x in lines if "error:" in x]
    assert len(errors) == 1 and errors[0].startswith(f"gdig {verb}: error: "), err
    return errors[0]


# ------------------------------------------------------------------ 1: defaults that finish


def test_default_run_finishes_and_says_what_was_filled(defaults_run):
    out, status, text, _ = defaults_run
    assert status == 0
    rows = _csv(out / "scores.csv")
    passed = sum(int(r["passed_quality"]) for r in rows)
    selected = _lines(out / "selected.jsonl")
    filled = sum(1 for r in selected if r.get("filled"))
    assert len(selected) == 30 and filled == max(0, 30 - passed)
    assert f"passed quality     {passed} of {POOL} " in text
    assert "--tau 0.9" in text and "--on-short fill" in text
    if filled:  # the toy pool lets few pass every seed group: the fill is said aloud
        assert f"of which {filled} filled by mean benefit: only {passed} passed" in text


def test_budget_above_the_pool_is_refused_at_select(run, capsys):
    before = _saved(run)
    assert main(["select", "--out", str(run), "--budget", "500"]) == 2
    line = _one_error(capsys.readouterr().err, "select")
    assert f"--budget 500 is larger than the scored pool ({POOL} pairs)" in line
    assert "--tau" not in line  # not the quality filter's advice
    assert _saved(run) == before


def test_budget_above_the_pool_is_refused_before_any_model_pass(
    tiny_llama_dir, inputs, tmp_path, capsys
):
    out = tmp_path / "new"
    assert main([*_run_args(tiny_llama_dir, inputs, out), "--budget", "500"]) == 2
    line = _one_error(capsys.readouterr().err, "run")
    assert f"--budget 500 is larger than the pool ({inputs[1]}: {POOL} pairs)" in line
    assert not out.exists()  # the failed first attempt leaves no folder behind


# ------------------------------------------------------------------ 4: usage errors


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["run", "--budjet", "40"], "did you mean --budget?"),
        (["select", "--bud", "6"], "did you mean --budget?"),
        (["report", "--label-fiel", "noise"], "did you mean --label-field?"),
        (["select", "--seed", "42"], "did you mean --random-seed"),
        (["fit", "--budget", "3"], "--budget is an option of gdig run, gdig demo, gdig select"),
        (["score", "--tua", "1"], "--tau is an option of"),
        (["finetune", "--daat", "x"], "did you mean --data?"),
        (["eval", "--tset", "x"], "did you mean --test?"),
        (["demo", "--out"], "expected one argument"),
    ],
)
def test_no_abbreviations_and_the_verb_is_named(argv, hint, run, capsys):
    before = _saved(run)
    with pytest.raises(SystemExit) as exc:
        main([*argv[:1], "--out", str(run), *argv[1:]] if argv[0] != "demo" else argv)
    assert exc.value.code == 2
    line = _one_error(capsys.readouterr().err, argv[0])
    assert hint in line
    assert _saved(run) == before  # nothing was saved: `--seed 42` is no --seed-group 42


def test_a_mistyped_verb_or_choice_is_named_with_the_closest(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["slect", "--out", "x"])
    assert exc.value.code == 2
    assert "did you mean 'select'?" in capsys.readouterr().err
    assert main(["select", "--out", "x", "--selector", "qualty"]) == 2
    assert "(did you mean 'quality'?)" in _one_error(capsys.readouterr().err, "select")


@pytest.mark.parametrize("verb", ["run", "demo", "fit", "score", "select", "report"])
@pytest.mark.parametrize("mistake", ["missing file", "folder"])
def test_every_verb_turns_a_bad_path_into_one_line(
    verb, mistake, run, tiny_llama_dir, tmp_path, capsys
):
    bad = str(tmp_path / "nope.jsonl") if mistake == "missing file" else str(tmp_path)
    flag = "--seeds" if verb == "score" else "--pool"
    out = run if verb in ("select", "report", "score") else tmp_path / "new"
    model = ["--model", str(tiny_llama_dir)] if verb in ("run", "fit") else []
    before = (run / "manifest.json").read_text()
    assert main([verb, "--out", str(out), *model, flag, bad, "--no-progress"]) == 2
    line = _one_error(capsys.readouterr().err, verb)
    assert f"{flag} {bad}: " in line
    assert ("file not found" if mistake == "missing file" else "is a folder") in line
    assert (run / "manifest.json").read_text() == before
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------ 5: saved options


def test_a_failed_report_keeps_the_saved_label_field(run, capsys):
    before = _saved(run)
    assert main(["report", "--out", str(run), "--label-field", "nolabel"]) == 2
    line = _one_error(capsys.readouterr().err, "report")
    assert "field 'nolabel': missing; fields found: id, " in line
    assert all(f in line.split("fields found: ")[1] for f in ("src", "tgt", "noise"))
    assert _saved(run) == before
    assert main(["select", "--out", str(run), "--budget", "12"]) == 0  # not poisoned
    assert len(_lines(run / "selected.jsonl")) == 12
    assert _saved(run)["report"] == before["report"]


def test_a_failed_select_keeps_the_saved_options(run, capsys):
    before = _saved(run)
    argv = ["select", "--out", str(run), "--tau", "1", "--on-short", "stop", "--budget", "40"]
    assert main(argv) == 1  # too few pass every seed: stop is an error
    assert "--on-short fill" in capsys.readouterr().err
    assert _saved(run) == before
    assert main(["select", "--out", str(run)]) == 0  # the saved options, redone
    assert len(_lines(run / "selected.jsonl")) == 30


def test_select_takes_the_label_field(run, capsys):
    assert main(["select", "--out", str(run), "--budget", "10", "--label-field", "noise"]) == 0
    assert _saved(run)["report"]["label_field"] == "noise"
    assert "noise detection" in capsys.readouterr().out


def test_select_after_the_pool_moved(run, inputs, tmp_path, capsys):
    manifest = json.loads((run / "manifest.json").read_text())
    gone = str(tmp_path / "moved_away.jsonl")  # where the run's pool was: now empty
    manifest["inputs"]["pool"]["path"] = manifest["config"]["inputs"]["pool"] = gone
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert main(["select", "--out", str(run), "--budget", "12"]) == 2
    assert f"--pool {gone}: file not found" in _one_error(capsys.readouterr().err, "select")
    copy = tmp_path / "elsewhere" / "pool.jsonl"
    copy.parent.mkdir()
    shutil.copy(inputs[1], copy)
    assert main(["select", "--out", str(run), "--budget", "12", "--pool", str(copy)]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["inputs"]["pool"]["path"] == str(copy.resolve())  # the copy replaces it
    other = tmp_path / "other.jsonl"
    other.write_text(copy.read_text().replace('"clean"', '"clean "', 1))
    assert main(["select", "--out", str(run), "--pool", str(other)]) == 2  # not the same pool
    assert "inputs.pool" in _one_error(capsys.readouterr().err, "select")


# ------------------------------------------------------------------ 6: named selections


def test_named_selections_sit_side_by_side(run, capsys):
    plain = (run / "selected.jsonl").read_bytes()
    before = _saved(run)
    assert main(["select", "--out", str(run), "--name", "b12", "--budget", "12"]) == 0
    text = capsys.readouterr().out
    argv = ["select", "--out", str(run), "--name", "q5", "--selector", "quality", "--budget", "5",
            "--scoring", "cosine"]  # fmt: skip
    assert main(argv) == 0
    for name, n in (("b12", 12), ("q5", 5)):
        folder = run / "selections" / name
        assert len(_lines(folder / "selected.jsonl")) == n
        assert (folder / "report.html").is_file() and (folder / "scores.csv").is_file()
    assert (run / "selected.jsonl").read_bytes() == plain  # the run's own stays
    assert _saved(run) == before
    # every option in effect is printed, and scores.csv names its scoring
    assert "--budget 12 --selector gdig --tau 0.9" in text and "--on-short fill" in text
    assert str(run / "selections" / "b12" / "selected.jsonl") in text
    assert {r["scoring"] for r in _csv(run / "selections" / "q5" / "scores.csv")} == {"cosine"}
    assert {r["scoring"] for r in _csv(run / "scores.csv")} == {"raw"}
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["selections"]["q5"]["config"]["select"]["selector"] == "quality"
    assert manifest["selections"]["q5"]["stages"]["select"]["selected"] == 5
    assert main(["report", "--out", str(run), "--name", "b12", "--label-field", "noise"]) == 0
    assert "noise detection" in capsys.readouterr().out
    assert main(["select", "--out", str(run), "--name", "../up"]) == 2
    assert "--name: use letters" in _one_error(capsys.readouterr().err, "select")


# ------------------------------------------------------------------ 7: budget as a share


@pytest.mark.parametrize(("budget", "expected"), [("25%", 11), ("0.5", 21), ("1.0", POOL)])
def test_budget_as_a_fraction_or_percentage(run, budget, expected):
    assert main(["select", "--out", str(run), "--budget", budget]) == 0
    assert len(_lines(run / "selected.jsonl")) == expected
    assert _saved(run)["select"]["budget"] == float(budget.rstrip("%")) / (
        100 if "%" in budget else 1
    )


def test_budget_share_in_a_config_file(run, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text('budget: "10%"\n')
    assert main(["select", "--out", str(run), "--config", str(cfg)]) == 0
    assert len(_lines(run / "selected.jsonl")) == 4  # 4.2 of 42


def test_a_count_budget_is_a_whole_number(run, capsys):
    assert main(["select", "--out", str(run), "--budget", "2.5"]) == 2
    assert "a fraction must be in (0, 1]" in _one_error(capsys.readouterr().err, "select")


# ------------------------------------------------------------------ 8: cost before a long run


def test_dry_run_estimates_and_writes_nothing(tiny_llama_dir, inputs, tmp_path, capsys):
    out = tmp_path / "runs" / "x"
    assert main([*_run_args(tiny_llama_dir, inputs, out), "--budget", "10", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "the inputs pass every check; nothing was written" in text
    for stage in ("fit    ~", "score  ~", "disk   ~"):
        assert stage in text, text
    assert "(40 pool pairs, ekfac)" in text and f"{POOL} candidates" in text  # --factor-samples
    assert not (tmp_path / "runs").exists()  # no run folder, no scratch folder left


@pytest.mark.parametrize(
    ("small", "large", "fixed", "per"),
    [
        ((4, 3.0), (8, 5.0), 1.0, 0.5),  # eigendecomposition 1 s, 0.5 s an example
        ((4, 5.0), (8, 4.0), 0.0, 0.5),  # the larger ran faster (noise): all per example
        ((4, 0.5), (8, 6.0), 0.0, 0.75),  # a slope above 6/8 means a negative fixed cost
    ],
)
def test_an_estimate_tells_fixed_from_per_item_cost(small, large, fixed, per):
    from gdig.pipeline.estimate import Line

    line = Line.fit(small, large)
    assert line.fixed == pytest.approx(fixed) and line.per_item == pytest.approx(per)
    assert line.at(1000) == pytest.approx(fixed + 1000 * per)


def test_dry_run_leaves_a_finished_run_as_it_is(run, tiny_llama_dir, inputs, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    manifest = (run / "manifest.json").read_bytes()
    args = [*_run_args(tiny_llama_dir, inputs, run), "--budget", "20", "--dry-run"]
    assert main(args) == 0
    assert (run / "manifest.json").read_bytes() == manifest
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_a_run_says_what_it_will_cost_and_each_stage_start(defaults_run):
    """stderr not a terminal (a log, a CI job): the estimate, then a line as each stage
    starts (loading the model first), then the line it ends with."""
    lines = [x for x in defaults_run[3].splitlines() if x.startswith("gdig: ")]
    order = [
        next(i for i, x in enumerate(lines) if x.startswith(prefix))
        for prefix in ("gdig: estimate: fit", "gdig: estimate: score", "gdig: estimate: disk",
                       "gdig: fit: loading", "gdig: fit: factors of", "gdig: score: preparing",
                       "gdig: select: gdig selector, budget 30", "gdig: report: writing")
    ]  # fmt: skip
    assert order == sorted(order)


def test_verbose_shows_no_faiss_loader_lines(run):
    import subprocess
    import sys

    code = (
        "import sys; from gdig.cli import main\n"
        "status = main(sys.argv[1:])\n"
        "assert 'faiss' in sys.modules, 'k-means never loaded faiss'\n"
        "sys.exit(status)\n"
    )
    argv = [sys.executable, "-c", code, "select", "--out", str(run), "--budget", "9", "-v"]
    got = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr
    assert "faiss.loader" not in got.stderr and "Could not load library" not in got.stderr


# ------------------------------------------------------------------ 11: the report's table


def test_report_lists_the_selected_pairs_with_their_label(run):
    import re

    assert main(["select", "--out", str(run), "--budget", "10", "--label-field", "noise"]) == 0
    page = (run / "report.html").read_text()
    table = page[page.index('id="selected-pairs"') :]
    table = table[: table.index("</table>")]
    head = re.findall(r"<th[^>]*>([^<]*)</th>", table)
    assert head[:6] == ["rank", "id", "mean benefit", "n_pos", "cluster", "filled"]
    assert head[6:] == ["noise", "source", "target"]
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1])
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in rows]
    selected = {r["id"]: r for r in _lines(run / "selected.jsonl")}
    assert sorted(c[1] for c in cells) == sorted(selected)
    for c in cells:  # the label beside each pair is the pool's
        assert c[6] == selected[c[1]]["noise"]
        assert c[5] == ("filled" if selected[c[1]].get("filled") else "")
    ranks = [int(c[0]) for c in cells]
    assert ranks == sorted(ranks)  # best first
    assert "gdigFilter" in page and "gdigSort" in page  # filter box, sortable columns


# ------------------------------------------------------------------ 9: the run folder's size


def test_factors_are_kept_at_the_precision_scoring_uses(tiny_llama_dir, tmp_path):
    """Scoring in float32 casts the eigenbases to float32: stored so, they give it the
    same bits at half the bytes; the eigen-diagonal and damping agree to float32."""
    import torch

    from gdig.engine import Factors, fit_factors
    from gdig.model import load_model

    model, tok = load_model(tiny_llama_dir)
    cfg = EngineConfig.from_flat(factor_samples=12, k_in=4, k_out=4)
    factors = fit_factors(model, tok, toy_pairs(12, seed=2), cfg, progress=False)
    wide = Factors.load(factors.save(tmp_path / "f64.safetensors"), model, cfg.factors)
    path = factors.save(tmp_path / "f32.safetensors", dtype=torch.float32)
    narrow = Factors.load(path, model, cfg.factors)
    values = sum(
        getattr(lf, k).numel() for lf in wide.layers + wide.projected for k in ("q_a", "q_s", "lam")
    )
    saved = (tmp_path / "f64.safetensors").stat().st_size - path.stat().st_size
    assert saved >= 4 * values  # 4 bytes a value fewer (the small eigenvalue vectors too)
    for a, b in zip(wide.layers + wide.projected, narrow.layers + narrow.projected, strict=True):
        assert b.q_a.dtype == torch.float64  # load gives float64 back either way
        for x, y in zip(a.bases("cpu", torch.float32), b.bases("cpu", torch.float32), strict=True):
            assert torch.equal(x, y)
        da, db = (
            a.denominator(cfg.scoring, "cpu", torch.float32),
            b.denominator(cfg.scoring, "cpu", torch.float32),
        )
        torch.testing.assert_close(da, db, rtol=1e-6, atol=0)


def test_a_finished_run_keeps_float32_factors_and_no_prepared_seeds(defaults_run):
    from safetensors import safe_open

    out = defaults_run[0]
    with safe_open(str(out / "factors.safetensors"), framework="pt") as f:
        dtypes = {str(f.get_tensor(k).dtype) for k in f.keys()}
    assert dtypes == {"torch.float32"}
    assert not (out / "seeds.pt").exists()  # only an unfinished scoring pass needs them


# ------------------------------------------------------------------ 11: inputs said plainly


def test_seeds_have_field_options_of_their_own(tiny_llama_dir, inputs, tmp_path, capsys):
    seeds = tmp_path / "seeds.jsonl"
    write_jsonl(seeds, [{"id": r["id"], "source": r["src"], "target": r["tgt"]}
                        for r in _lines(inputs[0])])  # fmt: skip
    args = [*_run_args(tiny_llama_dir, (seeds, inputs[1]), tmp_path / "r"), "--budget", "5"]
    assert main(args) == 2  # the pool's fields do not fit the seeds: the fields are listed
    line = _one_error(capsys.readouterr().err, "run")
    assert str(seeds) in line and "source" in line and "target" in line
    assert main([*args, "--seeds-src-field", "source", "--seeds-tgt-field", "target"]) == 0
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["inputs"]["seeds"]["fields"] == ["source", "target"]  # part of its identity


def test_a_pool_without_target_language_is_said(tiny_llama_dir, tmp_path, caplog):
    pairs = toy_pairs(20, seed=7)
    seeds, pool = tmp_path / "seeds.tsv", tmp_path / "pool.tsv"
    seeds.write_text("".join(f"{p.src}\t{p.tgt}\n" for p in pairs[:3]))
    pool.write_text("".join(f"{p.src}\t{p.tgt}\n" for p in pairs[3:]))
    for out, langs in (("r", []), ("r2", ["--src-lang", "de", "--tgt-lang", "en"])):
        caplog.clear()
        args = [*_run_args(tiny_llama_dir, (seeds, pool), tmp_path / out), "--budget", "4"]
        assert main([*args, *langs]) == 0
        said = [r.message for r in caplog.records if "name no target language" in r.message]
        if langs:
            assert not said
        else:
            assert said and said[0].startswith("17 of 17 pool pairs") and "--tgt-lang" in said[0]
