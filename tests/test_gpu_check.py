"""benchmarks/gpu_check.sh, the one device call, proved on the CPU: its dry run
(GDIG_GPU_DRY_RUN=1) runs every stage's command at toy sizes and must leave exactly the
files the device hands back (one tarball, three summaries), with every stage passed.

Also the pieces of its results that a dry run cannot reach: the GPU-busy arithmetic of
benchmarks/gpu_pipeline.py and the summary of a failed CUDA test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

STAGES = ["carry", "build", "tests", "ops", "pipeline", "sanitize", "torchrun"]


def test_dry_run_runs_every_stage_and_returns_four_files(tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "GDIG_GPU_DRY_RUN": "1",
        "OUT": str(out),
        "PYTHON": sys.executable,
        "CARRY": str(tmp_path / "no_carry"),  # the dry run makes its toy carry
        "TMPDIR": str(tmp_path),
        "OMP_NUM_THREADS": "1",
    }
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=1800,
    )  # fmt: skip
    took = time.monotonic() - start
    print(proc.stdout[-2000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check.tar.gz", "ops_vs_ceilings.md", "pipeline.json", "summary.md",
    ]  # fmt: skip
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
        stages = tar.extractfile("gpu_check/stages.tsv").read().decode().splitlines()[1:]
    for stage in STAGES:
        assert f"{stage}.log" in names, f"no log of stage {stage}"
    assert {"env.txt", "tests.xml", "ops.json", "pipeline.json", "torchrun.json"} <= names
    status = {line.split("\t")[0]: line.split("\t")[1] for line in stages}
    assert status == dict.fromkeys(STAGES, "ok"), status
    pipeline = json.loads((out / "pipeline.json").read_text())
    assert pipeline["candidates"] == 24 and pipeline["candidates_per_s"] > 0
    summary = (out / "summary.md").read_text()
    assert "| pipeline | ok |" in summary and "candidates/s" in summary
    assert "torchrun, 2 ranks" in summary
    assert "| toy | score_stats |" in (out / "ops_vs_ceilings.md").read_text()
    # About a minute on an idle 2-core machine; the bound only catches a hang or a stage that
    # stopped being a toy (the stages' own limits are 4x their GPU budgets in a dry run).
    assert took < 600, f"the dry run took {took:.0f} s"


def test_gpu_busy_counts_overlapping_kernels_once():
    from gpu_pipeline import merged_busy_us

    assert merged_busy_us([]) == 0
    # two streams overlapping on [5, 10], a kernel inside another, a gap of 10
    spans = [(0, 10), (5, 20), (6, 7), (30, 35)]
    assert merged_busy_us(spans) == 25
    assert merged_busy_us(list(reversed(spans))) == 25


def test_summary_names_failed_tests_and_missing_stages(tmp_path):
    from gpu_summary import summary

    (tmp_path / "stages.tsv").write_text(
        "stage\tstatus\tseconds\tnote\nbuild\tok\t90\tlimit 220 s\n"
        "tests\tfailed (exit 1)\t100\tlimit 170 s\npipeline\ttimed out\t120\tlimit 120 s\n"
    )
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_ops_cuda" name="test_a"><failure/></testcase>'
        '<testcase classname="tests.test_ops_cuda" name="test_b"/>'
        '<testcase classname="tests.test_ops_cuda" name="test_c"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    text = summary(tmp_path)
    assert "| tests | failed (exit 1) | 100 |" in text
    assert "1 passed, 1 failed, 0 errors, 1 skipped (of 3)" in text
    assert "tests.test_ops_cuda::test_a" in text
    assert "pipeline: no result" in text


def test_perf_model_rewrites_only_its_own_section(tmp_path):
    import perf_model

    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n<!-- other: start -->\nkept\n<!-- other: end -->\n")
    perf_model.write_section(str(results), "old\n")
    perf_model.write_section(str(results), perf_model.render())
    text = results.read_text()
    assert text.startswith("# Results\n\n<!-- other: start -->\nkept\n<!-- other: end -->\n")
    assert text.count("<!-- perf_model: start") == 1 and "\nold\n" not in text
    section = text.split("<!-- perf_model: start", 1)[1]
    assert "estimate" in section and "LLaMA-7B" in section and "SmolLM2-135M" in section
