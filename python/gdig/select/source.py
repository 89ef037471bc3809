"""What selection reads: per-candidate benefits against the seeds, and gradient features.

Benefit convention: ``B(m, s) = grad L(s)^T H^-1 grad L(m)``; positive means
candidate ``m`` helps seed ``s``. Selection only ever sees benefits in blocks of
rows so that the ``N x S`` matrix is never held whole; the engine's on-disk
gradient store implements the same protocol.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from gdig.io.errors import UsageError


@runtime_checkable
class ScoreSource(Protocol):
    """A pool of ``n`` candidates scored against ``n_seeds`` seeds."""

    n: int
    n_seeds: int
    dim: int  # size D of the projected per-example gradients
    ids: list[str]
    cand_norm: np.ndarray  # [N] norm of each candidate's gradient (for cosine scoring)
    seed_norm: np.ndarray  # [S] norm of each seed's preconditioned gradient

    def benefit_blocks(self, chunk_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(row_start, float32 [n_i, S])`` in pool order, covering every row once."""
        ...

    def feature_rows(self, rows: np.ndarray) -> np.ndarray:
        """float32 ``[len(rows), D]`` projected per-example gradients of those pool rows."""
        ...


class ArraySource:
    """In-memory :class:`ScoreSource` for tests and small pools.

    Either give the benefit matrix directly, or give projected candidate features
    ``[N, D]`` and projected preconditioned seed gradients ``[S, D]``, and the
    benefits are ``features @ seed_grads.T`` computed block by block.
    """

    def __init__(
        self,
        features: np.ndarray,
        *,
        benefits: np.ndarray | None = None,
        seed_grads: np.ndarray | None = None,
        ids: Sequence[str] | None = None,
        cand_norm: np.ndarray | None = None,
        seed_norm: np.ndarray | None = None,
        loss: np.ndarray | None = None,
        seed_raw_features: np.ndarray | None = None,
    ) -> None:
        self._features = np.ascontiguousarray(features, dtype=np.float32)
        if self._features.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {features.shape}")
        if (benefits is None) == (seed_grads is None):
            raise ValueError("give exactly one of benefits [N, S] or seed_grads [S, D]")
        self.n, self.dim = self._features.shape
        self._benefits = None
        self._seed_grads = None
        if benefits is not None:
            self._benefits = np.ascontiguousarray(benefits, dtype=np.float32)
            if self._benefits.ndim != 2 or self._benefits.shape[0] != self.n:
                raise ValueError(f"benefits must be [{self.n}, S], got shape {benefits.shape}")
            self.n_seeds = self._benefits.shape[1]
        else:
            self._seed_grads = np.ascontiguousarray(seed_grads, dtype=np.float32)
            if self._seed_grads.ndim != 2 or self._seed_grads.shape[1] != self.dim:
                raise ValueError(
                    f"seed_grads must be [S, {self.dim}], got shape {self._seed_grads.shape}"
                )
            self.n_seeds = self._seed_grads.shape[0]
        self.ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(self.n)]
        if len(self.ids) != self.n:
            raise ValueError(f"ids has {len(self.ids)} entries for {self.n} candidates")
        if cand_norm is None:
            cand_norm = np.linalg.norm(self._features, axis=1)
        if seed_norm is None:
            seed_norm = (
                np.linalg.norm(self._seed_grads, axis=1)
                if self._seed_grads is not None
                else np.ones(self.n_seeds, dtype=np.float32)
            )
        self.cand_norm = np.asarray(cand_norm, dtype=np.float32)
        self.seed_norm = np.asarray(seed_norm, dtype=np.float32)
        self._loss = None if loss is None else np.asarray(loss, dtype=np.float32)
        if self._loss is not None and self._loss.shape != (self.n,):
            raise ValueError(f"loss must be [{self.n}], got shape {self._loss.shape}")
        self._seed_raw = (
            None if seed_raw_features is None else np.asarray(seed_raw_features, np.float32)
        )
        if self._seed_raw is not None and self._seed_raw.shape != (self.n_seeds, self.dim):
            raise ValueError(
                f"seed_raw_features must be [{self.n_seeds}, {self.dim}], got shape "
                f"{self._seed_raw.shape}"
            )
        if self.cand_norm.shape != (self.n,):
            raise ValueError(f"cand_norm must be [{self.n}], got shape {self.cand_norm.shape}")
        if self.seed_norm.shape != (self.n_seeds,):
            raise ValueError(
                f"seed_norm must be [{self.n_seeds}], got shape {self.seed_norm.shape}"
            )

    def benefit_blocks(self, chunk_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        for start in range(0, self.n, chunk_rows):
            stop = min(start + chunk_rows, self.n)
            if self._benefits is not None:
                yield start, self._benefits[start:stop]
            else:
                yield start, self._features[start:stop] @ self._seed_grads.T

    def feature_rows(self, rows: np.ndarray) -> np.ndarray:
        return self._features[np.asarray(rows, dtype=np.int64)]

    @property
    def loss(self) -> np.ndarray:
        """``[N]`` per-candidate target loss (``--selector loss``), when given."""
        if self._loss is None:
            raise UsageError("this ArraySource was made without loss=: --selector loss needs it")
        return self._loss

    @property
    def seed_raw_features(self) -> np.ndarray:
        """``[S, D]`` seed gradients without the Hessian (``--selector less``), when given."""
        if self._seed_raw is None:
            raise UsageError(
                "this ArraySource was made without seed_raw_features=: --selector less needs it"
            )
        return self._seed_raw
