"""Time and peak memory of each compiled op against its pure-PyTorch reference.

    python benchmarks/bench_ops.py [--device cpu|cuda] [--quick] [--out benchmarks/RESULTS.md]

Peak memory of each (op, dtype, implementation) is taken in a fresh child process, so
that one side's allocator caches and lazy initialisation cannot lower or raise the
other's figure: the inputs are built, the peak is reset, and the op runs once, cold (as
a pipeline pays per call). Times come from a third child holding both sides on the same
inputs: one warm-up each, then ``--repeats`` rounds alternating which side goes first, so
that load from other processes on a small machine hits both alike; medians are reported.

Peak memory is what the call adds on top of its inputs, outputs included:
CPU: resident-set high-water mark (VmHWM after resetting it through
/proc/self/clear_refs) minus the resident set before the call;
CUDA: torch.cuda.max_memory_allocated minus memory_allocated before the call.

Targets (METHOD.md section 6, issue 2): every compiled op at least as fast as its
reference at the same dtype, and lowrank_benefit, ekfac_accumulate and score_stats at
most half the reference's peak memory.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMORY_TARGET_OPS = {"lowrank_benefit", "ekfac_accumulate", "score_stats"}
OPS = ["project_grads", "lowrank_benefit", "ekfac_accumulate", "score_stats"]

# Realistic sizes that still run in a few minutes on a 2-core CPU; --quick shrinks them.
SIZES = {
    "project_grads": {"B": 32, "T": 256, "d_in": 4096, "d_out": 4096, "k_in": 64, "k_out": 64},
    "lowrank_benefit": {"B": 16, "T": 128, "d_in": 2048, "d_out": 2048, "S": 256, "r": 32},
    "ekfac_accumulate": {"B": 16, "T": 128, "d_in": 2048, "d_out": 2048},
    "score_stats": {"N": 200_000, "D": 2048, "S": 256, "k": 16},
}
QUICK_SIZES = {
    "project_grads": {"B": 4, "T": 32, "d_in": 256, "d_out": 256, "k_in": 16, "k_out": 16},
    "lowrank_benefit": {"B": 4, "T": 32, "d_in": 256, "d_out": 256, "S": 32, "r": 8},
    "ekfac_accumulate": {"B": 4, "T": 32, "d_in": 256, "d_out": 256},
    "score_stats": {"N": 20_000, "D": 256, "S": 32, "k": 8},
}
# Sizes on a GPU: the full CPU sizes are far too small to show anything there.
CUDA_SIZES = {
    "project_grads": {"B": 64, "T": 256, "d_in": 4096, "d_out": 4096, "k_in": 64, "k_out": 64},
    "lowrank_benefit": {"B": 64, "T": 256, "d_in": 4096, "d_out": 4096, "S": 256, "r": 32},
    "ekfac_accumulate": {"B": 64, "T": 256, "d_in": 4096, "d_out": 4096},
    "score_stats": {"N": 1_000_000, "D": 4096, "S": 256, "k": 64},  # cand: 16 GB in float32
}


@dataclass
class BenchConfig:
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    quick: bool = field(default=False, metadata={"help": "tiny sizes: a smoke run in seconds"})
    out: str | None = field(
        default=None,
        metadata={
            "help": "markdown file to write the table to; only the section between the "
            "bench_ops markers is replaced, other sections are kept"
        },
    )
    repeats: int = field(
        default=5, metadata={"help": "timed rounds (one run of each side) after a warm-up"}
    )
    dtypes: list[str] = field(
        default_factory=lambda: ["float32", "bfloat16"], metadata={"help": "input dtypes"}
    )
    ops: list[str] = field(default_factory=lambda: list(OPS), metadata={"help": "ops to time"})
    threads: int = field(
        default=0, metadata={"help": "torch threads in each child; 0 = torch's default"}
    )
    mmap_threshold: int | None = field(
        default=None,
        metadata={
            "help": "CPU: set glibc MALLOC_MMAP_THRESHOLD_ (bytes) in the children, so that "
            "freed tiles go back to the OS and the peak shows the working set rather than heap "
            "fragmentation; default: glibc's own (dynamic) threshold"
        },
    )


@dataclass
class Row:
    """One (op, dtype) line of the table: both implementations on the same inputs."""

    op: str
    dtype: str
    sizes: dict[str, int]
    ref_times_s: list[float]
    comp_times_s: list[float]
    ref_peak_bytes: int
    comp_peak_bytes: int
    ref_checksum: list[float]  # norms of the float outputs, to see both sides agree
    comp_checksum: list[float]

    @property
    def ref_s(self) -> float:
        return statistics.median(self.ref_times_s)

    @property
    def comp_s(self) -> float:
        return statistics.median(self.comp_times_s)


# ---------------------------------------------------------------- child side


def _make_inputs(op: str, sizes: dict[str, int], dtype, device: str) -> tuple:
    import torch

    def randn(*shape: int) -> torch.Tensor:
        # Generated in float32 and converted, one tensor at a time, so that the largest
        # transient is freed before the peak is reset.
        return torch.randn(*shape, device=device).to(dtype)

    if op == "score_stats":
        n, d, s, k = sizes["N"], sizes["D"], sizes["S"], sizes["k"]
        return (randn(n, d), randn(s, d), k)
    b, t, d_in, d_out = sizes["B"], sizes["T"], sizes["d_in"], sizes["d_out"]
    acts, out_grads = randn(b, t, d_in), randn(b, t, d_out)
    # Right padding: lengths spread between T/2 and T, as in a length-bucketed batch.
    lengths = torch.linspace(t // 2, t, b, device=device).round().long()
    mask = torch.arange(t, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    if op == "project_grads":
        k_in, k_out = sizes["k_in"], sizes["k_out"]
        return (acts, out_grads, mask, randn(d_in, k_in), randn(d_out, k_out))
    if op == "lowrank_benefit":
        s, r = sizes["S"], sizes["r"]
        return (acts, out_grads, mask, randn(s, r, d_out), randn(s, r, d_in))
    if op == "ekfac_accumulate":
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        q_a, _ = torch.linalg.qr(torch.randn(d_in, d_in, device=device))
        q_s, _ = torch.linalg.qr(torch.randn(d_out, d_out, device=device))
        lam = torch.zeros(d_out, d_in, dtype=acc, device=device)
        return (acts, out_grads, mask, q_a.to(dtype), q_s.to(dtype), lam)
    raise SystemExit(f"bench_ops: unknown op {op!r}; choose from {', '.join(OPS)}")


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key} line")


class _PeakMeter:
    """Peak memory added by a block of code on one device."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self) -> _PeakMeter:
        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            # Writing 5 resets VmHWM to the current RSS (Linux >= 4.0).
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = _proc_status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = _proc_status_kib("VmHWM") * 1024 - self.base


