"""Time and peak memory of each compiled op against two pure-PyTorch baselines.

    python benchmarks/bench_ops.py [--device cpu|cuda] [--quick] [--out benchmarks/RESULTS.md]

Baselines, each at the compiled op's own precision on that device (every big product in
the same dtype, with the same accumulation, as the kernel in csrc/ or csrc/cuda/):
  * whole: gdig_ext/reference.py, the test oracle, written the best way plain PyTorch
    allows but holding whole intermediates (B x T x S*r, B x d_out x d_in, N-chunks of
    N x S). The one op whose oracle runs at another precision is ekfac_accumulate with
    bf16 inputs: the oracle widens the rotated tokens to fp32 and runs its big bmm in fp32,
    while the CPU kernel multiplies in bf16 (bf16 result) and the CUDA kernel in bf16 with
    a fp32 result. The benchmark times a twin of the oracle with its bmm in the kernel's
    dtypes (``ekfac_accumulate_whole``; the CUDA form, ``bmm(out_dtype=float32)``, has not
    run on a GPU yet). The oracle itself is left as it is, rather than made to mirror each
    backend: one formula for every device, which tests/test_ops.py checks them all against.
    The other ops' references already match their kernels: GEMMs in the input dtype,
    products and statistics in fp32.
  * frugal: chunked loops over examples (and seeds, and rows of N) as a peer library
    (kronfluence, LESS) would write them, holding at most the compiled kernel's own tile
    budget of intermediates at a time (``FRUGAL_BUDGET``).

Peak memory of each (op, dtype, implementation) is taken in a fresh child process, so
that one side's allocator caches and lazy initialisation cannot lower or raise the
other's figure: the inputs are built, the peak is reset, and the op runs once, cold (as
a pipeline pays per call). Times come from a further child holding all three on the same
inputs: one warm-up each, then ``--repeats`` rounds rotating which side goes first, so
that load from other processes on a small machine hits them alike; medians are reported.

Peak memory is what the call adds on top of its inputs, outputs included:
CPU: resident-set high-water mark (VmHWM after resetting it through
/proc/self/clear_refs) minus the resident set before the call;
CUDA: torch.cuda.max_memory_allocated minus memory_allocated before the call.

Targets (METHOD.md section 6, issue 2), against the whole reference: every compiled op at
least as fast, and lowrank_benefit, ekfac_accumulate and score_stats at most half its peak
memory. Against the frugal baseline the table flags every op that is slower or needs more
peak memory (no target was set there; the flags say where the compiled code loses).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from harness import Machine, PeakMeter, add_common_args, child_main, run_child
from harness import write_section as write_results_section

MEMORY_TARGET_OPS = {"lowrank_benefit", "ekfac_accumulate", "score_stats"}
OPS = ["project_grads", "lowrank_benefit", "ekfac_accumulate", "score_stats"]
# The compiled op and its two baselines (see the module docstring).
IMPLS = ["compiled", "whole", "frugal"]

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
    data_dir: str | None = field(default=None, metadata={"help": "unused: inputs are random"})
    strict_load: bool = field(default=False, metadata={"help": "refuse to start when busy"})


@dataclass
class Check:
    """How far one side's outputs are from the whole reference's, element by element."""

    rel: float  # largest |x - y| over the largest |y|, over every float output
    ints_differ: int  # integer outputs (n_pos, top-k indices) that are not equal
    ints: int  # integer outputs compared

    def text(self) -> str:
        ints = f"; {self.ints_differ} of {self.ints:,} ints differ" if self.ints else ""
        return f"{self.rel:.1e}{ints}"


def compare(got: list[torch.Tensor], want: list[torch.Tensor]) -> Check:
    """Elementwise: the relative gap of float outputs, the count of unequal integer ones."""
    rel, differ, ints = 0.0, 0, 0
    for x, y in zip(got, want, strict=True):
        if y.is_floating_point():
            scale = y.double().abs().max().clamp_min(1e-30)
            rel = max(rel, ((x.double() - y.double()).abs().max() / scale).item())
        else:
            differ += int((x != y).sum())
            ints += y.numel()
    return Check(rel, differ, ints)


@dataclass
class Row:
    """One (op, dtype) line of the table: every implementation (IMPLS) on the same inputs."""

    op: str
    dtype: str
    sizes: dict[str, int]
    times_s: dict[str, list[float]]
    peak_bytes: dict[str, int]
    checks: dict[str, dict]  # compiled and frugal against whole: Check fields

    def time_s(self, impl: str) -> float:
        return statistics.median(self.times_s[impl])

    def speedup(self, baseline: str) -> float:
        """Baseline time / compiled time: above 1 when the compiled op is faster."""
        return self.time_s(baseline) / self.time_s("compiled")

    def peak_ratio(self, baseline: str) -> float:
        """Compiled peak / baseline peak: below 1 when the compiled op needs less memory."""
        base = self.peak_bytes[baseline]
        return self.peak_bytes["compiled"] / base if base > 0 else float("nan")

    def check(self) -> str:
        """compiled and frugal against whole, elementwise."""
        return " / ".join(Check(**self.checks[impl]).text() for impl in ("compiled", "frugal"))


# ---------------------------------------------------------------- baselines
#
# The oracle (gdig_ext/reference.py) stays one device-independent formula; only the
# benchmark needs to mirror each backend's working dtype and to chunk, so both live here.

# Elements of intermediates per chunk in the frugal baselines: the compiled kernels' own
# kTileElems (csrc/*.cpp; csrc/cuda/cuda_utils.cuh), so both hold the same working set.
FRUGAL_BUDGET = {
    "cpu": {"project_grads": 1 << 24, "default": 1 << 22},
    "cuda": {"default": 1 << 25},
}


def frugal_budget(op: str, device: str) -> int:
    """Elements of intermediates a frugal baseline of ``op`` may hold at once on ``device``."""
    table = FRUGAL_BUDGET["cuda" if device == "cuda" else "cpu"]
    return table.get(op, table["default"])


def _chunk(per_item: int, budget: int, total: int) -> int:
    """Items per chunk so that chunk x per_item stays within budget (at least 1): tile_rows."""
    return max(1, min(total, budget // max(per_item, 1)))


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def ekfac_dtypes(acts: torch.Tensor, lam: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(rotated tokens, rotated gradients): the dtypes ekfac_accumulate's kernel works in.

    CPU, bf16: both bf16 (the bf16 GEMM accumulates in fp32 and rounds each rotated entry
    to bf16), squared in float. CUDA, bf16/fp16: tokens in the input dtype, the batched GEMM
    writes fp32 (cublasGemmStridedBatchedEx). Everything else: lam's dtype throughout.
    """
    if acts.device.type == "cpu" and acts.dtype == torch.bfloat16:
        return torch.bfloat16, torch.bfloat16
    if acts.device.type == "cuda" and acts.dtype in (torch.bfloat16, torch.float16):
        return acts.dtype, torch.float32
    return lam.dtype, lam.dtype


