"""Python face of the compiled ops: documented wrappers plus fake (meta) kernels.

The device is chosen by the dispatcher from the inputs; nothing here branches
on it. Shape, dtype and device checks live in C++ (csrc/checks.cpp) so both
backends reject bad input with the same message.
"""

from __future__ import annotations

import torch

from gdig_ext import _C

_ops = torch.ops.gdig


def cuda_available() -> bool:
    """True when the CUDA kernels were compiled into this build (a GPU may still be absent)."""
    return bool(_C.cuda_compiled())


def project_grads(
    acts: torch.Tensor,
    out_grads: torch.Tensor,
    mask: torch.Tensor,
    p_in: torch.Tensor,
    p_out: torch.Tensor,
) -> torch.Tensor:
    """Projected per-example gradient of a linear layer.

    acts [B,T,d_in], out_grads [B,T,d_out], mask [B,T] (bool or 0/1 float),
    p_in [d_in,k_in], p_out [d_out,k_out]; returns float32 (float64 for float64
    inputs) [B,k_out,k_in] = sum_t mask[b,t] * (p_out^T g_t)(p_in^T a_t)^T.
    """
    return _ops.project_grads.default(acts, out_grads, mask, p_in, p_out)


def lowrank_benefit(
    acts: torch.Tensor,
    out_grads: torch.Tensor,
    mask: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
) -> torch.Tensor:
    """Benefit of B candidates on S seeds whose preconditioned gradients are rank r.

    u [S,r,d_out], v [S,r,d_in] encode seed s as sum_k u[s,k] v[s,k]^T; returns
    [B,S] = sum_t mask * sum_k (g_t . u[s,k]) (a_t . v[s,k]), i.e. <G_hat_s, G(b)>
    without forming any per-example gradient.
    """
    return _ops.lowrank_benefit.default(acts, out_grads, mask, u, v)


def score_stats(
    cand: torch.Tensor, seeds: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-candidate statistics of scores = cand [N,D] @ seeds [S,D]^T, streamed.

    Returns (n_pos int64 [N], mean [N], min [N], topk_val [N,k], topk_idx int64 [N,k]),
    top-k sorted by descending score, NaN first, equal scores by lower seed index: the first
    k of a stable descending sort, on every device. Only a tile of the N x S matrix exists at a
    time, so ``cand`` may be a memory-mapped array wrapped by ``torch.from_numpy``.
    """
    return _ops.score_stats.default(cand, seeds, k)


def ekfac_accumulate(
    acts: torch.Tensor,
    out_grads: torch.Tensor,
    mask: torch.Tensor,
    q_a: torch.Tensor,
    q_s: torch.Tensor,
    lam: torch.Tensor,
) -> None:
    """Add sum_b (q_s^T G_b q_a)**2 (elementwise) into lam [d_out,d_in] in place.

    G_b = sum_t mask g_t a_t^T; q_a [d_in,d_in], q_s [d_out,d_out] are the
    eigenbases of the K-FAC factors. lam is float32 (float64 for float64 inputs).
    """
    _ops.ekfac_accumulate.default(acts, out_grads, mask, q_a, q_s, lam)


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@torch.library.register_fake("gdig::project_grads")
def _project_grads_fake(acts, out_grads, mask, p_in, p_out):
    torch._check(acts.dim() == 3 and out_grads.dim() == 3)
    return acts.new_empty((acts.shape[0], p_out.shape[1], p_in.shape[1]), dtype=_acc(acts))


@torch.library.register_fake("gdig::lowrank_benefit")
def _lowrank_benefit_fake(acts, out_grads, mask, u, v):
    torch._check(acts.dim() == 3 and u.dim() == 3)
    return acts.new_empty((acts.shape[0], u.shape[0]), dtype=_acc(acts))


@torch.library.register_fake("gdig::score_stats")
def _score_stats_fake(cand, seeds, k):
    torch._check(cand.dim() == 2 and seeds.dim() == 2)
    n, acc, dev = cand.shape[0], _acc(cand), seeds.device
    return (
        torch.empty((n,), dtype=torch.int64, device=dev),
        torch.empty((n,), dtype=acc, device=dev),
        torch.empty((n,), dtype=acc, device=dev),
        torch.empty((n, k), dtype=acc, device=dev),
        torch.empty((n, k), dtype=torch.int64, device=dev),
    )


@torch.library.register_fake("gdig::ekfac_accumulate")
def _ekfac_accumulate_fake(acts, out_grads, mask, q_a, q_s, lam):
    return None
