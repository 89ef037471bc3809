"""Where seed preparation spends its time, against scoring the same number of candidates.

    python benchmarks/profile_seeds.py [--seeds 128] [--autocast bf16]

SmolLM2-135M-Instruct, default layers and rank, batch 16, factors fitted on 64 ding.de-en
pairs; S seeds (the first S pairs) are prepared once to warm up on 4 of them, then timed
with each phase of ``prepare_seeds`` wrapped by a timer: the model pass with gradient
capture, the eigenbasis preconditioning from the tokens, the rank-r compression (SVD and
rotation back), and the rest (projected features, finiteness checks). Then S candidates
(the next S pairs) are scored against them. Prints seconds per seed and per candidate.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT / "python", ROOT, ROOT / "tests", ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.append(str(p))


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
    args = ap.parse_args()

    import torch
    from bench_engine import read_pairs
    from helpers_models import engine_config, with_options

    import gdig.engine.capture as capture
    import gdig.engine.seeds as seeds_mod
    from gdig.engine import fit_factors, prepare_seeds, score_candidates
    from gdig.engine.factors import LayerFactors
    from gdig.model import ensure_smollm2, load_model

    torch.set_num_threads(args.threads)
    phases: dict[str, float] = collections.defaultdict(float)
    timed(capture.GradientCapture, "run", phases, "model pass + capture")
    timed(LayerFactors, "precondition_tokens", phases, "eigenbasis preconditioning")
    timed(seeds_mod, "compress_rotated", phases, "rank-r compression")

    model, tok = load_model(ensure_smollm2(), progress=False)
    n = args.seeds
    seeds, pool = read_pairs(n), read_pairs(n, start=2000)
    cfg = with_options(engine_config(factor_samples=0, batch_size=16), autocast=args.autocast)
    factors = fit_factors(model, tok, read_pairs(64, start=1000), cfg, progress=False)
    prepare_seeds(model, tok, seeds[:4], factors, cfg, progress=False)  # warm-up
    phases.clear()
    t = time.perf_counter()
    prepared = prepare_seeds(model, tok, seeds, factors, cfg, progress=False)
    seed_s = time.perf_counter() - t
    seed_phases = dict(phases)
    phases.clear()
    t = time.perf_counter()
    score_candidates(model, tok, pool, prepared, cfg, tempfile.mkdtemp(), progress=False)
    cand_s = time.perf_counter() - t

    import gdig

    where = Path(gdig.__file__).parent
    print(f"S = {n} seeds, autocast {args.autocast or 'none'}, {args.threads} threads; {where}")
    print("| phase | s/seed |\n|---|---:|")
    for label, s in seed_phases.items():
        print(f"| {label} | {s / n:.4f} |")
    print(f"| rest | {(seed_s - sum(seed_phases.values())) / n:.4f} |")
    print(f"| **seed preparation** | **{seed_s / n:.4f}** |")
    print(f"| scoring a candidate against the S seeds (s/candidate) | {cand_s / n:.4f} |")


if __name__ == "__main__":
    main()