def _rotated_gradients(gt: torch.Tensor, a: torch.Tensor, out: torch.dtype) -> torch.Tensor:
    """bmm(gt, a) written in ``out``: low-precision inputs with a fp32 result on CUDA."""
    if gt.dtype == out:
        return torch.bmm(gt, a)
    return torch.bmm(gt, a, out_dtype=out)  # CUDA only, like the kernel's cuBLAS call


def ekfac_accumulate_whole(
    acts: torch.Tensor,
    out_grads: torch.Tensor,
    mask: torch.Tensor,
    q_a: torch.Tensor,
    q_s: torch.Tensor,
    lam: torch.Tensor,
) -> None:
    """reference.ekfac_accumulate, with its big bmm in the kernel's dtypes (ekfac_dtypes).

    The same code as the reference for float32/float64. For bf16 the reference widens the
    rotated tokens to fp32 and so runs a fp32 GEMM, where the CPU kernel runs a bf16 one
    (bf16 output) and the CUDA kernel a bf16 one with fp32 output.
    """
    tokens, tile = ekfac_dtypes(acts, lam)
    a = (acts @ q_a).to(tokens)  # rotate tokens first: cheaper than rotating G
    g = (out_grads @ q_s).to(tokens) * mask.to(tokens).unsqueeze(-1)
    rotated = _rotated_gradients(g.transpose(1, 2), a, tile).to(lam.dtype)  # [B,d_out,d_in]
    if rotated.shape[0] == 1:  # one example: square and add without a temporary
        lam.addcmul_(rotated[0], rotated[0])
    else:
        lam.add_(rotated.square_().sum(dim=0))