def _checksum(result) -> list[float]:
    import torch

    items = result if isinstance(result, tuple) else (result,)
    return [
        torch.linalg.vector_norm(x.double()).item()
        for x in items
        if isinstance(x, torch.Tensor) and x.is_floating_point()
    ]


def run_child(spec: dict) -> dict:
    """One measurement in this (fresh) process.

    mode "memory": one cold call of spec["impl"]; returns its peak and output checksum.
    mode "time": both implementations, one warm-up each, then ``repeats`` rounds that
    alternate which side goes first, so that load from other processes hits both alike.
    """
    sys.path.insert(0, ROOT)
    import torch

    import gdig_ext
    from gdig_ext import reference

    if spec["threads"] > 0:
        torch.set_num_threads(spec["threads"])
    device, op = spec["device"], spec["op"]
    dtype = getattr(torch, spec["dtype"])
    torch.manual_seed(0)  # both sides of a row see the same inputs, so their checksums agree
    args = _make_inputs(op, spec["sizes"], dtype, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    impls: dict[str, Callable] = {
        "reference": getattr(reference, op),
        "compiled": getattr(gdig_ext, op),
    }

    if spec["mode"] == "memory":
        fn = impls[spec["impl"]]
        with _PeakMeter(device) as meter:
            result = fn(*args)
            sync()
        checksum = _checksum(args[-1] if op == "ekfac_accumulate" else result)
        return {"peak_bytes": meter.peak, "checksum": checksum}

    def timed(fn: Callable) -> float:
        sync()
        start = time.perf_counter()
        fn(*args)
        sync()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"reference": [], "compiled": []}
    for fn in impls.values():
        timed(fn)  # warm-up: lazy initialisation, allocator caches
    for i in range(spec["repeats"]):
        order = ["reference", "compiled"] if i % 2 == 0 else ["compiled", "reference"]
        for impl in order:
            times[impl].append(timed(impls[impl]))
    return times


# ---------------------------------------------------------------- parent side


