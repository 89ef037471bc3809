"""Scoring under torchrun (issue 11): candidates/s with 1 and 2 processes, and agreement.

    python benchmarks/scale_torchrun.py [--sizes 10000,50000] [--out WORK_DIR]
        [--data-dir ../shared/data] [--md benchmarks/RESULTS.md] [--no-write]

A tiny LLaMA (4 layers, hidden 64) with SmolLM2's real tokenizer scores pools of N real
pairs (``benchmarks/scale.py``'s pools) against 32 seeds with ``gdig run``: once in one
process with 2 threads, once under ``torchrun --nproc_per_node 2`` with 1 thread a rank
(this machine has 2 cores). Times come from the run's manifest (stage seconds), so start-up
and model loading are left out; the wall time of the whole command is given too. The two
runs' per-candidate statistics are compared (the documented tolerance: benefits agree to
1e-4 of their largest magnitude, n_pos equal).

Writes the "torchrun" section of benchmarks/RESULTS.md between its markers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import RESULTS, Machine, add_common_args, command, data_dir, write_section
from scale import ensure_pool

CORES = 2


def tiny_model(out: Path) -> Path:
    """A tiny random LLaMA saved with SmolLM2's tokenizer (throughput needs no weights)."""
    folder = out / "tiny-smollm2"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from gdig.model import resolve_model

    tok = AutoTokenizer.from_pretrained(str(resolve_model("smollm2", False)))
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=172, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def seeds_file(out: Path, data_dir: Path) -> Path:
    path = out / "seeds.jsonl"
    with open(data_dir / "tatoeba.zh-en.jsonl", encoding="utf-8") as f:
        lines = [line for _, line in zip(range(32), f, strict=False)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def run(n: int, procs: int, model: Path, seeds: Path, pool: Path, out: Path) -> dict:
    folder = out / f"run-{n}-p{procs}"
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    args = ["run", "--model", str(model), "--seeds", str(seeds), "--pool", str(pool),
            "--out", str(folder), "--budget", str(n // 10), "--no-progress",
            "--shard-size", "1000", "--factor-samples", "400", "--tau", "0.5",
            "--on-short", "fill"]  # fmt: skip
    cmd = [sys.executable, "-m", "gdig", *args]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(procs), "-m", "gdig", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, CORES // procs))}
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"scale_torchrun: {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    stages = json.loads((folder / "manifest.json").read_text())["stages"]
    return {
        "n": n,
        "procs": procs,
        "threads": max(1, CORES // procs),
        "fit_s": stages["fit"]["seconds"],
        "score_s": stages["score"]["seconds"],
        "wall_s": wall,
        "dir": str(folder),
    }


def agreement(a: str, b: str) -> dict:
    import numpy as np

    from gdig.engine import GradStore

    x, y = GradStore.open(Path(a) / "store").stats(), GradStore.open(Path(b) / "store").stats()
    rel = float(np.abs(x["mean"] - y["mean"]).max() / np.abs(x["mean"]).max())
    return {"n_pos_equal": float((x["n_pos"] == y["n_pos"]).mean()), "mean_rel_diff": rel}


def render(rows: list[dict], agree: dict[int, dict], machine: str) -> str:
    lines = [
        "## Scale: scoring under torchrun (benchmarks/scale_torchrun.py)", "",
        f"`{command('scale_torchrun.py')}`", "", machine, "",
        "Tiny LLaMA (4 layers, hidden 64, SmolLM2's tokenizer), 32 seeds, shards of 1,000, "
        "factors on 400 pairs. 1 process with 2 threads against `torchrun --nproc_per_node "
        "2` with 1 thread a rank (2 cores). Seconds from the run manifest.", "",
        "| N | processes x threads | fit s | score s | candidates/s (score) | speed-up (score) "
        "| command wall s | n_pos equal | max rel. diff of mean benefit |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    base = {r["n"]: r for r in rows if r["procs"] == 1}
    for r in rows:
        speed = base[r["n"]]["score_s"] / r["score_s"]
        ag = agree.get(r["n"], {}) if r["procs"] > 1 else {}
        lines.append(
            f"| {r['n']:,} | {r['procs']} x {r['threads']} | {r['fit_s']:.1f} | "
            f"{r['score_s']:.1f} | {r['n'] / r['score_s']:,.0f} | {speed:.2f} | "
            f"{r['wall_s']:.0f} | {ag.get('n_pos_equal', 1.0):.4f} | "
            f"{ag.get('mean_rel_diff', 0.0):.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,50000")
    p.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "gdig-torchrun",
        help="work folder (default: gdig-torchrun in the temp dir)",
    )
    p.add_argument("--md", type=Path, default=RESULTS)
    p.add_argument("--no-write", action="store_true")
    add_common_args(p)
    args = p.parse_args(argv)
    args.data_dir = data_dir(args.data_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = Machine(CORES, strict=args.strict_load)
    model, seeds = tiny_model(args.out), seeds_file(args.out, args.data_dir)
    rows, agree = [], {}
    for n in [int(s) for s in args.sizes.split(",") if s.strip()]:
        pool = ensure_pool(n, args.data_dir, args.out)
        one = run(n, 1, model, seeds, pool, args.out)
        two = run(n, 2, model, seeds, pool, args.out)
        rows += [one, two]
        agree[n] = agreement(one["dir"], two["dir"])
        print(json.dumps([one, two, agree[n]]), flush=True)
    section = render(rows, agree, machine.line())
    print(section)
    if not args.no_write:
        write_section(args.md, "torchrun", "scale_torchrun.py", section)


if __name__ == "__main__":
    main()
