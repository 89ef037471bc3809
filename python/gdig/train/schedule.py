"""The fine-tuning schedule: optimizer steps, warm-up then linear decay, and the
seeded data order of each epoch.
"""

from __future__ import annotations

import hashlib
import math

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
    """Micro-batch ``k`` of the run: a pure function of (seed, k), so a resume needs only k."""

    def __init__(self, n: int, batch_size: int, train_seed: int) -> None:
        self.n, self.batch_size, self.train_seed = n, batch_size, train_seed
        self.per_epoch = math.ceil(n / batch_size)
        self._epoch = -1
        self._perm: list[int] = []

    def rows(self, k: int) -> list[int]:
        epoch, j = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(epoch_seed(self.train_seed, epoch))
            self._perm = torch.randperm(self.n, generator=g).tolist()
            self._epoch = epoch
        return self._perm[j * self.batch_size : (j + 1) * self.batch_size]
