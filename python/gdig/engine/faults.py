"""Fault handling shared by the engine and the pipeline: out-of-memory back-off,
non-finite detection per example, and a fault-injection hook for the tests.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

log = logging.getLogger("gdig")
T = TypeVar("T")

# Set GDIG_FAULT=<point> to SIGKILL the process when it reaches that point (tests only):
# the kill is as abrupt as a power cut, so nothing after it runs (no cleanup, no flush).
FAULT_ENV = "GDIG_FAULT"


# GDIG_FAULT_RANK=<r> limits the kill to torchrun rank r; GDIG_FAULT_SKIP=<n> lets the
# point pass n times first (e.g. die after the second shard).
_passed: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Die here, by SIGKILL, when ``$GDIG_FAULT`` names this point (resume tests)."""
    if os.environ.get(FAULT_ENV) != name:
        return
    rank = os.environ.get("RANK", "0")
    if os.environ.get("GDIG_FAULT_RANK", rank) != rank:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] > int(os.environ.get("GDIG_FAULT_SKIP", "0")):
        os.kill(os.getpid(), signal.SIGKILL)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA and CPU allocation failures (torch raises both kinds)."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    # CUDA says "out of memory"; torch's CPU allocator says "can't allocate memory"
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def run_with_backoff(
    step: Callable[[Sequence[int]], T], rows: Sequence[int], what: str = "batch"
) -> list[tuple[Sequence[int], T]]:
    """``[(rows, step(rows))]``, halving ``rows`` and retrying whenever ``step`` runs out of
    memory; a single example that still does not fit re-raises with a hint."""
    try:
        return [(rows, step(rows))]
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(rows) <= 1:
            raise MemoryError(
                f"out of memory on a {what} of one example ({exc}); lower --max-length or "
                "use a device with more memory"
            ) from exc
        half = len(rows) // 2
        log.warning(
            "out of memory on a %s of %d examples; retrying as %d + %d",
            what,
            len(rows),
            half,
            len(rows) - half,
        )
        return run_with_backoff(step, rows[:half], what) + run_with_backoff(step, rows[half:], what)


def finite_rows(*tensors: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: True where every value of example ``b`` (dim 0) is finite in all tensors."""
    ok = None
    for t in tensors:
        row_ok = torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
        ok = row_ok if ok is None else ok & row_ok
    assert ok is not None, "finite_rows needs at least one tensor"
    return ok
