"""Shared by the op tests (tests/test_ops.py, every device): inputs, float64 oracles, bounds.

The oracles are written from the definitions in METHOD.md, not from the kernels or the
references: every per-example gradient G_b = sum_t mask[b,t] g_t a_t^T is formed
explicitly in float64. Low-precision inputs are rounded first and the oracle is fed the
same rounded values, so the bounds measure only the ops' own error. Relative error is
||x - y|| / ||y|| over the whole output, with the oracle as y.
"""

from __future__ import annotations

import torch

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
DTYPES = [F64, F32, BF16, F16]

# Bound on ||op - oracle|| / ||oracle|| per input dtype.
# Measured reference errors on these inputs: f64 ~4e-15, f32 ~8e-7, bf16 ~4e-3, f16 ~7e-4.
REL_TOL = {
    F64: 1e-12,
    F32: 2e-5,
    BF16: 1.5e-2,
    F16: 3e-3,
}

MASKS = ["bool", "float"]
# (B, T, d_in, d_out): B=1, T=1, sizes that are no multiple of any tile, and one case
# large enough that B, T and the feature dims each span several tiles of the kernels.
TOKEN_SHAPES = [
    (1, 1, 33, 77),
    (1, 9, 77, 33),
    (5, 17, 33, 77),
    (6, 70, 130, 97),
]
PROJ_K = [(1, 1), (5, 7), (16, 3), (33, 65)]  # (k_in, k_out) per TOKEN_SHAPES entry
# (S, r) per TOKEN_SHAPES entry; the last makes S*r span several tiles.
LOWRANK_SR = [(1, 1), (3, 5), (7, 4), (64, 32)]


def rel_err(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().cpu(), y.double().cpu()
    denom = torch.linalg.vector_norm(y).item()
    diff = torch.linalg.vector_norm(x - y).item()
    return diff / denom if denom > 0 else diff


def assert_close(x: torch.Tensor, y: torch.Tensor, tol: float, what: str) -> None:
    assert x.shape == y.shape, f"{what}: shape {tuple(x.shape)} != {tuple(y.shape)}"
    assert torch.isfinite(x).all(), f"{what}: non-finite values"
    err = rel_err(x, y)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def assert_close_nan(x: torch.Tensor, y: torch.Tensor, tol: float, what: str) -> None:
    """assert_close where the oracle ``y`` may hold NaN: ``x`` must be NaN exactly where
    ``y`` is, and within ``tol`` of it (and finite) everywhere else."""
    assert x.shape == y.shape, f"{what}: shape {tuple(x.shape)} != {tuple(y.shape)}"
    x, y = x.cpu(), y.cpu()
    x_nan, y_nan = torch.isnan(x), torch.isnan(y)
    assert torch.equal(x_nan, y_nan), (
        f"{what}: NaN at {x_nan.nonzero().tolist()}, oracle NaN at {y_nan.nonzero().tolist()}"
    )
    assert_close(x[~x_nan], y[~y_nan], tol, what)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return F64 if dtype == F64 else F32


def rand(*shape: int, dtype: torch.dtype, scale: float = 1.0, device: str = "cpu") -> torch.Tensor:
    """Standard normal values rounded to ``dtype`` (the oracle upcasts these same values)."""
    return (torch.randn(*shape, dtype=F64, device=device) * scale).to(dtype)


def orthogonal(d: int, dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    """A random orthogonal [d,d] basis, made on the CPU (same values for every device)."""
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=F64))
    return q.to(device, dtype)


