"""Where seed preparation spends its time, against scoring the same number of candidates.

    python benchmarks/profile_seeds.py [--seeds 128] [--autocast bf16] [--out benchmarks/RESULTS.md]

SmolLM2-135M-Instruct, default layers and rank, batch 16, factors fitted on 64 ding.de-en
pairs; S seeds (the first S pairs) are prepared once to warm up on 4 of them, then timed
with each phase of ``prepare_seeds`` wrapped by a timer: the model pass with gradient
capture, the eigenbasis preconditioning from the tokens, the rank-r compression (SVD and
rotation back), and the rest (projected features, finiteness checks). Then S candidates
(the pairs from line 2000) are scored against them. Prints seconds per seed and per
candidate: medians of --repeats rounds (min-max), each round the seeds then the candidates,
after the warm-up; ``--out`` writes the "profile_seeds" section in place.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time
from collections.abc import Callable

from harness import Machine, add_common_args, command, real_pairs, spread, write_section

DATA_FILE = "ding.de-en.jsonl"


def timed(owner: object, name: str, into: dict[str, float], label: str) -> None:
    """Replace ``owner.name`` by a wrapper adding its wall time to ``into[label]`` (nothing
    when ``owner`` has no ``name``: an older gdig, timed as a whole)."""
    fn: Callable | None = getattr(owner, name, None)
    if fn is None:
        return

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into[label] += time.perf_counter() - t

    setattr(owner, name, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=128)
    ap.add_argument("--autocast", default=None, choices=["bf16", "fp16"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (at least 3)")
    ap.add_argument("--out", default=None, help="write the section into this RESULTS.md")
    add_common_args(ap)
    args = ap.parse_args()
    if args.repeats < 3:
        ap.error(f"--repeats must be at least 3, got {args.repeats}")

    import torch

    import gdig.engine.capture as capture
    import gdig.engine.seeds as seeds_mod
    from gdig.engine import fit_factors, prepare_seeds, score_candidates
    from gdig.engine.config import EngineConfig
    from gdig.engine.factors import LayerFactors
    from gdig.model import ensure_smollm2, load_model

    torch.set_num_threads(args.threads)
    machine = Machine(args.threads, strict=args.strict_load)
    phases: dict[str, float] = collections.defaultdict(float)
    timed(capture.GradientCapture, "run", phases, "model pass + capture")
    timed(LayerFactors, "precondition_tokens", phases, "eigenbasis preconditioning")
    timed(seeds_mod, "compress_rotated", phases, "rank-r compression")

    model, tok = load_model(ensure_smollm2(), progress=False)
    n = args.seeds
    seeds = real_pairs(DATA_FILE, 0, n, args.data_dir)
    pool = real_pairs(DATA_FILE, 2000, n, args.data_dir)
    cfg = EngineConfig.from_flat(factor_samples=0, batch_size=16, autocast=args.autocast)
    fit_set = real_pairs(DATA_FILE, 1000, 64, args.data_dir)
    factors = fit_factors(model, tok, fit_set, cfg, progress=False)
    prepare_seeds(model, tok, seeds[:4], factors, cfg, progress=False)  # warm-up
    rounds: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(args.repeats):
        phases.clear()
        t = time.perf_counter()
        prepared = prepare_seeds(model, tok, seeds, factors, cfg, progress=False)
        seed_s = time.perf_counter() - t
        for label, sec in phases.items():
            rounds[label].append(sec / n)
        rounds["rest"].append((seed_s - sum(phases.values())) / n)
        rounds["**seed preparation**"].append(seed_s / n)
        t = time.perf_counter()
        score_candidates(model, tok, pool, prepared, cfg, tempfile.mkdtemp(), progress=False)
        rounds["scoring a candidate against the S seeds"].append((time.perf_counter() - t) / n)

    lines = [
        "## Seed preparation (benchmarks/profile_seeds.py)",
        "",
        f"`{command('profile_seeds.py')}`",
        "",
        machine.line(),
        "",
        f"SmolLM2-135M, S = {n} ding.de-en seeds, default layers and rank, batch 16, factors "
        f"on 64 other pairs, autocast {args.autocast or 'none'}; then {n} candidates scored "
        f"against them. Seconds per seed (per candidate on the last line): median of "
        f"{args.repeats} rounds after a warm-up (min-max).",
        "",
        "| phase | s/seed |",
        "|---|---:|",
    ]
    lines += [f"| {label} | {spread(v, '.4f')} |" for label, v in rounds.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        key = "profile_seeds" + (f" {args.autocast}" if args.autocast else "")
        write_section(args.out, key, "profile_seeds.py", text)


if __name__ == "__main__":
    main()