def _child(spec: dict, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        what = f"{spec['op']} {spec['dtype']} {spec['mode']} {spec.get('impl', '')}".strip()
        raise SystemExit(
            f"bench_ops: child for {what} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(cfg: BenchConfig, op: str, dtype: str, sizes: dict[str, int]) -> Row:
    env = dict(os.environ)
    if cfg.mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(cfg.mmap_threshold)
    base = {
        "op": op,
        "dtype": dtype,
        "sizes": sizes,
        "device": cfg.device,
        "repeats": cfg.repeats,
        "threads": cfg.threads,
    }
    ref = _child({**base, "mode": "memory", "impl": "reference"}, env)
    comp = _child({**base, "mode": "memory", "impl": "compiled"}, env)
    times = _child({**base, "mode": "time"}, env)
    return Row(
        op=op,
        dtype=dtype,
        sizes=sizes,
        ref_times_s=times["reference"],
        comp_times_s=times["compiled"],
        ref_peak_bytes=ref["peak_bytes"],
        comp_peak_bytes=comp["peak_bytes"],
        ref_checksum=ref["checksum"],
        comp_checksum=comp["checksum"],
    )


def machine_description(device: str) -> str:
    import torch

    if device == "cuda":
        return (
            f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
        )
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        model = info.get("Model name", model)
        if "CPU family" in info and "Model" in info:
            model += f" (family {info['CPU family']}, model {info['Model']})"
    except (OSError, subprocess.CalledProcessError):
        pass
    return (
        f"{model}, {os.cpu_count()} cores (torch {torch.__version__}, "
        f"torch threads={torch.get_num_threads()}); 1-min load average {_load():.1f} at the start"
    )


def _load() -> float:
    # Other processes on a small machine move the timings; the table states how busy it was.
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _sizes_text(sizes: dict[str, int]) -> str:
    return " ".join(f"{k}={v:,}" if v >= 10_000 else f"{k}={v}" for k, v in sizes.items())


def _checksum_gap(a: list[float], b: list[float]) -> float:
    gaps = [abs(x - y) / max(abs(y), 1e-30) for x, y in zip(a, b, strict=True)]
    return max(gaps, default=0.0)


def render(cfg: BenchConfig, rows: list[Row], machine: str, load_end: float) -> str:
    flags = f"--device {cfg.device}{' --quick' if cfg.quick else ''} --repeats {cfg.repeats}"
    if cfg.threads:
        flags += f" --threads {cfg.threads}"
    if cfg.mmap_threshold is not None:
        flags += f" --mmap-threshold {cfg.mmap_threshold}"
    peak_how = (
        "resident-set high-water mark"
        + (
            f", glibc MALLOC_MMAP_THRESHOLD_={cfg.mmap_threshold}"
            if cfg.mmap_threshold is not None
            else ", default glibc malloc"
        )
        if cfg.device == "cpu"
        else "torch.cuda.max_memory_allocated"
    )
    lines = [
        f"## Ops, {variant(cfg)} (benchmarks/bench_ops.py)",
        "",
        f"Machine: {machine}; load average {load_end:.1f} at the end. "
        f"Run {datetime.datetime.now():%Y-%m-%d %H:%M} with "
        f"`python benchmarks/bench_ops.py {flags}`.",
        "",
        f"Time: median over {cfg.repeats} runs after a warm-up, the two sides alternating in one "
        "process. Peak: what one cold call adds on top of its inputs, outputs included, each "
        f"side in a fresh process ({peak_how}).",
        "Targets: speed-up (reference time / compiled time) >= 1 for every op; peak ratio "
        "(compiled / reference) <= 0.5 for lowrank_benefit, ekfac_accumulate, score_stats. "
        "Check: largest relative gap between the norms of the two sides' float outputs.",
        "",
        "| op | dtype | sizes | ref ms | compiled ms | speed-up | ref peak MiB "
        "| compiled peak MiB | peak ratio | check | targets |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        speedup = row.ref_s / row.comp_s
        ratio = row.comp_peak_bytes / row.ref_peak_bytes if row.ref_peak_bytes > 0 else float("nan")
        missed = []
        if speedup < 1.0:
            missed.append("slower")
        if row.op in MEMORY_TARGET_OPS and not ratio <= 0.5:
            missed.append("memory")
        lines.append(
            f"| {row.op} | {row.dtype} | {_sizes_text(row.sizes)} "
            f"| {row.ref_s * 1e3:.1f} | {row.comp_s * 1e3:.1f} | {speedup:.2f} "
            f"| {_mib(row.ref_peak_bytes)} | {_mib(row.comp_peak_bytes)} | {ratio:.2f} "
            f"| {_checksum_gap(row.comp_checksum, row.ref_checksum):.1e} "
            f"| {'met' if not missed else 'MISSED: ' + ', '.join(missed)} |"
        )
    return "\n".join(lines) + "\n"


def variant(cfg: BenchConfig) -> str:
    """What distinguishes one table from another in the results file."""
    parts = [cfg.device.upper()]
    if cfg.quick:
        parts.append("quick sizes")
    if cfg.threads:
        parts.append(f"{cfg.threads} thread" + ("s" if cfg.threads > 1 else ""))
    if cfg.mmap_threshold is not None:
        parts.append(f"MALLOC_MMAP_THRESHOLD_={cfg.mmap_threshold}")
    return ", ".join(parts)


def write_section(path: str, section: str, key: str) -> None:
    """Replace this script's section for ``key`` in ``path`` (between markers), keep the rest.

    Other sections, by other scripts or by this one for another device or setting, stay.
    """
    start = f"<!-- bench_ops {key}: start (generated by benchmarks/bench_ops.py) -->"
    end = f"<!-- bench_ops {key}: end -->"
    block = f"{start}\n{section}{end}\n"
    text = open(path).read() if os.path.exists(path) else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    elif ": end -->" in text and "<!-- bench_ops " in text:
        # Keep the ops tables together: after the last one, before other scripts' sections.
        last = text.rindex("<!-- bench_ops ")
        cut = text.index("-->", last) + len("-->\n")
        head, tail = text[:cut], text[cut:].lstrip("\n")
        text = head + "\n" + block + ("\n" + tail if tail else "")
    elif text:
        text = text.rstrip("\n") + "\n\n" + block
    else:
        text = "# Benchmark results\n\n" + block
    with open(path, "w") as f:
        f.write(text)


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    defaults = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    help_of = {name: f.metadata["help"] for name, f in BenchConfig.__dataclass_fields__.items()}
    p.add_argument(
        "--device", choices=["cpu", "cuda"], default=defaults.device, help=help_of["device"]
    )
    p.add_argument("--quick", action="store_true", help=help_of["quick"])
    p.add_argument("--out", default=None, help=help_of["out"])
    p.add_argument("--repeats", type=int, default=defaults.repeats, help=help_of["repeats"])
    p.add_argument(
        "--dtypes",
        nargs="+",
        default=defaults.dtypes,
        choices=["float32", "bfloat16", "float16", "float64"],
        help=help_of["dtypes"],
    )
    p.add_argument("--ops", nargs="+", default=defaults.ops, choices=OPS, help=help_of["ops"])
    p.add_argument("--threads", type=int, default=defaults.threads, help=help_of["threads"])
    p.add_argument("--mmap-threshold", type=int, default=None, help=help_of["mmap_threshold"])
    ns = p.parse_args(argv)
    if ns.repeats < 1:
        p.error(f"--repeats must be at least 1, got {ns.repeats}")
    return BenchConfig(**vars(ns))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(run_child(json.loads(argv[1]))))
        return
    cfg = parse_args(argv)
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_ops: --device cuda but torch sees no CUDA device")
    if cfg.device == "cuda":
        sys.path.insert(0, ROOT)
        import gdig_ext

        if not gdig_ext.cuda_available():
            raise SystemExit(
                "bench_ops: --device cuda but gdig_ext was built without its CUDA kernels; "
                "rebuild with GDIG_CUDA=1 pip install -e . --no-build-isolation"
            )
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    table = QUICK_SIZES if cfg.quick else CUDA_SIZES if cfg.device == "cuda" else SIZES
    machine = machine_description(cfg.device)
    print(f"# {machine}", flush=True)
    rows = []
    for op in cfg.ops:
        for dtype in cfg.dtypes:
            row = measure(cfg, op, dtype, table[op])
            print(
                f"{op:17s} {dtype:9s} "
                f"ref {row.ref_s * 1e3:9.1f} ms {_mib(row.ref_peak_bytes):>8s} MiB   "
                f"compiled {row.comp_s * 1e3:9.1f} ms {_mib(row.comp_peak_bytes):>8s} MiB",
                flush=True,
            )
            rows.append(row)
    section = render(cfg, rows, machine, _load())
    print()
    print(section)
    if cfg.out:
        write_section(cfg.out, section, variant(cfg))
        print(f"wrote {cfg.out}")


if __name__ == "__main__":
    main()
