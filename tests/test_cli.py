"""The `gdig` command end to end on a tiny random model: every stage, config files,
help, resume and the error paths a user meets first."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers_models import toy_pairs

from gdig.cli import build_parser, main
from gdig.data.pairs import write_jsonl

FAST = ["--no-progress", "--factor-samples", "40", "--k-in", "4", "--k-out", "4", "--rank", "4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("data")
    pairs = toy_pairs(48, seed=3)
    seed, pool = d / "seed.jsonl", d / "pool.jsonl"
    write_jsonl(seed, [p.to_record() for p in pairs[:6]])
    recs = [dict(p.to_record(), origin="toy", noise="clean") for p in pairs[6:]]
    for rec in recs[::4]:
        rec["tgt"], rec["noise"] = rec["src"], "untranslated"
    write_jsonl(pool, recs)
    return seed, pool


def _args(model: Path, data: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    seed, pool = data
    return ["--model", str(model), "--seeds", str(seed), "--pool", str(pool), "--out", str(out),
            *FAST, *extra]  # fmt: skip


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_run_writes_every_output(tiny_llama_dir, data, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", *_args(tiny_llama_dir, data, out, "--budget", "10", "--tau", "0.5",
                             "--on-short", "fill", "--label-field", "noise")])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    for name in ("selected.jsonl", "scores.csv", "manifest.json", "report.html",
                 "factors.safetensors", "store"):  # fmt: skip
        assert (out / name).exists(), name
    rows = _read_csv(out / "scores.csv")
    pool_ids = [json.loads(x)["id"] for x in data[1].read_text().splitlines()]
    assert [r["id"] for r in rows] == pool_ids  # pool order
    assert sum(int(r["selected"]) for r in rows) == 10
    selected = [json.loads(x) for x in (out / "selected.jsonl").read_text().splitlines()]
    assert len(selected) == 10 and len({s["id"] for s in selected}) == 10
    # every input field survives, plus the scores
    assert all(s["origin"] == "toy" and "benefit_mean" in s and "cluster" in s for s in selected)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"fit", "score", "select", "report"}
    assert manifest["inputs"]["pool"]["sha256"]
    text = capsys.readouterr().out
    assert "report:" in text and "noise detection" in text


def test_stages_one_by_one_match_run(tiny_llama_dir, data, tmp_path):
    """Each verb takes only its stages' options; the rest come from the run folder."""
    whole, staged = tmp_path / "whole", tmp_path / "staged"
    seed, pool = data
    select_opts = ("--budget", "8", "--tau", "0", "--random-seed", "5")
    assert main(["run", *_args(tiny_llama_dir, data, whole, *select_opts)]) == 0
    common = ["--out", str(staged), "--no-progress"]
    fit = ["--model", str(tiny_llama_dir), "--pool", str(pool), "--factor-samples", "40",
           "--k-in", "4", "--k-out", "4"]  # fmt: skip
    assert main(["fit", *common, *fit]) == 0
    assert main(["score", *common, "--seeds", str(seed), "--rank", "4"]) == 0
    assert main(["select", *common, *select_opts]) == 0
    assert main(["report", *common]) == 0
    assert (whole / "scores.csv").read_text() == (staged / "scores.csv").read_text()
    assert (whole / "selected.jsonl").read_text() == (staged / "selected.jsonl").read_text()


def test_rerun_resumes_and_changed_option_is_refused(tiny_llama_dir, data, tmp_path, capsys):
    out = tmp_path / "run"
    args = _args(tiny_llama_dir, data, out, "--budget", "5", "--tau", "0")
    assert main(["run", *args]) == 0
    before = json.loads((out / "manifest.json").read_text())["stages"]["score"]
    assert main(["run", *args]) == 0  # nothing to redo: the score record is kept as is
    after = json.loads((out / "manifest.json").read_text())["stages"]["score"]
    assert before == after
    capsys.readouterr()
    assert main(["run", *args, "--rank", "2"]) == 2
    err = capsys.readouterr().err
    assert "rank: 4 -> 2" in err and "--force-restart" in err
    assert main(["run", *args, "--rank", "2", "--force-restart"]) == 0


