"""The current device's ceilings, and each compiled op timed against them.

    python benchmarks/gpu_ceilings.py --device cuda --json c.json --md c.md
    python benchmarks/gpu_ceilings.py --device cpu --quick      # the dry run: toy sizes
    python benchmarks/gpu_ceilings.py --counts                  # FLOP/byte counts only

Ceilings (median over timed repeats after a warm-up; CUDA events on a GPU):
- copy: device-to-device bandwidth of one large copy, bytes read plus bytes written (GB/s);
- h2d pinned / h2d pageable: host-to-device bandwidth from pinned and from ordinary memory,
  bytes sent (GB/s): the ceiling of a streamed score_stats;
- matmul: FLOP/s of a large square matmul in bf16, fp16 and fp32 (fp32 with TF32 off, as the
  ops run it).

Ops: each compiled op at the tracked layers' shapes of SmolLM2-135M (down_proj 576 x 1536,
T = 48, S = 256 seeds of rank 32, k = 32) and of a 7B LLaMA (4096 x 11008, T = 128), in
fp32 and bf16; score_stats over SmolLM2's 10 layers of features (D = 10240) with ``cand``
on the GPU, streamed from pinned memory (uploaded directly) and from pageable memory
(staged). Each row gives the op's FLOP and compulsory bytes (inputs read once, outputs
written once; tiles the op writes and reads back are not counted), its median time and
spread, and the share of the matmul ceiling of its dtype, of the copy bandwidth and, for a
streamed score_stats, of the host link. These are the measurements the performance model
in benchmarks/RESULTS.md (benchmarks/perf_model.py) estimates.

Every CUDA figure is "not measured" until this runs on a GPU (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ELEM_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
MATMUL_DTYPES = ["bfloat16", "float16", "float32"]

# (model, op, sizes): the tracked down_proj of each model; one shared set of seeds.
SMOLLM2 = {"B": 64, "T": 48, "d_in": 1536, "d_out": 576}
LLAMA7B = {"B": 16, "T": 128, "d_in": 11008, "d_out": 4096}
SEEDS = {"S": 256, "r": 32}
PROJ = {"k_in": 32, "k_out": 32}
SCORE = {"N": 65536, "D": 10240, "S": 256, "k": 5}
CASES = [
    (model, op, {**layer, **extra})
    for model, layer in [("SmolLM2-135M", SMOLLM2), ("LLaMA-7B", LLAMA7B)]
    for op, extra in [("project_grads", PROJ), ("lowrank_benefit", SEEDS), ("ekfac_accumulate", {})]
] + [("SmolLM2-135M", "score_stats", SCORE)]
QUICK_CASES = [
    ("toy", "project_grads", {"B": 4, "T": 16, "d_in": 64, "d_out": 32, "k_in": 8, "k_out": 8}),
    ("toy", "lowrank_benefit", {"B": 4, "T": 16, "d_in": 64, "d_out": 32, "S": 16, "r": 4}),
    ("toy", "ekfac_accumulate", {"B": 4, "T": 16, "d_in": 64, "d_out": 32}),
    ("toy", "score_stats", {"N": 2000, "D": 256, "S": 32, "k": 5}),
]
# Where score_stats' cand lives: on the device, or streamed from host memory.
PLACEMENTS = {"score_stats": ["device", "pinned", "pageable"]}


# ---------------------------------------------------------------- timing


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _times(fn, device: str, warmup: int, iters: int) -> list[float]:
    """Seconds of each of ``iters`` calls after ``warmup`` (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return out


class _FullFp32:
    """fp32 matmuls without TF32 inside the block (the setting restored after), through
    whichever of torch's two switches this torch has (mixing them is an error in torch 2.9+)."""

    def __enter__(self) -> None:
        m = torch.backends.cuda.matmul
        self.name, self.off = (
            ("fp32_precision", "ieee") if hasattr(m, "fp32_precision") else ("allow_tf32", False)
        )
        self.old = getattr(m, self.name)
        setattr(m, self.name, self.off)

    def __exit__(self, *exc) -> None:
        setattr(torch.backends.cuda.matmul, self.name, self.old)


def measure_ceilings(device: str, quick: bool, iters: int) -> dict:
    mib = 16 if quick else 1024
    n = mib * 2**20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    copy = _times(lambda: dst.copy_(src), device, 2, iters)
    out = {"copy_GBps": 2 * n * 4 / statistics.median(copy) / 1e9}
    if device == "cuda":
        for kind, host in [("pinned", torch.ones(n).pin_memory()), ("pageable", torch.ones(n))]:
            sec = _times(
                lambda h=host: dst.copy_(h, non_blocking=True), device, 1, max(3, iters // 4)
            )
            out[f"h2d_{kind}_GBps"] = n * 4 / statistics.median(sec) / 1e9
    size = 512 if quick else 8192
    out["matmul_TFLOPs"] = {}
    for name in MATMUL_DTYPES if device == "cuda" else ["float32", "bfloat16"]:
        a = torch.randn(size, size, device=device).to(getattr(torch, name))
        b = torch.randn(size, size, device=device).to(a.dtype)
        with _FullFp32():
            sec = _times(lambda a=a, b=b: a @ b, device, 2, iters)
        out["matmul_TFLOPs"][name] = 2 * size**3 / statistics.median(sec) / 1e12
    return out


# ---------------------------------------------------------------- op counts


def op_counts(op: str, dtype: str, sizes: dict[str, int]) -> tuple[float, float]:
    """(FLOP, compulsory bytes) of one call of ``op`` at ``sizes`` with ``dtype`` inputs."""
    e = ELEM_BYTES[dtype]
    acc = 8 if dtype == "float64" else 4  # outputs and lam: float32, float64 for float64
    if op == "score_stats":
        n, d, s, k = sizes["N"], sizes["D"], sizes["S"], sizes["k"]
        flops = 2 * n * s * d
        # n_pos (int64), mean, min, top-k values and int64 indices per candidate
        out = n * (8 + 2 * acc + k * (acc + 8))
        return float(flops), float((n + s) * d * e + out)
    b, t, d_in, d_out = sizes["B"], sizes["T"], sizes["d_in"], sizes["d_out"]
    tokens = b * t * (d_in + d_out) * e + b * t  # acts, out_grads, a bool mask
    if op == "project_grads":
        k_in, k_out = sizes["k_in"], sizes["k_out"]
        flops = 2 * b * t * (d_in * k_in + d_out * k_out) + 2 * b * t * k_in * k_out
        nbytes = tokens + (d_in * k_in + d_out * k_out) * e + b * k_out * k_in * acc
    elif op == "lowrank_benefit":
        s, r = sizes["S"], sizes["r"]
        # two projections onto the S*r factors, then sum_t mask sum_k gu * av
        flops = 2 * b * t * s * r * (d_in + d_out) + 2 * b * t * s * r
        nbytes = tokens + s * r * (d_in + d_out) * e + b * s * acc
    elif op == "ekfac_accumulate":
        # rotate the tokens (q_a, q_s), form each rotated gradient, square and sum into lam
        flops = 2 * b * t * (d_in**2 + d_out**2) + 2 * b * t * d_out * d_in + 2 * b * d_out * d_in
        nbytes = tokens + (d_in**2 + d_out**2) * e + 2 * d_out * d_in * acc
    else:
        raise ValueError(f"unknown op {op!r}")
    return float(flops), float(nbytes)


# ---------------------------------------------------------------- timing the ops


def _inputs(op: str, sizes: dict[str, int], dtype: torch.dtype, device: str, where: str):
    """Arguments of one call; bases and factors are scaled Gaussians (timing needs no
    orthogonality)."""
    import gdig_ext

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, device=device) * scale).to(dtype)

    if op == "score_stats":
        n, d, s, k = sizes["N"], sizes["D"], sizes["S"], sizes["k"]
        cand = r(n, d)
        if where == "pinned":
            cand = torch.empty(n, d, dtype=dtype, pin_memory=True).copy_(cand)
        elif where == "pageable":
            cand = cand.cpu()
        return gdig_ext.score_stats, (cand, r(s, d, scale=d**-0.5), k)
    b, t, d_in, d_out = sizes["B"], sizes["T"], sizes["d_in"], sizes["d_out"]
    acts, grads = r(b, t, d_in), r(b, t, d_out)
    mask = torch.ones(b, t, dtype=torch.bool, device=device)
    mask[:, t * 3 // 4 :] = False  # a quarter of padding, as batches of mixed lengths have
    if op == "project_grads":
        extra = (r(d_in, sizes["k_in"]), r(d_out, sizes["k_out"]))
    elif op == "lowrank_benefit":
        s, rank = sizes["S"], sizes["r"]
        extra = (r(s, rank, d_out, scale=d_out**-0.5), r(s, rank, d_in, scale=d_in**-0.5))
    else:
        lam = torch.zeros(d_out, d_in, device=device)
        extra = (r(d_in, d_in, scale=d_in**-0.5), r(d_out, d_out, scale=d_out**-0.5), lam)
    return getattr(gdig_ext, op), (acts, grads, mask, *extra)


def time_ops(device: str, quick: bool, iters: int) -> list[dict]:
    rows = []
    for model, op, sizes in QUICK_CASES if quick else CASES:
        for dtype in ["float32", "bfloat16"]:
            for where in PLACEMENTS.get(op, ["device"]):
                if where != "device" and device != "cuda":
                    continue
                torch.manual_seed(0)
                fn, args = _inputs(op, sizes, getattr(torch, dtype), device, where)
                sec = _times(lambda fn=fn, args=args: fn(*args), device, 1, iters)
                flops, nbytes = op_counts(op, dtype, sizes)
                rows.append(
                    {"model": model, "op": op, "dtype": dtype, "where": where, "sizes": sizes,
                     "seconds": sec, "flop": flops, "bytes": nbytes}
                )  # fmt: skip
                print(f"{model:13s} {op:17s} {dtype:9s} {where:8s} "
                      f"{statistics.median(sec) * 1e3:9.3f} ms", flush=True)  # fmt: skip
                del fn, args
                if device == "cuda":
                    torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}%"


