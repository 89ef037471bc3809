"""Each candidate's top seeds (the seeds it helps most), from the top-k the scoring pass
kept in the store: :meth:`gdig.engine.store.GradStore.top_seeds`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gdig.engine.store import GradStore


class TopSeeds(Sequence[list[str]]):
    """For candidate ``i`` (a row of ``ids``), the seeds it helps most (positive raw
    benefit, best first), from the top-k the scoring pass kept; computed per row.

    Held as one small integer per kept seed (-1 where the benefit is not positive), read a
    shard at a time: about 10 bytes a candidate, not the 60 of the stored values and
    indices.
    """

    def __init__(self, store: GradStore, ids: Sequence[str]) -> None:
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
