"""Which dtype the captured tokens reach the compiled ops in, and fp32-exact products of them.

With ``--autocast bf16|fp16`` the tracked layers multiply in that dtype, so their inputs
``a`` and output gradients ``g`` are captured in it (capture.py rounds an fp32 input to the
autocast dtype, as the layer's own GEMM does) and the ops receive them as they are: bf16
GEMMs run on tensor cores (a CPU's bf16 units) and every op accumulates in fp32. Without
autocast everything stays in the model's accumulation dtype (float32, float64 for a float64
model), exactly as before.

Tolerance of a bf16 run against the fp32 run of the same model and inputs (bounds of
tests/test_engine_precision.py, about twice what it measures on a tiny LLaMA): the
eigen-diagonal within 8% (relative Frobenius error; measured 3.8%), benefits within 2%
(0.9%), at most 2% of the clearly non-zero benefits (|b| above 5% of the largest) change
sign (none did), and at least 75% of the top quarter by mean benefit is the same (92%).
Most of that is the model's own bf16 forward pass: bf16 tokens into the ops, against the
same tokens widened to fp32 first, move the eigen-diagonal 0.6% and the benefits 0.2%.

Products that are *not* the compiled ops (the factor covariances, the dense-seed path and
the gradient norms) are formed from the same low-precision values but with an fp32 (or
float64) result: :func:`matmul_acc`.
"""

from __future__ import annotations

import torch

from gdig.io.dtypes import resolve_dtype


def acc_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of a model whose parameters are ``model_dtype``."""
    return torch.float64 if model_dtype == torch.float64 else torch.float32


def op_dtype(autocast: str | None, acc: torch.dtype) -> torch.dtype:
    """dtype the compiled ops receive the captured ``a``/``g`` in.

    The autocast dtype when autocast is on (float64 models are never autocast: autocast
    leaves float64 alone), else the accumulation dtype ``acc``.
    """
    if autocast is None or acc == torch.float64:
        return acc
    return resolve_dtype(autocast)


def _has_out_dtype() -> bool:
    # torch.bmm(..., out_dtype=) appeared in torch 2.8 (CUDA kernels only).
    try:
        torch.bmm(torch.empty(1, 1, 1, device="meta"), torch.empty(1, 1, 1, device="meta"),
                  out_dtype=torch.float32)  # fmt: skip
    except TypeError:
        return False
    return True


_OUT_DTYPE = _has_out_dtype()


def matmul_acc(x: torch.Tensor, y: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """``x @ y`` (2-D or batched 3-D) with an ``acc`` result whatever ``x``/``y``'s dtype.

    bf16/fp16 CUDA inputs keep their dtype and write fp32 (tensor cores, fp32
    accumulation: products of bf16/fp16 values are exact in fp32); elsewhere the inputs are
    widened first (the CPU has no fp32-output low-precision GEMM in torch).
    """
    low = x.dtype in (torch.bfloat16, torch.float16) and x.dtype == y.dtype
    if low and acc == torch.float32 and x.is_cuda and _OUT_DTYPE:
        return (torch.mm if x.dim() == 2 else torch.bmm)(x, y, out_dtype=acc)
    return torch.matmul(x.to(acc), y.to(acc))
