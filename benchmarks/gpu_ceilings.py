"""Ceilings of the current CUDA device, and each compiled op's share of them.

    python benchmarks/gpu_ceilings.py --out runs/gpu/ceilings.json
    python benchmarks/gpu_ceilings.py --ceilings c.json --report runs/gpu/bench_ops.md
    python benchmarks/gpu_ceilings.py --out c.json --report bench_ops.md --report-out c.md
    python benchmarks/gpu_ceilings.py --counts     # FLOP and byte counts only; no GPU needed

Measured (median over --iters timed runs after warm-ups, timed with CUDA events):
- copy: device-to-device bandwidth of one large tensor copy (``dst.copy_(src)``), counting the
  bytes read plus the bytes written, in GB/s (1e9 bytes/s);
- matmul: FLOP/s of a large square ``torch.mm`` (2 n^3 FLOP) in bfloat16, float16 and float32
  (float32 with TF32 off, torch's default and what the ops run with).

Report: for each row of a bench_ops CUDA table (the markdown that ``bench_ops.py --out``
writes, or JSON, see ``load_rows``), the op's FLOP and byte counts at that row's sizes, from
the op definitions (gdig_ext/ops.py), divided by its median time: achieved FLOP/s as a
percentage of the matmul ceiling of the row's dtype (float32 for float64 rows has no
ceiling: n/a) and achieved bytes/s as a percentage of the copy ceiling. Bytes are the
compulsory traffic: every input read once, every output written once (lam read and written
once); tiles the op writes and reads back are not counted, so a memory-bound op that
round-trips tiles through memory shows below its real bandwidth use. FLOPs count every
token, padded ones included (the ops project all tokens; the mask applies after).
score_stats in bench_ops keeps cand on the GPU, so the copy ceiling applies; a streamed
(CPU) cand would be bound by the host link instead, which this script does not measure.

Status: every CUDA figure is "not measured" until someone runs this on a GPU. Written and
checked on a machine without one: only --counts and the report's parsing have run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ELEM_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
MATMUL_DTYPES = ["bfloat16", "float16", "float32"]
# bench_ops' column for the time of gdig_ext/reference.py, by bench_ops version.
REF_COLUMNS = ["ref ms", "whole ms"]


# ---------------------------------------------------------------- measuring


def _median_seconds(fn, warmup: int, iters: int) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def measure_copy(nbytes: int, warmup: int, iters: int) -> dict:
    import torch

    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    seconds = _median_seconds(lambda: dst.copy_(src), warmup, iters)
    moved = 2 * n * 4  # read src, write dst
    return {"bytes_per_copy": n * 4, "seconds": seconds, "GBps": moved / seconds / 1e9}


def measure_matmul(dtype_name: str, n: int, warmup: int, iters: int) -> dict:
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device="cuda").to(dtype)
    b = torch.randn(n, n, device="cuda").to(dtype)
    out = torch.empty(n, n, device="cuda", dtype=dtype)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the ops' float32 GEMMs run without it
    try:
        seconds = _median_seconds(lambda: torch.mm(a, b, out=out), warmup, iters)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    flops = 2 * n**3
    return {"n": n, "seconds": seconds, "TFLOPs": flops / seconds / 1e12}


def measure(args: argparse.Namespace) -> dict:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_ceilings: torch sees no CUDA device")
    result = {
        "device": torch.cuda.get_device_name(),
        "capability": "{}.{}".format(*torch.cuda.get_device_capability()),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": f"{datetime.datetime.now():%Y-%m-%d %H:%M}",
        "copy": measure_copy(args.copy_mib * 2**20, args.warmup, args.iters),
        "matmul": {
            name: measure_matmul(name, args.matmul_n, args.warmup, args.iters)
            for name in MATMUL_DTYPES
        },
        "notes": "copy GBps counts bytes read + written; float32 matmul with TF32 off",
    }
    return result


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


# ---------------------------------------------------------------- reading bench_ops results


def _parse_sizes(text: str) -> dict[str, int]:
    """'B=64 T=256 N=1,000,000' -> {'B': 64, 'T': 256, 'N': 1000000}."""
    return {k: int(v.replace(",", "")) for k, v in re.findall(r"(\w+)=([\d,]+)", text)}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_markdown(text: str) -> list[dict]:
    """Rows of every bench_ops table in ``text``, each tagged with its section heading.

    A bench_ops table has the columns ``op``, ``dtype``, ``sizes`` and ``compiled ms``, and
    the reference's time as ``ref ms`` (or ``whole ms``, as later bench_ops versions call
    gdig_ext/reference.py); see render() in bench_ops.py. Columns are found by name, so
    added or reordered columns are fine."""
    rows, heading, header = [], "", None
    for line in text.splitlines():
        if line.startswith("#"):
            heading, header = line.lstrip("#").strip(), None
            continue
        if not line.startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if header is None:
            if {"op", "dtype", "sizes", "compiled ms"} <= set(cells):
                header = cells
            continue
        if set("".join(cells)) <= set("-:"):
            continue  # the |---|---| line
        row = dict(zip(header, cells, strict=False))
        rows.append(
            {
                "section": heading,
                "op": row["op"],
                "dtype": row["dtype"],
                "sizes": _parse_sizes(row["sizes"]),
                "compiled_ms": float(row["compiled ms"]),
                "ref_ms": next((float(row[c]) for c in REF_COLUMNS if c in row), None),
            }
        )
    return rows


def load_rows(path: str) -> list[dict]:
    """bench_ops rows from its markdown (only sections whose heading names CUDA), or JSON.

    JSON: a list of rows, or {"rows": [...]}; each row has "op", "dtype", "sizes" (an object
    or bench_ops' text form) and "compiled_ms" (optionally "ref_ms" or "whole_ms"), or Row
    fields "comp_times_s"/"ref_times_s" (their medians are used)."""
    with open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        data = json.loads(text)
        rows = []
        for r in data["rows"] if isinstance(data, dict) else data:
            sizes = r["sizes"] if isinstance(r["sizes"], dict) else _parse_sizes(r["sizes"])
            comp = r.get("compiled_ms")
            if comp is None:
                comp = statistics.median(r["comp_times_s"]) * 1e3
            ref = r.get("ref_ms", r.get("whole_ms"))
            if ref is None and "ref_times_s" in r:
                ref = statistics.median(r["ref_times_s"]) * 1e3
            rows.append(
                {
                    "section": "json",
                    "op": r["op"],
                    "dtype": r["dtype"],
                    "sizes": sizes,
                    "compiled_ms": comp,
                    "ref_ms": ref,
                }
            )
        return rows
    rows = [r for r in parse_markdown(text) if "CUDA" in r["section"]]
    if not rows:
        raise SystemExit(f"gpu_ceilings: no bench_ops CUDA table in {path}")
    return rows


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}%"


def report(ceilings: dict, rows: list[dict]) -> str:
    copy_gbps = ceilings["copy"]["GBps"]
    mm = {k: v["TFLOPs"] for k, v in ceilings["matmul"].items()}
    lines = [
        f"## Ops against the ceilings of {ceilings['device']} (benchmarks/gpu_ceilings.py)",
        "",
        f"Ceilings measured {ceilings['date']} (torch {ceilings['torch']}, CUDA "
        f"{ceilings['cuda']}): copy {copy_gbps:.0f} GB/s (read + write); matmul "
        + ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in mm.items())
        + " (float32 without TF32).",
        "FLOP and compulsory bytes from the op definitions at each row's sizes; % of the "
        "matmul ceiling of the row's dtype and of the copy bandwidth. ref: "
        "gdig_ext/reference.py on the same inputs ('whole' in later bench_ops tables).",
        "",
        "| op | dtype | sizes | GFLOP | MB | compiled ms | TFLOP/s | % matmul | GB/s | % copy "
        "| ref ms | ref % matmul |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        flops, nbytes = op_counts(r["op"], r["dtype"], r["sizes"])
        sec = r["compiled_ms"] / 1e3
        tflops, gbps = flops / sec / 1e12, nbytes / sec / 1e9
        peak = mm.get(r["dtype"])
        pct_mm = 100 * tflops / peak if peak else None
        ref_pct = None
        if peak and r.get("ref_ms"):
            ref_pct = 100 * flops / (r["ref_ms"] / 1e3) / 1e12 / peak
        sizes = " ".join(f"{k}={v}" for k, v in r["sizes"].items())
        ref_ms = f"{r['ref_ms']:.1f}" if r.get("ref_ms") else "n/a"
        lines.append(
            f"| {r['op']} | {r['dtype']} | {sizes} | {flops / 1e9:.1f} | {nbytes / 1e6:.1f} "
            f"| {r['compiled_ms']:.2f} | {tflops:.2f} | {_pct(pct_mm)} | {gbps:.0f} "
            f"| {_pct(100 * gbps / copy_gbps)} | {ref_ms} | {_pct(ref_pct)} |"
        )
    return "\n".join(lines) + "\n"


def counts_table() -> str:
    """FLOP and byte counts at bench_ops' CUDA sizes, for every op and dtype it times."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from bench_ops import CUDA_SIZES  # read only; bench_ops is not run

    lines = ["| op | dtype | sizes | GFLOP | MB |", "|---|---|---|---:|---:|"]
    for op, sizes in CUDA_SIZES.items():
        for dtype in ["float32", "bfloat16"]:
            flops, nbytes = op_counts(op, dtype, sizes)
            text = " ".join(f"{k}={v}" for k, v in sizes.items())
            lines.append(f"| {op} | {dtype} | {text} | {flops / 1e9:.1f} | {nbytes / 1e6:.1f} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="measure the ceilings on this GPU and write them here (JSON)")
    p.add_argument("--ceilings", help="read ceilings from this JSON instead of measuring")
    p.add_argument("--report", help="bench_ops result (markdown from --out, or JSON) to rate")
    p.add_argument("--report-out", help="also write the report's markdown table here")
    p.add_argument(
        "--counts",
        action="store_true",
        help="print FLOP/byte counts at bench_ops' CUDA sizes and exit (no GPU needed)",
    )
    p.add_argument("--copy-mib", type=int, default=1024, help="size of the copied tensor")
    p.add_argument("--matmul-n", type=int, default=8192, help="n of the n x n x n matmuls")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    ns = p.parse_args(argv)
    if not (ns.counts or ns.out or ns.ceilings):
        p.error("give --out (measure), --ceilings (read) or --counts")
    if ns.out and ns.ceilings:
        p.error("--out measures and --ceilings reads: give one of them")
    if ns.report_out and not ns.report:
        p.error("--report-out needs --report")
    return ns


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.counts:
        print(counts_table())
        return
    if args.out:
        ceilings = measure(args)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(ceilings, f, indent=2)
        print(json.dumps(ceilings, indent=2))
        print(f"wrote {args.out}")
    else:
        with open(args.ceilings) as f:
            ceilings = json.load(f)
    if args.report:
        table = report(ceilings, load_rows(args.report))
        print()
        print(table)
        if args.report_out:
            with open(args.report_out, "w") as f:
                f.write(table)
            print(f"wrote {args.report_out}")


if __name__ == "__main__":
    main()