def test_config_file_yaml_and_toml(tiny_llama_dir, data, tmp_path):
    seed, pool = data
    yaml_cfg = tmp_path / "c.yaml"
    yaml_cfg.write_text(  # `seed` is the old name of `seeds`: config files keep working
        f"model: {tiny_llama_dir}\nseed: {seed}\npool: {pool}\nbudget: 6\ntau: 0.0\n"
        "random_seed: 1\nfactor_samples: 40\nrank: 4\nk_in: 4\nk_out: 4\nprogress: false\n"
    )
    out_y = tmp_path / "y"
    assert main(["run", "--config", str(yaml_cfg), "--out", str(out_y)]) == 0
    toml_cfg = tmp_path / "c.toml"
    toml_cfg.write_text(
        f'model = "{tiny_llama_dir}"\nseeds = "{seed}"\npool = "{pool}"\nbudget = 6\ntau = 0.0\n'
        "random_seed = 1\nfactor_samples = 40\nrank = 4\nk_in = 4\nk_out = 4\nprogress = false\n"
    )
    out_t = tmp_path / "t"
    assert main(["run", "--config", str(toml_cfg), "--out", str(out_t)]) == 0
    assert (out_y / "selected.jsonl").read_text() == (out_t / "selected.jsonl").read_text()
    manifest = json.loads((out_y / "manifest.json").read_text())
    assert manifest["config"]["select"]["budget"] == 6


def test_config_file_unknown_key(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("budgett: 3\n")
    assert main(["run", "--config", str(cfg)]) == 2
    assert "unknown option(s) budgett" in capsys.readouterr().err


def _help(verb: str, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_option(capsys):
    text = _help("run", capsys)
    for flag in ("--model", "--seeds", "--pool", "--budget", "--tau", "--clusters", "--rank",
                 "--k-in", "--damping", "--method", "--exact", "--selector", "--seed-group",
                 "--scoring", "--random-seed", "--layers", "--batch-size", "--device",
                 "--label-field", "--src-field", "--src-lang"):  # fmt: skip
        assert flag in text, flag
    assert "{gdig,quality,diversity,random" in text and "{ekfac,kfac}" in text
    assert "Config(" not in text and "Config." not in text  # no dataclass reprs
    parser = build_parser()
    assert {"run", "fit", "score", "select", "report", "demo"} <= set(
        parser._subparsers._group_actions[0].choices
    )


@pytest.mark.parametrize(
    ("verb", "has", "lacks"),
    [
        ("fit", ["--model", "--pool", "--k-in", "--method", "--batch-size"],
         ["--budget", "--damping", "--rank", "--label-field", "--seeds"]),
        ("score", ["--seeds", "--damping", "--rank", "--top-k"],
         ["--budget", "--k-in", "--method", "--label-field"]),
        ("select", ["--budget", "--selector", "--tau", "--out", "--device", "--pool",
                    "--label-field", "--name"],
         ["--k-in", "--damping", "--model", "--seeds", "--batch-size", "--dry-run"]),
        ("report", ["--label-field", "--out", "--pool", "--name"],
         ["--k-in", "--damping", "--budget", "--model", "--dry-run"]),
        ("run", ["--dry-run", "--budget", "--model"], ["--name"]),
    ],
)  # fmt: skip
def test_each_verb_lists_only_its_own_options(capsys, verb, has, lacks):
    text = _help(verb, capsys)
    for flag in has:
        assert flag in text, (verb, flag)
    for flag in lacks:
        assert f"{flag} " not in text and f"{flag}\n" not in text, (verb, flag)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda a, d: a.__setitem__(a.index("--pool") + 1, str(d / "nope.jsonl")), "not found"),
        (lambda a, d: a.__setitem__(a.index("--model") + 1, str(d)), "no config.json"),
    ],
)
def test_missing_inputs(tiny_llama_dir, data, tmp_path, capsys, mutate, expected):
    args = _args(tiny_llama_dir, data, tmp_path / "run")
    mutate(args, tmp_path)
    assert main(["run", *args]) == 2
    assert expected in capsys.readouterr().err


def test_malformed_pool_line_names_file_and_line(tiny_llama_dir, data, tmp_path, capsys):
    bad = tmp_path / "pool.jsonl"
    lines = data[1].read_text().splitlines()
    lines[3] = '{"src": "x", "tgt": '
    bad.write_text("\n".join(lines) + "\n")
    args = _args(tiny_llama_dir, (data[0], bad), tmp_path / "run")
    assert main(["run", *args]) == 2
    assert f"{bad}:4:" in capsys.readouterr().err


def test_empty_pool_and_empty_seed(tiny_llama_dir, data, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["run", *_args(tiny_llama_dir, (data[0], empty), tmp_path / "a")]) == 2
    assert "empty.jsonl" in capsys.readouterr().err
    assert main(["run", *_args(tiny_llama_dir, (empty, data[1]), tmp_path / "b")]) == 2
    assert "empty.jsonl" in capsys.readouterr().err


def test_budget_larger_than_pool_stops_with_numbers(tiny_llama_dir, data, tmp_path, capsys):
    assert main(["run", *_args(tiny_llama_dir, data, tmp_path / "run", "--budget", "500")]) == 2
    err = capsys.readouterr().err
    assert "500" in err and "42" in err  # budget and pool size