def token_inputs(
    b: int,
    t: int,
    d_in: int,
    d_out: int,
    dtype: torch.dtype,
    mask_kind: str = "bool",
    device: str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """acts, out_grads, mask with right padding of random length.

    Row 0 is full; with three or more rows, row 1 is fully padded (its result must be 0).
    Padded tokens hold large values rather than zeros so that a mask that leaks shows.
    """
    lengths = torch.randint(1, t + 1, (b,), device=device)
    lengths[0] = t
    if b >= 3:
        lengths[1] = 0
    mask = torch.arange(t, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    pad = (~mask).unsqueeze(-1).double() * 9.0 + 1.0  # padded tokens are 10x larger
    acts = (torch.randn(b, t, d_in, dtype=F64, device=device) * pad).to(dtype)
    out_grads = (torch.randn(b, t, d_out, dtype=F64, device=device) * pad).to(dtype)
    if mask_kind == "float":
        mask = mask.to(dtype)
    return acts, out_grads, mask


def oracle_grads(acts: torch.Tensor, out_grads: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Explicit per-example weight gradients [B, d_out, d_in] in float64."""
    return torch.einsum("bt,bto,bti->boi", mask.to(F64), out_grads.to(F64), acts.to(F64))


def oracle_project(acts, out_grads, mask, p_in, p_out) -> torch.Tensor:
    return p_out.to(F64).T @ oracle_grads(acts, out_grads, mask) @ p_in.to(F64)


def oracle_lowrank(acts, out_grads, mask, u, v) -> torch.Tensor:
    # sum_k u[s,k]^T G_b v[s,k] = <sum_k u[s,k] v[s,k]^T, G_b>
    seeds = torch.einsum("sko,ski->soi", u.to(F64), v.to(F64))
    return torch.einsum("soi,boi->bs", seeds, oracle_grads(acts, out_grads, mask))


def oracle_ekfac(acts, out_grads, mask, q_a, q_s) -> torch.Tensor:
    # q_s^T G q_a = sum_t (q_s^T g_t)(q_a^T a_t)^T: same definition, cheaper when d is large.
    rotated = oracle_grads(acts.to(F64) @ q_a.to(F64), out_grads.to(F64) @ q_s.to(F64), mask)
    return rotated.square().sum(dim=0)


def oracle_scores(cand: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    return cand.to(seeds.device, F64) @ seeds.to(F64).T


def check_score_stats(
    out: tuple[torch.Tensor, ...],
    cand: torch.Tensor,
    seeds: torch.Tensor,
    k: int,
    tol: float,
    exact_npos: bool = False,
) -> None:
    """Compare score_stats' outputs (on seeds' device) with the float64 scores; unless
    ``exact_npos``, n_pos may differ only where a score lies within rounding distance of 0.

    NaN scores get torch's semantics, as the oracle computes them: a row holding one has
    mean and min NaN, NaN is not counted in n_pos and ranks above every number in top-k."""
    n_pos, mean, mn, tv, ti = out
    n, s = cand.shape[0], seeds.shape[0]
    acc = acc_dtype(cand.dtype)
    for name, x, dtype, shape in [
        ("n_pos", n_pos, torch.int64, (n,)),
        ("mean", mean, acc, (n,)),
        ("min", mn, acc, (n,)),
        ("topk_val", tv, acc, (n, k)),
        ("topk_idx", ti, torch.int64, (n, k)),
    ]:
        assert x.device == seeds.device, f"{name} is on {x.device}, not seeds' {seeds.device}"
        assert x.dtype == dtype and x.shape == shape, f"{name}: {x.dtype} {tuple(x.shape)}"
    if n == 0:
        return
    sc = oracle_scores(cand, seeds)

    want_pos = (sc > 0).sum(dim=1)
    if exact_npos:
        assert torch.equal(n_pos, want_pos), "n_pos differs from the oracle"
    else:
        rms = sc.square().nanmean(dim=1, keepdim=True).sqrt()  # NaN scores set no scale
        slack = (sc.abs() <= tol * rms).sum(dim=1)
        assert ((n_pos - want_pos).abs() <= slack).all(), "n_pos differs beyond near-zero scores"

    assert_close_nan(mean, sc.mean(dim=1), tol, "score_stats mean")
    assert_close_nan(mn, sc.amin(dim=1), tol, "score_stats min")
    if k == 0:
        return
    hi, lo = tv[:, :-1], tv[:, 1:]  # descending, NaN first (torch.topk ranks it largest)
    assert (hi.isnan() | (~lo.isnan() & (hi >= lo))).all(), "top-k values not sorted descending"
    assert_close_nan(tv, sc.topk(k, dim=1).values, tol, "score_stats top-k values")
    assert ((ti >= 0) & (ti < s)).all(), "top-k index out of range"
    assert (ti.sort(dim=1).values.diff(dim=1) > 0).all(), "top-k indices repeat within a row"
    assert_close_nan(sc.gather(1, ti), tv, tol, "scores at top-k indices vs top-k values")
