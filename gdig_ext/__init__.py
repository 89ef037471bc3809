"""gdig_ext: the compiled kernels of gdig, as torch custom ops in namespace ``gdig``.

    project_grads     per-example projected gradients  [B,k_out,k_in]
    lowrank_benefit   candidates x rank-r preconditioned seeds  [B,S]
    score_stats       streaming n_pos / mean / min / top-k of cand @ seeds^T
    ekfac_accumulate  EK-FAC diagonal: lam += sum_b (q_s^T G_b q_a)^2, in place

Each op has a pure-PyTorch twin with the same signature in ``gdig_ext.reference``.
"""

from __future__ import annotations

import torch

from gdig_ext import _C  # noqa: F401  (loads the library that registers torch.ops.gdig)
from gdig_ext.ops import (
    cuda_available,
    ekfac_accumulate,
    lowrank_benefit,
    project_grads,
    score_stats,
)

__all__ = [
    "cuda_available",
    "ekfac_accumulate",
    "lowrank_benefit",
    "project_grads",
    "score_stats",
]
__version__ = "0.1.0"

del torch
