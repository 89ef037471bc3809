"""The fine-tuning schedule: optimizer steps, warm-up then linear decay, and the
seeded data order of each epoch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch

from gdig.train.config import FinetuneConfig


def total_steps(cfg: FinetuneConfig, n_pairs: int) -> int:
    """Optimizer steps of the run: ``max_steps``, else ``epochs`` worth of micro-batches."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    micro_per_epoch = math.ceil(n_pairs / cfg.train_batch_size)
    return max(1, math.ceil(cfg.epochs * micro_per_epoch / cfg.grad_accum))


def warmup_steps(cfg: FinetuneConfig, total: int) -> int:
    return math.ceil(cfg.warmup_ratio * total)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based).

    Linear warm-up, step ``s < warmup`` uses ``(s + 1) / warmup`` (no step is wasted at
    lr 0), then linear decay that would reach 0 one step after the last.
    """
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def epoch_seed(train_seed: int, epoch: int) -> int:
    digest = hashlib.sha256(f"gdig-finetune-order:{train_seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class DataOrder:
    """Micro-batch ``k`` of the run: a pure function of (seed, k), so a resume needs only k.

    Each epoch draws a permutation of the examples from its own seed (:func:`epoch_seed`).
    With ``grouping`` g > 1 the permutation is cut into runs of g batches' worth of
    examples, each run is sorted by length (stable, so ties keep the random order) and cut
    into batches, and the epoch's batches are then shuffled with the same generator:
    batches hold examples of similar length (less padding) and are still a seeded random
    draw. ``grouping=1`` gives the plain random batches of the permutation. Every batch
    but the last of each run is full, so an epoch has ``ceil(n / batch_size)`` batches
    whatever the grouping.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        train_seed: int,
        lengths: Sequence[int] | None = None,
        grouping: int = 1,
    ) -> None:
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"{len(lengths)} lengths for {n} examples")
        self.n, self.batch_size, self.train_seed = n, batch_size, train_seed
        self.lengths, self.grouping = lengths, grouping
        self.per_epoch = math.ceil(n / batch_size)
        self._epoch = -1
        self._batches: list[list[int]] = []

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(epoch_seed(self.train_seed, epoch))
        perm = torch.randperm(self.n, generator=g).tolist()
        bsz = self.batch_size
        if self.grouping <= 1 or self.lengths is None:
            return [perm[s : s + bsz] for s in range(0, self.n, bsz)]
        run = bsz * self.grouping
        batches = []
        for start in range(0, self.n, run):
            chunk = sorted(perm[start : start + run], key=self.lengths.__getitem__)
            batches += [chunk[s : s + bsz] for s in range(0, len(chunk), bsz)]
        shuffle = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in shuffle]

    def rows(self, k: int) -> list[int]:
        epoch, j = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            self._batches = self.epoch_batches(epoch)
            self._epoch = epoch
        return self._batches[j]
