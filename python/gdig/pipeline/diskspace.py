"""Free-space check before a run writes its factors and gradient store.

The store holds, per candidate, its benefit on every seed (``S`` floats), its projected
gradient (``D`` float32 or float16 values) and a few statistics: the bytes per candidate
the store's manifest records (``gdig.engine.store.bytes_per_candidate``). The factors
hold each tracked layer's eigenbases and eigen-diagonal in float32 (float64 in exact mode).
Running out of disk half-way through a pool wastes hours, so the run checks first and stops
with the numbers.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gdig.engine.store import bytes_per_candidate
from gdig.io.errors import GdigError

MARGIN = 1.05  # 5 % slack for manifests, ids, npy headers
FIXED_BYTES = 16 << 20  # report, figures, scores.csv and the like


class DiskSpaceError(GdigError):
    """Not enough free space for the run's outputs; the message has the numbers."""


@dataclass
class SpaceEstimate:
    store_bytes: int
    factor_bytes: int
    existing_bytes: int  # already on disk in the run folder (counted as done)

    @property
    def needed_bytes(self) -> int:
        total = (self.store_bytes + self.factor_bytes) * MARGIN + FIXED_BYTES
        return max(int(total) - self.existing_bytes, 0)


def store_bytes(
    n: int,
    n_seeds: int,
    dim: int,
    top_k: int,
    export_matrix: bool = False,
    feature_dtype: str = "float32",
) -> int:
    """Bytes of a gradient store: ``N x`` the bytes per candidate its manifest will record
    (benefit, features, norms, loss, stats, top-k), the float32 seed features (preconditioned
    and raw, for ``--selector less``) and norms, and the optional N x S benefit matrix. npy
    headers, ids and manifests are left to the margin."""
    per_row = bytes_per_candidate(n_seeds, dim, top_k, feature_dtype)
    seeds = 4 * n_seeds * (2 * dim + 1)
    return n * per_row + (n * n_seeds * 4 if export_matrix else 0) + seeds


def factor_bytes(
    dims: Sequence[tuple[int, int]], k_in: int, k_out: int, exact: bool, float64: bool = False
) -> int:
    """Bytes of the factors file: per layer ``Q_A, Q_S, λ_A, λ_S, Λ`` at the precision
    scoring uses (float32; float64 in exact mode or for a float64 model), plus the same in
    the projected space unless exact."""
    size = 8 if exact or float64 else 4

    def one(d_out: int, d_in: int) -> int:
        return size * (d_in * d_in + d_out * d_out + d_in + d_out + d_out * d_in)

    total = sum(one(d_out, d_in) for d_out, d_in in dims)
    if not exact:
        total += len(dims) * one(k_out, k_in)
    return total


def folder_bytes(*paths: Path) -> int:
    total = 0
    for p in paths:
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total


def check_free_space(folder: str | os.PathLike[str], estimate: SpaceEstimate) -> None:
    """Raise DiskSpaceError when ``folder``'s file system has less room than the run needs."""
    free = shutil.disk_usage(folder).free
    need = estimate.needed_bytes
    if free < need:
        raise DiskSpaceError(
            f"{folder}: {_mib(free)} free but this run needs about {_mib(need)} more "
            f"(gradient store {_mib(estimate.store_bytes)}, factors "
            f"{_mib(estimate.factor_bytes)}, {_mib(estimate.existing_bytes)} already written); "
            "free some space, use another --out, or shrink the store (--feature-dtype float16, "
            "--k-in/--k-out, fewer seeds)"
        )


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"
