"""Pure-PyTorch references of the compiled ops: same signatures, same outputs.

They are the test oracle and the benchmark baseline, so each is written the
best way plain PyTorch allows (tokens are projected or rotated *before* any
outer product), not naively. They hold whole intermediates that the compiled
ops tile: B x T x S*r for ``lowrank_benefit``, B x d_out x d_in for
``ekfac_accumulate``, and the N x S matrix for ``score_stats`` (chunked here
only along N so that a memory-mapped pool can be read at all).

Each is one formula for every device. Where a kernel works at another precision
(ekfac_accumulate with bf16 inputs: this reference runs its big bmm in fp32, the CPU kernel
in bf16), benchmarks/bench_ops.py times a same-precision twin instead.
"""

from __future__ import annotations

import torch

__all__ = ["ekfac_accumulate", "lowrank_benefit", "project_grads", "score_stats"]


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def project_grads(
    acts: torch.Tensor,
    out_grads: torch.Tensor,
    mask: torch.Tensor,
    p_in: torch.Tensor,
    p_out: torch.Tensor,
) -> torch.Tensor:
    """[B,k_out,k_in] = sum_t mask * (p_out^T g_t)(p_in^T a_t)^T."""
    acc = _acc_dtype(acts)
    a = (acts @ p_in).to(acc)  # [B,T,k_in]
    g = (out_grads @ p_out).to(acc) * mask.to(acc).unsqueeze(-1)  # [B,T,k_out]
    return torch.bmm(g.transpose(1, 2), a)


def lowrank_benefit(
    acts: torch.Tensor,
    out_grads: torch.Tensor,
    mask: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
) -> torch.Tensor:
    """[B,S] = sum_t mask * sum_k (g_t . u[s,k]) (a_t . v[s,k])."""
    acc = _acc_dtype(acts)
    S, r, d_out = u.shape
    d_in = v.shape[2]
    gu = (out_grads @ u.reshape(S * r, d_out).T).to(acc)  # [B,T,S*r]
    av = (acts @ v.reshape(S * r, d_in).T).to(acc)
    gu = gu * mask.to(acc).unsqueeze(-1)
    B, T = acts.shape[:2]
    return (gu * av).reshape(B, T, S, r).sum(dim=(1, 3))


def score_stats(
    cand: torch.Tensor, seeds: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per candidate of ``cand @ seeds^T``: (n_pos, mean, min, topk_val, topk_idx).

    torch.topk: the compiled op's top-k values; its indices may order equal scores
    differently (the op breaks ties by lower seed index)."""
    acc = _acc_dtype(cand)
    chunk = 1 << 16  # a memory-mapped pool is read in pieces; everything else is whole
    n_pos, mean, mn, tv, ti = [], [], [], [], []
    for start in range(0, cand.shape[0], chunk):
        sc = (cand[start : start + chunk].to(seeds.device) @ seeds.T).to(acc)
        n_pos.append((sc > 0).sum(dim=1))
        mean.append(sc.mean(dim=1))
        mn.append(sc.amin(dim=1))
        val, idx = sc.topk(k, dim=1)
        tv.append(val)
        ti.append(idx)
    if not n_pos:
        dev = seeds.device
        e = torch.empty(0, dtype=acc, device=dev)
        return (
            torch.empty(0, dtype=torch.int64, device=dev),
            e,
            e.clone(),
            torch.empty(0, k, dtype=acc, device=dev),
            torch.empty(0, k, dtype=torch.int64, device=dev),
        )
    return torch.cat(n_pos), torch.cat(mean), torch.cat(mn), torch.cat(tv), torch.cat(ti)


def ekfac_accumulate(
    acts: torch.Tensor,
    out_grads: torch.Tensor,
    mask: torch.Tensor,
    q_a: torch.Tensor,
    q_s: torch.Tensor,
    lam: torch.Tensor,
) -> None:
    """lam += sum_b (q_s^T G_b q_a)**2 with G_b = sum_t mask g_t a_t^T (in place)."""
    acc = lam.dtype
    a = (acts @ q_a).to(acc)  # rotate tokens first: cheaper than rotating G
    g = (out_grads @ q_s).to(acc) * mask.to(acc).unsqueeze(-1)
    rotated = torch.bmm(g.transpose(1, 2), a)  # [B,d_out,d_in], whole
    lam.add_(rotated.square().sum(dim=0))
