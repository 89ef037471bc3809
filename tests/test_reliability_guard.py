"""Resuming a run folder with another model, layer set, projection, random seed, seed set or
pool is refused with a message naming what differs; --force-restart recomputes instead."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers_models import save_tiny, toy_pairs

from gdig.cli import main
from gdig.data.pairs import write_jsonl

FAST = ["--no-progress", "--factor-samples", "24", "--k-in", "4", "--k-out", "4", "--rank", "4",
        "--budget", "6", "--tau", "0", "--batch-size", "4"]  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_llama_dir) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("guard")
    paths = {
        "model": tiny_llama_dir,
        "other_model": save_tiny("llama", d / "llama_b", seed=1),  # same shapes, other weights
        "seed": d / "seed.jsonl",
        "pool": d / "pool.jsonl",
        "other_seed": d / "seed_b.jsonl",
        "other_pool": d / "pool_b.jsonl",
        "out": d / "run",
    }
    pairs = toy_pairs(30, seed=5)
    write_jsonl(paths["seed"], pairs[:5])
    write_jsonl(paths["pool"], pairs[5:])
    write_jsonl(paths["other_seed"], pairs[:4])
    write_jsonl(paths["other_pool"], pairs[6:])
    assert main(["run", *_args(paths)]) == 0
    return paths


def _args(p: dict[str, Path], **swap: str) -> list[str]:
    model, seed, pool = (str(p[swap.get(k, k)]) for k in ("model", "seed", "pool"))
    return ["--model", model, "--seeds", seed, "--pool", pool, "--out", str(p["out"]), *FAST]


@pytest.mark.parametrize(
    ("swap", "extra", "expected"),
    [
        ({"model": "other_model"}, [], "inputs.model.files.model.safetensors.sha256"),
        ({}, ["--layers", r"layers\.0\.mlp\.down_proj"], "layers: None -> "),
        ({}, ["--k-in", "2"], "config.factors.k_in: 4 -> 2"),
        ({}, ["--proj-seed", "7"], "config.factors.proj_seed: 0 -> 7"),
        ({}, ["--factor-seed", "3"], "config.factors.factor_seed: 0 -> 3"),
        ({}, ["--rank", "2"], "config.scoring.rank: 4 -> 2"),
        ({}, ["--dtype", "float64"], "config.read.dtype: 'float32' -> 'float64'"),
        ({"seed": "other_seed"}, [], "inputs.seeds.sha256"),
        ({"pool": "other_pool"}, [], "inputs.pool.sha256"),
    ],
)
def test_changed_input_or_option_is_refused(base, capsys, swap, extra, expected):
    before = (base["out"] / "manifest.json").read_bytes()
    capsys.readouterr()
    assert main(["run", *_args(base, **swap), *extra]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "--force-restart" in err
    assert (base["out"] / "manifest.json").read_bytes() == before  # nothing touched


def test_selection_options_are_redone_without_force(base, tmp_path):
    """select and report are cheap and what the command asks for: no --force-restart."""
    out = tmp_path / "run"
    shutil.copytree(base["out"], out)
    factors = (out / "factors.safetensors").read_bytes()
    assert main(["run", *_args(dict(base, out=out)), "--random-seed", "9"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["select"]["random_seed"] == 9
    assert (out / "factors.safetensors").read_bytes() == factors


def test_force_restart_recomputes_with_the_new_model(base, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(base["out"], out)
    paths = dict(base, out=out)
    assert main(["run", *_args(paths, model="other_model"), "--force-restart"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["model"]["name"] == str(base["other_model"])
    old = json.loads((base["out"] / "manifest.json").read_text())
    assert manifest["fingerprints"]["fit"] != old["fingerprints"]["fit"]
    # the scores were recomputed with the other model, not carried over
    assert (out / "scores.csv").read_bytes() != (base["out"] / "scores.csv").read_bytes()


def test_an_interrupted_stage_is_guarded_too(base, tmp_path, monkeypatch, capsys):
    import gdig.engine

    out = tmp_path / "run"
    paths = dict(base, out=out)

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt  # as if killed while scoring

    monkeypatch.setattr(gdig.engine, "score_candidates", interrupted)
    assert main(["run", *_args(paths)]) == 130
    monkeypatch.undo()
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["fit"]["done"] and stages["score"] == {"done": False}
    capsys.readouterr()
    assert main(["run", *_args(paths), "--rank", "2"]) == 2
    err = capsys.readouterr().err
    assert "stages score would change" in err and "config.scoring.rank: 4 -> 2" in err
    assert main(["run", *_args(paths)]) == 0  # the same command resumes
