"""The scoring variants (``--scoring``): one table, name -> how a block of raw benefits is
transformed before the quality statistics (METHOD.md §5.1).

A new variant is one :class:`Scoring` added to :data:`SCORINGS` (or passed to
:func:`register_scoring`): the CLI's choices, the config check, the report's unit line,
the noise metrics and the quality benchmark all iterate this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .source import ScoreSource


@dataclass(frozen=True)
class BlockContext:
    """What a transform may read besides the block: the rows it covers, the source (for
    norms), and the per-seed mean and std over the pool (given to variants that ask)."""

    rows: slice
    source: ScoreSource
    col_mean: np.ndarray | None = None
    col_std: np.ndarray | None = None


@dataclass(frozen=True)
class Scoring:
    name: str
    help: str  # one clause for --help
    unit: str  # what the mean benefit's numbers mean, for the report
    transform: Callable[[np.ndarray, BlockContext], np.ndarray]  # float32 [n_i, S] -> same
    needs_moments: bool = False  # ask for the per-seed mean and std (one more pass)


def _raw(block: np.ndarray, ctx: BlockContext) -> np.ndarray:
    return block


def _zscore(block: np.ndarray, ctx: BlockContext) -> np.ndarray:
    return ((block - ctx.col_mean) / ctx.col_std).astype(np.float32)


def _cosine(block: np.ndarray, ctx: BlockContext) -> np.ndarray:
    denom = np.outer(ctx.source.cand_norm[ctx.rows], ctx.source.seed_norm).astype(np.float32)
    # A zero gradient has no direction: its cosine is defined as 0, not NaN.
    return np.divide(block, denom, out=np.zeros_like(block), where=denom > 0)


SCORINGS: dict[str, Scoring] = {
    s.name: s
    for s in (
        Scoring(
            "raw",
            "benefit as is (the paper)",
            "in loss units: the first-order drop in a seed's loss per unit step along "
            "H^-1 grad L(candidate)",
            _raw,
        ),
        Scoring(
            "zscore",
            "each seed's benefits standardised over the pool (positive = better than the "
            "pool average for that seed)",
            "standardised per seed over the pool (0 = the pool's average candidate)",
            _zscore,
            needs_moments=True,
        ),
        Scoring(
            "cosine",
            "benefit / (|grad m| * |H^-1 grad s|), the store's norms",
            "a cosine in the H^-1 metric, between -1 and 1",
            _cosine,
        ),
    )
}


def register_scoring(scoring: Scoring) -> None:
    """Add a variant to the table (a plug-in, or a test)."""
    SCORINGS[scoring.name] = scoring


def scoring_help() -> str:
    # raw and cosine differ by a positive factor per pair: the dev study found gdig's subset unmoved
    return "; ".join(f"{s.name}: {s.help}" for s in SCORINGS.values()) + (
        ". raw and cosine have the same signs, so the quality filter passes the same pairs and "
        "`--selector gdig` (random inside clusters) picks the same subset; the order of "
        "`quality`, `coverage` and --within-cluster best differs."
    )
