"""gdig_ext: the compiled kernels of gdig, as torch custom ops in namespace ``gdig``.

    project_grads     per-example projected gradients  [B,k_out,k_in]
    lowrank_benefit   candidates x rank-r preconditioned seeds  [B,S]
    score_stats       streaming n_pos / mean / min / top-k of cand @ seeds^T
    ekfac_accumulate  EK-FAC diagonal: lam += sum_b (q_s^T G_b q_a)^2, in place

Each op has a pure-PyTorch twin with the same signature in ``gdig_ext.reference``.
"""

from __future__ import annotations

import torch


def _load_compiled() -> None:
    """Import ``gdig_ext._C``, the library that registers ``torch.ops.gdig``.

    From the repository root (``python -m gdig``, ``torchrun -m gdig``) the checkout's
    ``gdig_ext/`` comes first on ``sys.path`` and hides the installed package; after a
    regular (non-editable) install it holds no compiled ``_C``. The package's search path
    then also takes in every other ``gdig_ext`` folder on ``sys.path`` (the installed one),
    so the compiled library is found there.
    """
    global __path__
    try:
        from gdig_ext import _C
    except ImportError:
        import pkgutil

        __path__ = pkgutil.extend_path(__path__, __name__)
        try:
            from gdig_ext import _C  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "gdig_ext._C (the compiled ops) is not built: install gdig with "
                "`pip install --no-build-isolation .` (or `-e .`; see README.md)"
            ) from exc


_load_compiled()

from gdig_ext.ops import (  # noqa: E402  (after the compiled library is loaded)
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