def render(result: dict) -> str:
    c = result["ceilings"]
    mm = c["matmul_TFLOPs"]
    h2d = ", ".join(
        f"host-to-device {k.split('_')[1]} {c[k]:.1f} GB/s" for k in c if k.startswith("h2d_")
    )
    lines = [
        f"## Ops against the ceilings of {result['device']} (benchmarks/gpu_ceilings.py)",
        "",
        f"Measured {result['date']} at {result['commit']} (torch {result['torch']}): copy "
        f"{c['copy_GBps']:.0f} GB/s (read + write)"
        + (f", {h2d}" if h2d else "")
        + "; matmul "
        + ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in mm.items())
        + " (fp32 without TF32). Op times: median of "
        f"{len(result['rows'][0]['seconds']) if result['rows'] else 0} calls after a warm-up "
        "(min-max in brackets).",
        "FLOP and compulsory bytes from the op definitions (tiles written and read back are "
        "not counted); % of the matmul ceiling of the row's dtype, of the copy bandwidth and "
        "(streamed score_stats) of the host link from that memory.",
        "",
        "| model | op | dtype | cand | sizes | ms [min-max] | TFLOP/s | % matmul | GB/s "
        "| % copy | % host link |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        med = statistics.median(r["seconds"])
        tflops, gbps = r["flop"] / med / 1e12, r["bytes"] / med / 1e9
        peak = mm.get(r["dtype"])
        link = None
        if r["where"] in ("pinned", "pageable") and f"h2d_{r['where']}_GBps" in c:
            s = r["sizes"]
            sent = s["N"] * s["D"] * ELEM_BYTES[r["dtype"]] / med / 1e9
            link = 100 * sent / c[f"h2d_{r['where']}_GBps"]
        sizes = " ".join(f"{k}={v}" for k, v in r["sizes"].items())
        spread = f"{min(r['seconds']) * 1e3:.2f}-{max(r['seconds']) * 1e3:.2f}"
        lines.append(
            f"| {r['model']} | {r['op']} | {r['dtype']} | {r['where']} | {sizes} "
            f"| {med * 1e3:.2f} [{spread}] | {tflops:.2f} "
            f"| {_pct(100 * tflops / peak if peak else None)} | {gbps:.0f} "
            f"| {_pct(100 * gbps / c['copy_GBps'])} | {_pct(link)} |"
        )
    return "\n".join(lines) + "\n"


