"""The precision of fine-tuning's and decoding's model passes: fp32, bf16 autocast, or
``auto``, which measures both on the machine at hand and keeps the faster.

Why measure: bf16 autocast pays only where the hardware multiplies bf16 fast (CUDA GPUs
with bf16 support; CPUs with AMX or avx512_bf16). On an AVX2 CPU PyTorch converts and
multiplies bf16 slower than fp32: the project measured 1.6-1.8x fp32's time for SmolLM2
on a Xeon, and up to 20x for a training step's MLP block on a Zen3. So on a CPU ``auto``
times a few repeats of the model's MLP block (its hidden and intermediate sizes, at the
number of tokens one pass holds, up to 128; forward and backward when training) in fp32
and under bf16 autocast, fp32 weights in both as in the real passes, and keeps bf16 only
when it takes under :data:`FASTER` of fp32's time. On CUDA it keeps bf16 where the GPU
supports it. The decision (:func:`decide`) and the repeat loop (:func:`repeat`) are pure
functions of the timings, so they are tested without timing anything.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gdig.train.config import PRECISIONS

# bf16 must take under this share of fp32's time to be kept: a difference within the
# run-to-run spread of a shared machine is not worth bf16's rounding.
FASTER = 0.9
# The measurement stops after this many seconds (at least MIN_REPEATS of each precision),
# or after one repeat when bf16 takes over DECISIVE times fp32's time (as on an AVX2 CPU,
# where one bf16 block at training's shape can take seconds).
MEASURE_BUDGET_S = 0.8
MIN_REPEATS, MAX_REPEATS = 3, 15
DECISIVE = 2.0
# Tokens of the measured block, at most: enough to be bound by the matmuls as the model is.
MAX_TOKENS = 128


@dataclass(frozen=True)
class Precision:
    """The precision chosen (``name``: fp32 or bf16), what was asked, and why: with ``auto``
    on a CPU the median seconds of one measured block in each precision."""

    name: str
    requested: str
    reason: str
    fp32_s: float | None = None
    bf16_s: float | None = None

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        if self.name == "bf16":
            return torch.autocast(device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for a printout: ``precision fp32 (auto: ...)``."""
        return f"precision {self.name} ({self.requested}: {self.reason})"


def decide(
    requested: str,
    device_type: str,
    *,
    cuda_bf16: bool = False,
    timings: tuple[float, float] | None = None,
) -> Precision:
    """The precision for ``requested`` on ``device_type``.

    ``timings`` (seconds of fp32, seconds of bf16 autocast) are needed for ``auto`` on a
    CPU; ``cuda_bf16`` says whether the CUDA device supports bf16.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r}: use one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return Precision(requested, requested, "as asked")
    if device_type == "cuda":
        if cuda_bf16:
            return Precision("bf16", "auto", "CUDA device with bf16 support")
        return Precision("fp32", "auto", "CUDA device without bf16 support")
    if device_type != "cpu":
        return Precision("fp32", "auto", f"no bf16 measurement on {device_type}")
    if timings is None:
        raise ValueError("precision auto on a CPU needs the fp32 and bf16 timings")
    fp32_s, bf16_s = timings
    ratio = bf16_s / fp32_s if fp32_s > 0 else float("inf")
    measured = f"bf16 autocast {_ms(bf16_s)} vs fp32 {_ms(fp32_s)} ({ratio:.2f}x)"
    if ratio < FASTER:
        return Precision("bf16", "auto", f"{measured}: bf16 faster", fp32_s, bf16_s)
    return Precision("fp32", "auto", f"{measured}: bf16 not faster", fp32_s, bf16_s)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def mlp_shape(model: Any) -> tuple[int, int]:
    """(hidden, intermediate) sizes of the model's MLP, from its config."""
    cfg = model.config
    hidden = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0) or 512)
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None)
    return hidden, int(inter or 4 * hidden)


def measure(
    hidden: int,
    inter: int,
    tokens: int,
    *,
    train: bool,
    budget_s: float = MEASURE_BUDGET_S,
) -> tuple[float, float]:
    """Median seconds (fp32, bf16 autocast) of one MLP block on the CPU, on ``tokens``
    tokens (at most :data:`MAX_TOKENS`: the ratio is what matters, not the size).

    The block is up projection, SiLU, down projection with fp32 weights, as the model's
    linear layers are (autocast casts them to bf16 at every call, a cost the real passes
    pay too); with ``train`` the backward pass is timed as well. It runs in one thread
    (the caller's thread count is restored).
    """
    g = torch.Generator().manual_seed(0)
    x_full = torch.randn(min(tokens, MAX_TOKENS), hidden, generator=g).requires_grad_(train)
    w_up = (torch.randn(inter, hidden, generator=g) / hidden**0.5).requires_grad_(train)
    w_down = (torch.randn(hidden, inter, generator=g) / inter**0.5).requires_grad_(train)

    def block(precision: str, x: torch.Tensor = x_full) -> float:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else None
        t0 = time.perf_counter()
        with ctx or contextlib.nullcontext(), torch.set_grad_enabled(train):
            y = F.linear(F.silu(F.linear(x, w_up)), w_down)
        if train:
            y.float().sum().backward()
            x.grad = w_up.grad = w_down.grad = None
        return time.perf_counter() - t0

    # One thread: on a shared machine, threads waiting on each other inflate whichever
    # precision runs more parallel regions (here, with 2 threads at load 14, fp32 came out
    # at 0.94x bf16's decoding time, against 20x faster in one thread), and the ratio of
    # the kernels is what decides.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # Warm-up on a few tokens: the first calls allocate and pick kernels, and where
        # bf16 is very slow a full-size warm-up would cost as much as the measurement.
        small = x_full[:4].detach().requires_grad_(train)
        block("fp32", small), block("bf16", small)
        return repeat(block, budget_s)
    finally:
        torch.set_num_threads(threads)


def repeat(
    run: Callable[[str], float],
    budget_s: float,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, float]:
    """Median seconds (fp32, bf16) of ``run(precision)``, the precisions alternating so
    that a change of load on a shared machine hits both alike.

    Repeats stop after ``budget_s`` (with at least :data:`MIN_REPEATS` of each), or at once
    when bf16 took over :data:`DECISIVE` times fp32's time: a safe verdict (fp32 is kept)
    that saves the seconds a very slow bf16 would cost.
    """
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    start = clock()
    while len(times["fp32"]) < MAX_REPEATS:
        for precision in ("fp32", "bf16"):
            times[precision].append(run(precision))
        if times["bf16"][-1] > DECISIVE * times["fp32"][-1]:
            break
        if len(times["fp32"]) >= MIN_REPEATS and clock() - start > budget_s:
            break
    return statistics.median(times["fp32"]), statistics.median(times["bf16"])


def choose(requested: str, model: Any, *, tokens: int, train: bool) -> Precision:
    """:func:`decide` for ``model`` (on its device), measuring where ``auto`` needs it.

    ``tokens``: how many tokens one model pass holds (batch size x typical length when
    training; the batch size when decoding, one new token a row).
    """
    device = next(model.parameters()).device
    if requested != "auto" or device.type not in ("cpu", "cuda"):
        return decide(requested, device.type)
    if device.type == "cuda":
        return decide(requested, "cuda", cuda_bf16=torch.cuda.is_bf16_supported())
    hidden, inter = mlp_shape(model)
    return decide("auto", "cpu", timings=measure(hidden, inter, max(1, tokens), train=train))
