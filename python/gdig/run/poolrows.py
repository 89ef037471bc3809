"""What select and report need from a pool of millions without holding it: the pool
rows of the scored candidates, their texts on demand, their top seeds and noise labels."""

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


class TopSeeds(Sequence[list[str]]):
    """For candidate ``i`` (a row of ``ids``), the seeds it helps most (positive raw
    benefit, best first), from the top-k the scoring pass kept; computed per row.

    Held as one small integer per kept seed (-1 where the benefit is not positive), read a
    shard at a time: about 10 bytes a candidate, not the 60 of the stored values and
    indices.
    """

    def __init__(self, store, ids: Sequence[str]) -> None:
        self.seed_ids = store.seed_ids
        self.n = len(ids)
        small = np.int16 if len(self.seed_ids) <= np.iinfo(np.int16).max else np.int32
        self.top = np.full((store.n, 0), -1, dtype=small)
        for k, (start, (idx, val)) in enumerate(store.stat_shards("topk_idx", "topk_val")):
            if k == 0:  # the store's top-k width, the same in every shard
                self.top = np.full((store.n, idx.shape[1]), -1, dtype=small)
            self.top[start : start + len(idx)] = np.where(np.asarray(val) > 0, idx, -1)
        self.row = None if ids == store.ids else _rows_in(store.ids, ids)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        r = i if self.row is None else int(self.row[i])
        return [self.seed_ids[int(j)] for j in self.top[r] if j >= 0]


def _rows_in(all_ids: Sequence[str], ids: Sequence[str]) -> np.ndarray:
    """The row in ``all_ids`` of each of ``ids``. A selection leaves rows out (NaN scores)
    but keeps the order, so one walk finds them without a dictionary of every id."""
    rows = np.empty(len(ids), dtype=np.int64)
    walk = iter(enumerate(all_ids))
    for k, cid in enumerate(ids):
        for r, other in walk:
            if other == cid:
                rows[k] = r
                break
        else:  # not in order: look each one up
            by_id = {c: r for r, c in enumerate(all_ids)}
            return np.array([by_id[c] for c in ids], dtype=np.int64)
    return rows


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