def project_grads_frugal(
    acts: torch.Tensor,
    out_grads: torch.Tensor,
    mask: torch.Tensor,
    p_in: torch.Tensor,
    p_out: torch.Tensor,
    budget: int | None = None,
) -> torch.Tensor:
    """reference.project_grads in chunks of examples (projected tokens within ``budget``)."""
    budget = budget or frugal_budget("project_grads", acts.device.type)
    acc = _acc_dtype(acts)
    B, T = acts.shape[:2]
    out = torch.empty(B, p_out.shape[1], p_in.shape[1], dtype=acc, device=acts.device)
    m = mask.to(acc).unsqueeze(-1)
    step = _chunk(T * (p_in.shape[1] + p_out.shape[1]), budget, B)
    for b0 in range(0, B, step):
        a = (acts[b0 : b0 + step] @ p_in).to(acc)
        g = (out_grads[b0 : b0 + step] @ p_out).to(acc).mul_(m[b0 : b0 + step])
        torch.bmm(g.transpose(1, 2), a, out=out[b0 : b0 + step])
    return out


def lowrank_benefit_frugal(
    acts: torch.Tensor,
    out_grads: torch.Tensor,
    mask: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    budget: int | None = None,
) -> torch.Tensor:
    """reference.lowrank_benefit over chunks of seeds and examples.

    Each chunk's projections are GEMMs in the input dtype, widened and multiplied in the
    accumulation dtype (as the kernel reduces them); at most ``budget`` projected values
    per tensor exist at a time.
    """
    budget = budget or frugal_budget("lowrank_benefit", acts.device.type)
    acc = _acc_dtype(acts)
    S, r, d_out = u.shape
    d_in = v.shape[2]
    B, T = acts.shape[:2]
    out = torch.empty(B, S, dtype=acc, device=acts.device)
    m = mask.to(acc).unsqueeze(-1)
    s_step = _chunk(T * r, budget, S)  # seeds whose projections of one example fit
    b_step = _chunk(T * s_step * r, budget, B)
    for s0 in range(0, S, s_step):
        ut = u[s0 : s0 + s_step].reshape(-1, d_out).T
        vt = v[s0 : s0 + s_step].reshape(-1, d_in).T
        for b0 in range(0, B, b_step):
            gu = (out_grads[b0 : b0 + b_step] @ ut).to(acc)  # [b,T,s*r]
            av = (acts[b0 : b0 + b_step] @ vt).to(acc)
            gu.mul_(av).mul_(m[b0 : b0 + b_step])
            out[b0 : b0 + b_step, s0 : s0 + s_step] = gu.unflatten(2, (-1, r)).sum(dim=(1, 3))
    return out


def ekfac_accumulate_frugal(
    acts: torch.Tensor,
    out_grads: torch.Tensor,
    mask: torch.Tensor,
    q_a: torch.Tensor,
    q_s: torch.Tensor,
    lam: torch.Tensor,
    budget: int | None = None,
) -> None:
    """ekfac_accumulate_whole in chunks of examples (a per-example loop at realistic sizes).

    Each chunk rotates its own tokens and forms its rotated gradients with one bmm in the
    kernel's dtypes (ekfac_dtypes); chunk x (d_out x d_in + rotated tokens) stays within
    ``budget``, and never below one example.
    """
    budget = budget or frugal_budget("ekfac_accumulate", acts.device.type)
    B, T, d_in = acts.shape
    d_out = out_grads.shape[2]
    step = _chunk(d_out * d_in + T * (d_in + d_out), budget, B)
    for b0 in range(0, B, step):
        chunk = slice(b0, b0 + step)
        ekfac_accumulate_whole(acts[chunk], out_grads[chunk], mask[chunk], q_a, q_s, lam)


