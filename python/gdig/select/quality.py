"""Quality step (METHOD.md 5.1): per-candidate statistics over seeds, streamed in row blocks.

For every candidate we keep only ``n_pos``, mean and min over the seed groups, so
memory is O(N) whatever the number of seeds; the ``N x S`` benefits are read
block by block (twice for z-scoring, which needs per-seed moments first).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .scorings import SCORINGS, BlockContext
from .source import ScoreSource

log = logging.getLogger("gdig")


@dataclass
class QualityStats:
    n_pos: np.ndarray  # int32 [N]: seed groups with benefit > 0
    mean: np.ndarray  # float64 [N]: mean benefit over seed groups
    min: np.ndarray  # float32 [N]: smallest group benefit
    n_groups: int  # G
    need: int  # groups a candidate must benefit to pass: ceil(tau * G)

    @property
    def passed(self) -> np.ndarray:
        return self.n_pos >= self.need


def required_positive(n_groups: int, tau: float) -> int:
    """Smallest ``n_pos`` with ``n_pos / G >= tau``; the epsilon absorbs float error in tau*G."""
    return max(0, math.ceil(tau * n_groups - 1e-9))


def group_starts(n_seeds: int, seed_group: int) -> np.ndarray:
    """Column where each group of ``seed_group`` consecutive seeds starts."""
    return np.arange(0, n_seeds, seed_group, dtype=np.int64)


def checked_blocks(source: ScoreSource, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """The source's blocks, verified to tile rows ``0..n`` in order with ``S`` columns.

    A store that skips or repeats rows would silently misalign every statistic,
    so the contract is checked here rather than trusted.
    """
    expected = 0
    for start, block in source.benefit_blocks(chunk_rows):
        if start != expected:
            raise ValueError(
                f"{type(source).__name__}.benefit_blocks yielded a block at row {start}, "
                f"expected row {expected}: blocks must cover the pool in order"
            )
        if block.ndim != 2 or block.shape[1] != source.n_seeds or block.shape[0] < 1:
            raise ValueError(
                f"{type(source).__name__}.benefit_blocks yielded shape {block.shape} at row "
                f"{start}, expected [rows>=1, {source.n_seeds}]"
            )
        expected += block.shape[0]
        yield start, np.asarray(block, dtype=np.float32)
    if expected != source.n:
        raise ValueError(
            f"{type(source).__name__}.benefit_blocks covered {expected} rows, source.n is "
            f"{source.n}"
        )


def seed_moments(source: ScoreSource, chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-seed mean and (population) std over the pool, float64, in one streaming pass.

    Blocks are merged with Chan's parallel update, which stays accurate when the
    mean is large relative to the spread (a plain sum of squares would not).
    """
    s = source.n_seeds
    count = 0
    mean = np.zeros(s, dtype=np.float64)
    m2 = np.zeros(s, dtype=np.float64)
    for _, block in checked_blocks(source, chunk_rows):
        b_n = block.shape[0]
        b_mean = block.mean(axis=0, dtype=np.float64)
        b_m2 = ((block - b_mean.astype(np.float32)) ** 2).sum(axis=0, dtype=np.float64)
        delta = b_mean - mean
        total = count + b_n
        mean += delta * (b_n / total)
        m2 += b_m2 + delta**2 * (count * b_n / total)
        count = total
    std = np.sqrt(m2 / max(count, 1))
    return mean, std


def scored_block(
    block: np.ndarray,
    row_start: int,
    scoring: str,
    source: ScoreSource,
    col_mean: np.ndarray | None = None,
    col_std: np.ndarray | None = None,
) -> np.ndarray:
    """Apply the scoring variant (:data:`~gdig.select.scorings.SCORINGS`) to one ``[n_i, S]``
    block of raw benefits (float32)."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; expected one of {list(SCORINGS)}")
    rows = slice(row_start, row_start + block.shape[0])
    return SCORINGS[scoring].transform(block, BlockContext(rows, source, col_mean, col_std))


def quality_stats(
    source: ScoreSource,
    *,
    scoring: str = "raw",
    seed_group: int = 1,
    tau: float = 1.0,
    chunk_rows: int = 65536,
) -> QualityStats:
    """Stream the source once (twice for zscore) and reduce each candidate to its statistics."""
    if source.n_seeds < 1:
        raise ValueError(f"{type(source).__name__} has no seeds: cannot judge quality")
    starts = group_starts(source.n_seeds, seed_group)
    sizes = np.diff(np.append(starts, source.n_seeds)).astype(np.float32)
    n_groups = len(starts)

    col_mean = col_std = None
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; expected one of {list(SCORINGS)}")
    if SCORINGS[scoring].needs_moments:
        col_mean, col_std = seed_moments(source, chunk_rows)
        flat = col_std <= 0
        if flat.any():
            log.warning(
                "%d seed(s) give the same benefit to every candidate (std 0); their "
                "z-scores are 0, so no candidate counts as helping them",
                int(flat.sum()),
            )
            col_std = np.where(flat, 1.0, col_std)
        col_mean, col_std = col_mean.astype(np.float32), col_std.astype(np.float32)

    n_pos = np.empty(source.n, dtype=np.int32)
    mean = np.empty(source.n, dtype=np.float64)
    mn = np.empty(source.n, dtype=np.float32)
    for start, block in checked_blocks(source, chunk_rows):
        scores = scored_block(block, start, scoring, source, col_mean, col_std)
        if seed_group > 1:
            scores = np.add.reduceat(scores, starts, axis=1) / sizes
        rows = slice(start, start + scores.shape[0])
        n_pos[rows] = (scores > 0).sum(axis=1)
        mean[rows] = scores.mean(axis=1, dtype=np.float64)
        mn[rows] = scores.min(axis=1)
    return QualityStats(
        n_pos=n_pos,
        mean=mean,
        min=mn,
        n_groups=n_groups,
        need=required_positive(n_groups, tau),
    )
