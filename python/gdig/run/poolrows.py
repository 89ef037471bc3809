"""What select and report need from a pool of millions without holding it: the pool
rows of the scored candidates, their texts on demand and their noise labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def label_values(pool: PoolIndex, rows: np.ndarray, field: str) -> list[Any]:
    """The ``field`` value of each candidate's pair, in candidate order: one pass over the
    pool in file order, keeping one shared object per distinct value."""
    order = np.argsort(rows, kind="stable")
    out: list[Any] = [None] * len(rows)
    shared: dict[Any, Any] = {}
    for start in range(0, len(order), 4096):
        part = order[start : start + 4096]
        for k, pair in zip(part.tolist(), pool.take(rows[part]), strict=True):
            value = pair.extra[field] if field in pair.extra else pair.to_record().get(field)
            try:
                value = shared.setdefault(value, value)
            except TypeError:  # unhashable (a list): kept as it is; is_noise rejects it
                pass
            out[k] = value
    return out
