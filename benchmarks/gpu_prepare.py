"""Pack what the GPU machine lacks into ``.gpu_carry/`` (run here, before a device call).

    python benchmarks/gpu_prepare.py          # then: run(..., carry=[".gpu_carry"])

The lent GPU machine has Python 3.12 and torch but no FAISS and no gguf, reaches no
network, and takes at most 64 MiB a call, so the SmolLM2 weights (93 MB as GGUF) cannot
travel. Throughput does not depend on the weights: ``benchmarks/gpu_pipeline.sh`` builds
SmolLM2-135M from its config with random weights. This packs:

* ``smollm2-config/``: SmolLM2-135M-Instruct's config and tokenizer (no weights);
* ``pairs/``: seeds and a pool of real pairs from ``../shared/data`` (which does not travel);
* ``wheels/``: faiss-cpu for CPython 3.12 (k-means; ``pip download``, so run it where pip
  reaches PyPI).

``.gpu_carry/`` is added to ``.git/info/exclude`` so it never enters a commit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".gpu_carry"
CONFIG_FILES = ("config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "chat_template.jinja")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--n-pool", type=int, default=4000)
    p.add_argument("--n-seeds", type=int, default=256)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "python"))
    from gdig.model import resolve_model

    CARRY.mkdir(exist_ok=True)
    exclude = ROOT / ".git" / "info" / "exclude"
    if exclude.parent.is_dir() and "/.gpu_carry/" not in (
        exclude.read_text() if exclude.is_file() else ""
    ):
        with open(exclude, "a") as f:
            f.write("/.gpu_carry/\n")
    cfg = CARRY / "smollm2-config"
    cfg.mkdir(exist_ok=True)
    folder = resolve_model("smollm2", False)
    for name in CONFIG_FILES:
        if (folder / name).is_file():
            shutil.copy2(folder / name, cfg / name)
    pairs = CARRY / "pairs"
    pairs.mkdir(exist_ok=True)
    with open(args.data_dir / "tatoeba.zh-en.jsonl", encoding="utf-8") as f:
        lines = [line for line in f if json.loads(line).get("tgt")]
    need = args.n_seeds + args.n_pool
    if len(lines) < need:
        raise SystemExit(f"gpu_prepare: {len(lines)} Tatoeba pairs, {need} needed")
    (pairs / "seeds.jsonl").write_text("".join(lines[: args.n_seeds]), encoding="utf-8")
    (pairs / "pool.jsonl").write_text("".join(lines[args.n_seeds : need]), encoding="utf-8")
    wheels = CARRY / "wheels"
    wheels.mkdir(exist_ok=True)
    if not list(wheels.glob("faiss_cpu-*.whl")):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "faiss-cpu", "--no-deps",
             "--only-binary=:all:", "--python-version", "3.12", "--platform",
             "manylinux_2_28_x86_64", "-d", str(wheels)],
            check=True,
        )  # fmt: skip
    size = sum(f.stat().st_size for f in CARRY.rglob("*") if f.is_file())
    print(f"gpu_prepare: {CARRY} holds {size / 2**20:.1f} MiB; carry it with the call")


if __name__ == "__main__":
    main()