def counts_table() -> str:
    """FLOP and compulsory byte counts of every timed case (no device needed)."""
    lines = ["| model | op | dtype | sizes | GFLOP | MB |", "|---|---|---|---|---:|---:|"]
    for model, op, sizes in CASES:
        for dtype in ["float32", "bfloat16"]:
            flops, nbytes = op_counts(op, dtype, sizes)
            text = " ".join(f"{k}={v}" for k, v in sizes.items())
            lines.append(
                f"| {model} | {op} | {dtype} | {text} | {flops / 1e9:.2f} | {nbytes / 1e6:.1f} |"
            )
    return "\n".join(lines) + "\n"


def _commit() -> str:
    import subprocess

    out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)  # fmt: skip
    return f"commit {out.stdout.strip()}" if out.returncode == 0 else "commit unknown"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="toy sizes (the dry run)")
    p.add_argument("--iters", type=int, default=10, help="timed calls per case")
    p.add_argument("--json", help="write the ceilings and every timing here")
    p.add_argument("--md", help="write the markdown table here")
    p.add_argument("--counts", action="store_true", help="print FLOP/byte counts and exit")
    args = p.parse_args(argv)
    if args.counts:
        print(counts_table())
        return
    sys.path.insert(0, ROOT)
    import gdig_ext

    if args.device == "cuda" and not (torch.cuda.is_available() and gdig_ext.cuda_available()):
        raise SystemExit("gpu_ceilings: --device cuda needs a GPU and gdig_ext's CUDA kernels")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "this CPU (dry run)"
    result = {
        "device": name,
        "torch": torch.__version__,
        "commit": _commit(),
        "date": f"{datetime.datetime.now():%Y-%m-%d %H:%M}",
        "ceilings": measure_ceilings(args.device, args.quick, args.iters),
    }
    print(json.dumps(result["ceilings"]), flush=True)
    result["rows"] = time_ops(args.device, args.quick, args.iters)
    table = render(result)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
