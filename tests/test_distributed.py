"""torchrun for real: 2 processes with gloo on the CPU give the 1-process result, and a
killed rank stops the job, which the same command then resumes (issue 11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_models import toy_pairs

from gdig.data.pairs import write_jsonl
from gdig.engine import GradStore

pytestmark = pytest.mark.skipif(
    not __import__("torch").distributed.is_available(), reason="torch without distributed"
)

ARGS = ["--no-progress", "--factor-samples", "40", "--k-in", "4", "--k-out", "4", "--rank",
        "4", "--budget", "10", "--tau", "0.5", "--on-short", "fill", "--shard-size", "16",
        "--label-field", "noise"]  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tiny_llama_dir, tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("dist")
    pairs = toy_pairs(100, seed=3)
    write_jsonl(d / "seeds.jsonl", [p.to_record() for p in pairs[:6]])
    recs = [
        dict(p.to_record(), noise="clean" if i % 4 else "untranslated")
        for i, p in enumerate(pairs[6:])
    ]
    write_jsonl(d / "pool.jsonl", recs)
    return ["--model", str(tiny_llama_dir), "--seeds", str(d / "seeds.jsonl"),
            "--pool", str(d / "pool.jsonl"), *ARGS]  # fmt: skip


def _gdig(args: list[str], nproc: int, env: dict[str, str] | None = None):
    launcher = [sys.executable, "-m", "gdig"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", str(nproc), "-m", "gdig"]  # fmt: skip
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [*launcher, "run", *args], capture_output=True, text=True, env=full_env, timeout=600
    )


@pytest.fixture(scope="module")
def single(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    proc = _gdig([*inputs, "--out", str(out)], 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _assert_same_result(a: Path, b: Path) -> None:
    sa, sb = GradStore.open(a / "store"), GradStore.open(b / "store")
    assert sa.ids == sb.ids
    x, y = sa.stats(), sb.stats()
    assert np.array_equal(x["n_pos"], y["n_pos"])
    # Factor sums added in another order: float32 rounding, nothing more (docs/METHOD.md).
    for key in ("mean", "min"):
        scale = np.abs(x[key]).max()
        assert np.abs(x[key] - y[key]).max() <= 1e-4 * scale, key
    ids = [[json.loads(line)["id"] for line in (run / "selected.jsonl").open()] for run in (a, b)]
    assert ids[0] == ids[1]


def test_two_processes_give_the_one_process_result(inputs, single, tmp_path):
    out = tmp_path / "two"
    proc = _gdig([*inputs, "--out", str(out)], 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("gdig run: done") == 1  # rank 0 speaks for the run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["fit"]["examples"] == 40  # both ranks' halves summed
    assert not list((out / "store").glob("manifest.part-*"))
    _assert_same_result(single, out)


def test_a_killed_rank_stops_the_job_and_the_same_command_resumes(inputs, single, tmp_path):
    out = tmp_path / "killed"
    kill = {"GDIG_FAULT": "score:shard", "GDIG_FAULT_RANK": "1", "GDIG_FAULT_SKIP": "1"}
    proc = _gdig([*inputs, "--out", str(out)], 2, kill)
    assert proc.returncode != 0
    store = out / "store"
    assert not json.loads((store / "manifest.json").read_text())["complete"]
    recorded = set()  # shards whose rank recorded them (a SIGTERMed rank may leave one half)
    for part in store.glob("manifest.part-*.json"):
        recorded |= set(json.loads(part.read_text())["shards"])
    assert {"shard-00001", "shard-00003"} <= recorded  # rank 1's two shards before the kill
    written = {name: (store / name / "benefit.npy").stat().st_mtime_ns for name in recorded}
    proc = _gdig([*inputs, "--out", str(out)], 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stderr
    for name, mtime in written.items():  # kept, not recomputed
        assert (store / name / "benefit.npy").stat().st_mtime_ns == mtime, name
    _assert_same_result(single, out)


def test_finetune_first_is_refused_under_torchrun_before_joining(inputs, tmp_path, monkeypatch):
    from gdig.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    argv = ["run", *inputs, "--out", str(tmp_path / "ft"), "--finetune-first"]
    assert main(argv) == 2  # a usage error, raised before any process group is joined
    assert not (tmp_path / "ft").exists()


def test_a_killed_torchrun_job_resumes_in_one_process(inputs, single, tmp_path):
    out = tmp_path / "killed"
    kill = {"GDIG_FAULT": "score:shard", "GDIG_FAULT_RANK": "1", "GDIG_FAULT_SKIP": "1"}
    assert _gdig([*inputs, "--out", str(out)], 2, kill).returncode != 0
    proc = _gdig([*inputs, "--out", str(out)], 1)  # without torchrun this time
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stderr
    assert not list((out / "store").glob("manifest.part-*"))  # merged and removed
    _assert_same_result(single, out)
