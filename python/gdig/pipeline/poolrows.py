"""What select and report need from a pool of millions without holding it: the pool
rows of the scored candidates and their texts on demand (their noise labels:
:mod:`gdig.data.labels`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gdig.data.pool import PoolIndex
from gdig.io.errors import UsageError


def pool_rows(pool: PoolIndex, ids: Sequence[str], where: str) -> np.ndarray:
    """The pool row of each candidate id (``where`` names the store in the error)."""
    if len(ids) == len(pool) and all(a == b for a, b in zip(ids, pool.ids(), strict=True)):
        return np.arange(len(pool), dtype=np.int64)  # the usual case: every pair was scored
    rows = pool.rows_of(ids)
    missing = np.flatnonzero(rows < 0)
    if missing.size:
        raise UsageError(
            f"{where}: candidate {ids[int(missing[0])]!r} is not in the pool ({pool.path}); "
            "the pool changed since scoring: use --force-restart"
        )
    return rows


class PairTexts(Sequence[tuple[str, str, str]]):
    """``(id, src, tgt)`` of candidate ``i``, read from the pool when asked for."""

    def __init__(self, pool: PoolIndex, rows: np.ndarray) -> None:
        self.pool, self.rows = pool, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        pair = self.pool.take([int(self.rows[i])])[0]
        return pair.id, pair.src, pair.tgt
