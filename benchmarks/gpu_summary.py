"""summary.md of a benchmarks/gpu_check.sh run, from the logs folder it packs.

    python benchmarks/gpu_summary.py LOGS_DIR OUT.md

Reads stages.tsv (each stage's status, seconds and limit), env.txt, the junit XML of the
CUDA tests, ops.json (benchmarks/gpu_ceilings.py), pipeline.json
(benchmarks/gpu_pipeline.py, and torchrun.json of its 2-rank run) and the sanitizer logs; every
part that is missing (a stage skipped, cut or failed) is said to be missing.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _stages(logs: Path) -> list[dict[str, str]]:
    with open(logs / "stages.tsv", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _tests(logs: Path) -> str:
    path = logs / "tests.xml"
    if not path.is_file():
        return "no junit XML (the tests stage did not finish)"
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    n = {
        k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")
    }
    failed = [
        f"{case.get('classname', '')}::{case.get('name', '')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    line = (
        f"{passed} passed, {n['failures']} failed, {n['errors']} errors, "
        f"{n['skipped']} skipped (of {n['tests']})"
    )
    return line + "".join(f"\n  - {name}" for name in failed[:30])


def _pipeline(logs: Path) -> list[str]:
    path = logs / "pipeline.json"
    if not path.is_file():
        return ["pipeline: no result (the stage did not finish)"]
    p = json.loads(path.read_text())
    share = p.get("gpu_busy_share")
    rate, profiled = p.get("candidates_per_s"), p.get("candidates_per_s_profiled")
    return [
        f"pipeline: {p['model']} on {p['device']}, {p['candidates']} candidates x {p['seeds']} "
        f"seeds, autocast {p['autocast']}",
        f"- scoring: {rate:.1f} candidates/s (cold, first pass)"
        + (f"; {profiled:.1f}/s warm under the profiler" if profiled else "")
        + (f"; GPU busy {100 * share:.0f}% of the warm pass" if share is not None else ""),
        "- engine seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in p["engine_s"].items()),
        "- stage seconds (manifest): "
        + ", ".join(f"{k} {v:.1f}" for k, v in p["stage_s"].items() if v is not None),
    ]


def _torchrun(logs: Path) -> list[str]:
    path = logs / "torchrun.json"
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    rate = r.get("candidates_per_s")
    return [
        f"torchrun, {r['ranks']} ranks: score again; "
        + (f"{rate:.1f} candidates/s; " if rate else "")
        + "engine seconds "
        + ", ".join(f"{k} {v:.1f}" for k, v in r["engine_s"].items())
    ]


def _sanitizers(logs: Path) -> list[str]:
    out = []
    for log in sorted(logs.glob("sanitize-*.log")):  # one per tool (not the dry run's)
        text = log.read_text(errors="replace")
        found = re.findall(r"ERROR SUMMARY: .*", text)
        out.append(f"{log.stem}: {found[-1] if found else 'no sanitizer summary line'}")
    return out


def summary(logs: Path) -> str:
    stages = _stages(logs)
    env = (logs / "env.txt").read_text() if (logs / "env.txt").is_file() else "(no env.txt)"
    lines = ["# gdig GPU check (benchmarks/gpu_check.sh)", "", "```", env.strip(), "```", ""]
    lines += ["| stage | status | seconds | note |", "|---|---|---:|---|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']} | {s['note']} |" for s in stages]
    lines += ["", f"CUDA tests: {_tests(logs)}", ""]
    lines += _pipeline(logs) + _torchrun(logs) + _sanitizers(logs)
    if (logs / "ops_vs_ceilings.md").is_file():
        lines += ["", "Ops against the ceilings: ops_vs_ceilings.md."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        raise SystemExit("usage: gpu_summary.py LOGS_DIR OUT.md")
    text = summary(Path(args[0]))
    Path(args[1]).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