def score_stats_frugal(
    cand: torch.Tensor, seeds: torch.Tensor, k: int, budget: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """reference.score_stats over row chunks of ``budget`` scores, written into the outputs.

    Each chunk's scores stay in the GEMM's dtype (as in the kernel); the statistics are
    read from them in the accumulation dtype, so no widened copy of the chunk is made.
    """
    budget = budget or frugal_budget("score_stats", seeds.device.type)
    acc, dev = _acc_dtype(cand), seeds.device
    N, S = cand.shape[0], seeds.shape[0]
    n_pos = torch.empty(N, dtype=torch.int64, device=dev)
    mean = torch.empty(N, dtype=acc, device=dev)
    mn = torch.empty(N, dtype=acc, device=dev)
    top_val = torch.empty(N, k, dtype=acc, device=dev)
    top_idx = torch.empty(N, k, dtype=torch.int64, device=dev)
    step = _chunk(S, budget, N)
    for c0 in range(0, N, step):
        c1 = min(N, c0 + step)
        sc = cand[c0:c1].to(dev) @ seeds.T
        torch.sum(sc > 0, dim=1, out=n_pos[c0:c1])
        mean[c0:c1] = sc.mean(dim=1, dtype=acc)
        mn[c0:c1] = sc.amin(dim=1)
        val, idx = sc.topk(k, dim=1)
        top_val[c0:c1], top_idx[c0:c1] = val, idx
    return n_pos, mean, mn, top_val, top_idx


def implementations(op: str) -> dict[str, Callable]:
    """The compiled op and its two baselines, keyed by IMPLS."""
    import gdig_ext
    from gdig_ext import reference

    whole = ekfac_accumulate_whole if op == "ekfac_accumulate" else getattr(reference, op)
    frugal = {
        "project_grads": project_grads_frugal,
        "lowrank_benefit": lowrank_benefit_frugal,
        "ekfac_accumulate": ekfac_accumulate_frugal,
        "score_stats": score_stats_frugal,
    }[op]
    return {"compiled": getattr(gdig_ext, op), "whole": whole, "frugal": frugal}


# ---------------------------------------------------------------- child side


def _make_inputs(op: str, sizes: dict[str, int], dtype, device: str) -> tuple:
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


def outputs(op: str, fn: Callable, args: tuple) -> list[torch.Tensor]:
    """The outputs of one call (ekfac_accumulate's into a fresh copy of its lam)."""
    if op == "ekfac_accumulate":
        lam = args[-1].clone()
        fn(*args[:-1], lam)
        return [lam]
    result = fn(*args)
    return list(result) if isinstance(result, tuple) else [result]


def measure_child(spec: dict) -> dict:
    """One measurement in this (fresh) process.

    mode "memory": one cold call of spec["impl"]; returns its peak.
    mode "time": every implementation once (the warm-up, whose outputs are compared with
    whole's element by element), then ``repeats`` rounds that rotate which one goes first,
    so that load from other processes hits them alike.
    """
    if spec["threads"] > 0:
        torch.set_num_threads(spec["threads"])
    device, op = spec["device"], spec["op"]
    dtype = getattr(torch, spec["dtype"])
    torch.manual_seed(0)  # every side of a row sees the same inputs
    args = _make_inputs(op, spec["sizes"], dtype, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    impls = implementations(op)

    if spec["mode"] == "memory":
        with PeakMeter(device) as meter:
            impls[spec["impl"]](*args)
            sync()
        return {"peak_bytes": meter.peak}

    def timed(fn: Callable) -> float:
        sync()
        start = time.perf_counter()
        fn(*args)
        sync()
        return time.perf_counter() - start

    out = {impl: outputs(op, fn, args) for impl, fn in impls.items()}  # warm-up too
    checks = {impl: vars(compare(out[impl], out["whole"])) for impl in ("compiled", "frugal")}
    del out
    times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for i in range(spec["repeats"]):
        shift = i % len(IMPLS)
        for impl in IMPLS[shift:] + IMPLS[:shift]:
            times[impl].append(timed(impls[impl]))
    return {"times": times, "checks": checks}


# ---------------------------------------------------------------- parent side


def _child(spec: dict, env: dict[str, str]) -> dict:
    res = run_child(__file__, spec, env)
    if "failed" in res:
        what = f"{spec['op']} {spec['dtype']} {spec['mode']} {spec.get('impl', '')}".strip()
        raise SystemExit(f"bench_ops: child for {what} failed: {res['failed']}")
    return res


def measure(cfg: BenchConfig, op: str, dtype: str, sizes: dict[str, int]) -> Row:
    env = {}
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
    mem = {impl: _child({**base, "mode": "memory", "impl": impl}, env) for impl in IMPLS}
    timing = _child({**base, "mode": "time"}, env)
    return Row(
        op=op,
        dtype=dtype,
        sizes=sizes,
        times_s=timing["times"],
        peak_bytes={impl: m["peak_bytes"] for impl, m in mem.items()},
        checks=timing["checks"],
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def _sizes_text(sizes: dict[str, int]) -> str:
    return " ".join(f"{k}={v:,}" if v >= 10_000 else f"{k}={v}" for k, v in sizes.items())


def command_flags(cfg: BenchConfig) -> str:
    """The options that made this table: --device and --repeats, then any not at its default
    (so that the command printed above the table reruns exactly it)."""
    default = BenchConfig()
    flags = f"--device {cfg.device}{' --quick' if cfg.quick else ''} --repeats {cfg.repeats}"
    for name in ("dtypes", "ops"):
        if getattr(cfg, name) != getattr(default, name):
            flags += f" --{name} " + " ".join(getattr(cfg, name))
    if cfg.threads:
        flags += f" --threads {cfg.threads}"
    if cfg.mmap_threshold is not None:
        flags += f" --mmap-threshold {cfg.mmap_threshold}"
    return flags


def render(cfg: BenchConfig, rows: list[Row], machine: str) -> str:
    """The table, under the machine line (``Machine.line()``) and the command."""
    flags = command_flags(cfg)
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
        f"`python benchmarks/bench_ops.py {flags}`",
        "",
        machine,
        "",
        f"Time: median over {cfg.repeats} runs after a warm-up, the three sides taking turns "
        "in one process. Peak: what one cold call adds on top of its inputs, outputs included, "
        f"each side in a fresh process ({peak_how}).",
        "Baselines, both at the compiled op's precision: *whole* = gdig_ext/reference.py (the "
        "test oracle, whole intermediates; for ekfac_accumulate its twin with the bmm in the "
        "kernel's dtype), *frugal* = chunked pure PyTorch within the kernel's own tile budget. "
        "Speed-up = baseline time / compiled time (above 1: compiled faster); peak ratio = "
        "compiled peak / baseline peak (below 1: compiled smaller).",
        "Targets (vs whole): speed-up >= 1 for every op; peak ratio <= 0.5 for "
        "lowrank_benefit, ekfac_accumulate, score_stats. *Loses to frugal*: speed-up vs frugal "
        "below 1 (slower) or peak ratio vs frugal above 1 (more memory); no target was set "
        "there. Check, compiled / frugal against whole, element by element: the largest "
        "absolute difference of the float outputs over the largest absolute value of whole's, "
        "and how many integer outputs (score_stats' n_pos and top-k indices) differ.",
        "",
        "| op | dtype | sizes | compiled ms | whole ms | speed-up vs whole | frugal ms "
        "| speed-up vs frugal | compiled MiB | whole MiB | peak ratio vs whole | frugal MiB "
        "| peak ratio vs frugal | check | targets (vs whole) | loses to frugal |",
        "|---|---|---|" + "---:|" * 11 + "---|---|",
    ]
    for row in rows:
        missed = []
        if row.speedup("whole") < 1.0:
            missed.append("slower")
        if row.op in MEMORY_TARGET_OPS and not row.peak_ratio("whole") <= 0.5:
            missed.append("memory")
        loses = []
        if row.speedup("frugal") < 1.0:
            loses.append("slower")
        if not row.peak_ratio("frugal") <= 1.0:
            loses.append("more memory")
        cells = [row.op, row.dtype, _sizes_text(row.sizes), f"{row.time_s('compiled') * 1e3:.1f}"]
        for base in ("whole", "frugal"):
            cells += [f"{row.time_s(base) * 1e3:.1f}", f"{row.speedup(base):.2f}"]
        cells.append(_mib(row.peak_bytes["compiled"]))
        for base in ("whole", "frugal"):
            cells += [_mib(row.peak_bytes[base]), f"{row.peak_ratio(base):.2f}"]
        cells += [
            row.check(),
            "met" if not missed else "MISSED: " + ", ".join(missed),
            ", ".join(loses) or "no",
        ]
        lines.append("| " + " | ".join(cells) + " |")
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
    add_common_args(p)  # --data-dir (unused: the inputs are random) and --strict-load
    ns = p.parse_args(argv)
    if ns.repeats < 1:
        p.error(f"--repeats must be at least 1, got {ns.repeats}")
    return BenchConfig(**vars(ns))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if child_main(argv, measure_child):
        return
    cfg = parse_args(argv)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_ops: --device cuda but torch sees no CUDA device")
    if cfg.device == "cuda":
        import gdig_ext

        if not gdig_ext.cuda_available():
            raise SystemExit(
                "bench_ops: --device cuda but gdig_ext was built without its CUDA kernels; "
                "rebuild with GDIG_CUDA=1 pip install -e . --no-build-isolation"
            )
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    table = QUICK_SIZES if cfg.quick else CUDA_SIZES if cfg.device == "cuda" else SIZES
    machine = Machine(cfg.threads or torch.get_num_threads(), cfg.device, cfg.strict_load)
    rows = []
    for op in cfg.ops:
        for dtype in cfg.dtypes:
            row = measure(cfg, op, dtype, table[op])
            print(
                f"{op:17s} {dtype:9s} "
                + "   ".join(
                    f"{impl} {row.time_s(impl) * 1e3:8.1f} ms {_mib(row.peak_bytes[impl]):>7s} MiB"
                    for impl in IMPLS
                ),
                flush=True,
            )
            rows.append(row)
    section = render(cfg, rows, machine.line())
    print()
    print(section)
    if cfg.out:
        write_results_section(cfg.out, f"bench_ops {variant(cfg)}", "bench_ops.py", section)
        print(f"wrote {cfg.out}")


if __name__ == "__main__":
    main()
