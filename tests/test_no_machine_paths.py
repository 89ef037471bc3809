"""No tracked file names a folder of the machine it was written on.

A clone elsewhere has no /work, no /root and its own temporary folder: data is found as
``../shared/data`` beside the repository (or ``$GDIG_DATA_DIR``), work folders come from
``tempfile`` or the command line, and a results file shows an absolute path given on the
command line as ``DIR``. The one rule that is not a path: ``.gitignore`` files, whose
leading ``/`` anchors a pattern at the repository's root. The one text that is not the
project's: the quality experiment's kept hypotheses (``benchmarks/quality/durable``), what
a model wrote for each test sentence, which may invent a path (it put a temporary folder
after ``--cached-prefix=`` for a git message); their run records are still checked.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# An absolute path into a machine's own folders (not a relative one such as runs/tmp/x).
MACHINE_PATH = re.compile(
    r"(?<![\w.~-])(?:/(?:work|tmp|root|home|Users|mnt|scratch|var/folders)/|[A-Z]:\\Users\\)"
)


# Model output, not the project's text (see above): the hypotheses kept by --durable.
MODEL_OUTPUT = re.compile(r"^benchmarks/quality/durable/[^/]+/runs/[^/]+/hyps_[^/]+\.jsonl$")


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        pytest.skip("not a git checkout: no list of tracked files")
    return [f for f in out.stdout.split("\0") if f]


def offending_lines(text: str) -> list[tuple[int, str]]:
    return [
        (i, line.strip()[:160])
        for i, line in enumerate(text.splitlines(), 1)
        if MACHINE_PATH.search(line)
    ]


def _abs(*parts: str) -> str:
    """An absolute path, spelt so that this file does not hold one."""
    return "/" + "/".join(parts)


def test_pattern_tells_machine_paths_from_relative_ones():
    hits = [
        "data in " + _abs("work", "shared", "data"),
        "--out " + _abs("tmp", "gdig-scale"),
        "cache " + _abs("root", ".cache", "gdig"),
        "see " + _abs("home", "ann", "x"),
        "C:" + "\\Users\\ann",
    ]
    misses = ["../shared/data", "runs/tmp/x", "benchmarks/work/y", "~/.cache/gdig", "DIR"]
    assert all(offending_lines(t) for t in hits)
    assert not any(offending_lines(t) for t in misses)


def test_only_kept_hypotheses_are_model_output():
    kept = "benchmarks/quality/durable/de-en/runs/b300-gdig-s0/"
    assert MODEL_OUTPUT.match(kept + "hyps_test_other.jsonl")
    for name in (kept + "result.json", "benchmarks/quality/results.json", "hyps_test_in.jsonl"):
        assert not MODEL_OUTPUT.match(name), name


def test_no_tracked_file_holds_an_absolute_machine_path():
    found = []
    for name in tracked_files():
        path = ROOT / name
        if path.name == ".gitignore" or MODEL_OUTPUT.match(name) or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # a binary file (a PNG, a model): no paths to read
            continue
        found += [f"{name}:{i}: {line}" for i, line in offending_lines(text)]
    assert not found, "absolute machine paths in tracked files:\n" + "\n".join(found)
