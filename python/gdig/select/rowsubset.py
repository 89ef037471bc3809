"""A ScoreSource restricted to some of its rows, for leaving candidates out of selection
(those whose loss or gradient was not finite) without rewriting the gradient store."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from gdig.data.idlist import as_idlist
from gdig.select.source import ScoreSource


class RowSubset:
    """The rows ``keep`` (ascending pool rows) of ``source``, renumbered ``0..len(keep)-1``."""

    def __init__(self, source: ScoreSource, keep: np.ndarray) -> None:
        keep = np.asarray(keep, dtype=np.int64)
        if keep.ndim != 1 or (len(keep) and (np.any(np.diff(keep) <= 0) or keep[0] < 0)):
            raise ValueError("RowSubset: keep must be ascending, distinct, non-negative rows")
        if len(keep) and keep[-1] >= source.n:
            raise ValueError(f"RowSubset: row {keep[-1]} is outside the source's {source.n} rows")
        self.source = source
        self.rows = keep
        self.n = len(keep)
        self.n_seeds = source.n_seeds
        self.dim = source.dim
        self.ids = as_idlist(source.ids).take(keep)
        self.cand_norm = np.asarray(source.cand_norm)[keep]
        self.seed_norm = source.seed_norm

    def benefit_blocks(self, chunk_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        out = 0
        for start, block in self.source.benefit_blocks(chunk_rows):
            lo, hi = np.searchsorted(self.rows, [start, start + len(block)])
            if hi > lo:
                yield out, np.asarray(block[self.rows[lo:hi] - start], dtype=np.float32)
                out += int(hi - lo)

    def feature_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.source.feature_rows(self.rows[np.asarray(rows, dtype=np.int64)])

    @property
    def loss(self) -> np.ndarray:
        return np.asarray(self.source.loss)[self.rows]

    @property
    def seed_raw_features(self) -> np.ndarray:
        return self.source.seed_raw_features
