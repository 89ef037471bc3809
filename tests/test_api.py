"""The Python API against the command and the files it writes: gdig.run, open_run,
Run.scores/selected/select, gdig.score and the errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_models import toy_pairs

import gdig
from gdig.cli import main
from gdig.data.pairs import write_jsonl

SIZES = {"factor_samples": 0, "k_in": 4, "k_out": 4, "rank": 4, "batch_size": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("api")
    pairs = toy_pairs(40, seed=7)
    seeds, pool = d / "seeds.jsonl", d / "pool.jsonl"
    write_jsonl(seeds, [p.to_record() for p in pairs[:6]])
    write_jsonl(pool, [dict(p.to_record(), origin="toy") for p in pairs[6:]])
    return {"dir": d, "seeds": seeds, "pool": pool, "pairs": pairs}


@pytest.fixture(scope="module")
def made(tiny_llama_dir, data) -> gdig.Run:
    out = data["dir"] / "run"
    return gdig.run(
        model=tiny_llama_dir, seeds=data["seeds"], pool=data["pool"], out=out, budget=8,
        tau=0.5, on_short="fill", **SIZES,
    )  # fmt: skip


def test_run_makes_what_the_command_makes(tiny_llama_dir, data, made, tmp_path):
    out = tmp_path / "cli"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SIZES.items()]
    rc = main(["run", "--model", str(tiny_llama_dir), "--seeds", str(data["seeds"]),
               "--pool", str(data["pool"]), "--out", str(out), "--budget", "8", "--tau", "0.5",
               "--on-short", "fill", "--no-progress", *flags])  # fmt: skip
    assert rc == 0
    for name in ("scores.csv", "selected.jsonl"):
        assert (out / name).read_bytes() == (made.out / name).read_bytes(), name
    assert (
        made.reused == []
        and made.manifest.fingerprints
        == json.loads((out / "manifest.json").read_text())["fingerprints"]
    )


def test_scores_are_the_csv_as_a_table(made):
    with open(made.out / "scores.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    table = made.scores()
    assert table.column_names == list(rows[0])
    assert table.column("id").to_pylist() == [r["id"] for r in rows]
    assert table.column("n_pos").to_pylist() == [int(r["n_pos"]) for r in rows]
    np.testing.assert_array_equal(
        table.column("benefit_mean").to_numpy(), [float(r["benefit_mean"]) for r in rows]
    )
    assert table.column("top_seeds").to_pylist() == [r["top_seeds"] for r in rows]


def test_selected_are_the_jsonl_records(made):
    lines = (made.out / "selected.jsonl").read_text(encoding="utf-8").splitlines()
    got = list(made.selected())
    assert got == [json.loads(x) for x in lines] and len(got) == 8
    assert all(r["origin"] == "toy" for r in got)  # every input field kept


def test_reselect_loads_no_model(made, monkeypatch):
    import gdig.model

    def no_model(*_a, **_k):
        raise AssertionError("select must not load the model")

    monkeypatch.setattr(gdig.model, "load_model", no_model)
    sel = made.select(budget=5, selector="quality")
    assert int(sel.selected.sum()) == 5 and sel.config.selector == "quality"
    assert gdig.open_run(made.out).options.select.budget == 5
    assert sum(1 for _ in made.selected()) == 5


def test_score_in_memory_matches_a_run(tiny_llama_dir, data, made):
    pairs, pool_ids = data["pairs"], [p.id for p in data["pairs"][6:]]
    table = gdig.score(str(tiny_llama_dir), seeds=pairs[:6], pairs=pairs[6:], **SIZES)
    assert table.column("id").to_pylist() == pool_ids
    run = made.scores()
    # the same factors (fitted on every pool pair), seeds and batches: the same numbers,
    # to the rounding of the run's factors, which go through a file
    np.testing.assert_allclose(
        table.column("benefit_mean").to_numpy(), run.column("benefit_mean").to_numpy(),
        rtol=1e-4, atol=1e-6,
    )  # fmt: skip
    assert table.column("n_pos").to_pylist() == run.column("n_pos").to_pylist()
    # dicts are pairs too
    records = [p.to_record() for p in pairs[6:10]]
    small = gdig.score(str(tiny_llama_dir), seeds=pairs[:6], pairs=records, **SIZES)
    assert small.num_rows == 4 and all(small.column("finite").to_pylist())


def test_errors_name_the_bad_input(data, made, tmp_path):
    with pytest.raises(gdig.UsageError, match=r"gdig.run\(\): unknown option\(s\) budgit"):
        gdig.run(out=tmp_path / "x", budgit=3)
    with pytest.raises(gdig.UsageError, match=r"gdig.select\(\): tau: expected a number"):
        made.select(tau="high")
    with pytest.raises(gdig.UsageError, match="no gdig run there"):
        gdig.open_run(tmp_path)
    with pytest.raises(gdig.UsageError, match="item 0 is neither a pair"):
        gdig.score("unused", seeds=[{"src": "a", "tgt": "b"}], pairs=[{"src": 1}])


def test_the_public_names_and_a_light_import():
    assert set(gdig.__all__) >= {"run", "open_run", "score", "Run", "GdigError", "UsageError"}
    for name in gdig.__all__:
        assert getattr(gdig, name) is not None
    assert issubclass(gdig.PairsError, gdig.UsageError)
    assert issubclass(gdig.UsageError, gdig.GdigError)
    code = "import sys, gdig; print('torch' in sys.modules, gdig.__version__)"
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent)  # fmt: skip
    assert got.stdout.split()[0] == "False"


def test_gdig_run_stays_the_function_after_the_pipeline_is_imported():
    """No subpackage shadows the API's entry point once the run-folder code is loaded."""
    import gdig.pipeline.stages
    from gdig.api import run

    assert gdig.run is run
