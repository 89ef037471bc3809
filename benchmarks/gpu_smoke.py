"""Every compiled op once, at small sizes, on every code path of its kernel: what
``compute-sanitizer`` (memcheck, racecheck, synccheck) runs over in benchmarks/gpu_check.sh.

    python benchmarks/gpu_smoke.py [--device cuda|cpu]

Small, so that the sanitizers (10-100x slower) finish in seconds: fp32 and bf16/fp16 (the
tensor-core path of ekfac_accumulate), ranks that take lowrank_benefit's vectorised and
scalar loads, score_stats on the GPU and streamed (pageable, pinned and strided), with
NaN scores. Each result is compared with the CPU kernel, so a run also says whether the
GPU got it right; it exits 1 on a mismatch. ``--device cpu`` runs the same calls on the CPU
(the dry run of gpu_check.sh).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gdig_ext

TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 6e-3}


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().cpu(), y.double().cpu()
    ok = ~(x.isnan() | y.isnan())
    if not torch.equal(x.isnan(), y.isnan()):
        return float("inf")
    denom = torch.linalg.vector_norm(y[ok]).item()
    return torch.linalg.vector_norm(x[ok] - y[ok]).item() / max(denom, 1e-30)


def _token_args(dtype: torch.dtype, device: str, r: int) -> dict[str, tuple]:
    b, t, d_in, d_out = 5, 37, 72, 40
    g = torch.Generator().manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device, dtype)

    mask = torch.arange(t)[None, :] < torch.tensor([t, 0, 20, 5, 36])[:, None]
    acts, grads, mask = rnd(b, t, d_in), rnd(b, t, d_out), mask.to(device)
    q_a, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=g))
    q_s, _ = torch.linalg.qr(torch.randn(d_out, d_out, generator=g))
    lam = torch.zeros(d_out, d_in, device=device)
    return {
        "project_grads": (acts, grads, mask, rnd(d_in, 8), rnd(d_out, 6)),
        "lowrank_benefit": (acts, grads, mask, rnd(6, r, d_out), rnd(6, r, d_in)),
        "ekfac_accumulate": (acts, grads, mask, q_a.to(device, dtype), q_s.to(device, dtype), lam),
    }


def _call(op: str, args: tuple) -> torch.Tensor:
    if op == "ekfac_accumulate":
        lam = args[-1].clone()
        gdig_ext.ekfac_accumulate(*args[:-1], lam)
        return lam
    return getattr(gdig_ext, op)(*args)


def run(device: str) -> list[str]:
    """Every case once on ``device``; the mismatches with the CPU kernel, as lines."""
    failures = []

    def check(what: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
        err = _rel(got, want)
        print(f"{what:55s} rel. err. vs CPU kernel {err:.1e}")
        if not err <= tol:
            failures.append(f"{what}: {err:.1e} > {tol:.0e}")

    def on_cpu(args: tuple) -> tuple:
        return tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args)

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for r in (8, 3):  # a multiple of every 16-byte pack, and of none
            for op, args in _token_args(dtype, device, r).items():
                if op != "lowrank_benefit" and r == 3:
                    continue
                got, want = _call(op, args), _call(op, on_cpu(args))
                check(f"{op} {dtype} r={r}", got, want, TOL[dtype])
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        cand = torch.randn(3000, 96, generator=g).to(dtype)
        cand[[7, 2999], 3] = float("nan")
        seeds = torch.randn(33, 96, generator=g).to(dtype)
        want = gdig_ext.score_stats(cand, seeds, 5)
        placements = {"on device": cand.to(device)}
        if device != "cpu":
            placements.update(streamed=cand, pinned=cand.pin_memory(), strided=cand[:, ::2])
        for where, c in placements.items():
            s = seeds.to(device) if where != "strided" else seeds[:, ::2].contiguous().to(device)
            ref = want if where != "strided" else gdig_ext.score_stats(cand[:, ::2], s.cpu(), 5)
            got = gdig_ext.score_stats(c, s, 5)
            for name, x, y in zip(["mean", "min", "top-k"], got[1:4], ref[1:4], strict=True):
                check(f"score_stats {dtype} {where} {name}", x, y, TOL[dtype])
    if device != "cpu":
        torch.cuda.synchronize()
    return failures


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args(argv)
    if args.device == "cuda" and not (torch.cuda.is_available() and gdig_ext.cuda_available()):
        raise SystemExit("gpu_smoke: needs a GPU and gdig_ext built with its CUDA kernels")
    failures = run(args.device)
    print("gpu_smoke:", "all match" if not failures else f"{len(failures)} mismatches")
    if failures:
        print("\n".join(failures))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
