"""CPU tests of the compiled ops: each against its reference and a float64 oracle.

The oracle is written from the definitions in METHOD.md, not from the reference:
it forms every per-example gradient G_b = sum_t mask[b,t] g_t a_t^T explicitly in
float64 and then applies P_out^T G P_in, sum_k u_k^T G v_k, (Q_S^T G Q_A)^2 and
cand @ seeds^T. Low-precision inputs are rounded first and the oracle is fed the
same rounded values, so the bounds below measure only the ops' own error.

Relative error is ||x - y|| / ||y|| over the whole output, with the oracle as y.
Each bound is a few times the error of the reference itself at that dtype: an
fp32-accumulated sum of rounded bf16/fp16 products, or a plain float64/float32 sum.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers_ops import (
    BF16,
    DTYPES,
    F16,
    F32,
    F64,
    LOWRANK_SR,
    MASKS,
    PROJ_K,
    REL_TOL,
    TOKEN_SHAPES,
    acc_dtype,
    assert_close,
    check_score_stats,
    oracle_ekfac,
    oracle_grads,
    oracle_lowrank,
    oracle_project,
    oracle_scores,
    rand,
    token_inputs,
)

import gdig_ext
from gdig_ext import reference

# Compiled and reference each sit within REL_TOL of the oracle, so of each other within twice it.
REL_TOL_VS_REF = {dt: 2 * tol for dt, tol in REL_TOL.items()}


def orthogonal(d: int, dtype: torch.dtype) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=F64))
    return q.to(dtype)


# ---------------------------------------------------------------- project_grads


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", range(len(TOKEN_SHAPES)))
def test_project_grads_matches_oracle_and_reference(case, dtype, mask_kind):
    b, t, d_in, d_out = TOKEN_SHAPES[case]
    k_in, k_out = PROJ_K[case]
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, mask_kind)
    p_in = rand(d_in, k_in, dtype=dtype, scale=k_in**-0.5)
    p_out = rand(d_out, k_out, dtype=dtype, scale=k_out**-0.5)
    args = (acts, out_grads, mask, p_in, p_out)

    got = gdig_ext.project_grads(*args)
    ref = reference.project_grads(*args)
    want = oracle_project(*args)

    assert got.dtype == acc_dtype(dtype)
    assert got.shape == (b, k_out, k_in)
    assert_close(got, want, REL_TOL[dtype], "project_grads vs oracle")
    assert_close(ref, want, REL_TOL[dtype], "reference.project_grads vs oracle")
    assert_close(got, ref, REL_TOL_VS_REF[dtype], "project_grads vs reference")
    if b >= 3:
        assert (got[1] == 0).all(), "a fully padded example must give a zero gradient"


# ---------------------------------------------------------------- lowrank_benefit


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", range(len(TOKEN_SHAPES)))
def test_lowrank_benefit_matches_oracle_and_reference(case, dtype, mask_kind):
    b, t, d_in, d_out = TOKEN_SHAPES[case]
    s, r = LOWRANK_SR[case]
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, mask_kind)
    u = rand(s, r, d_out, dtype=dtype, scale=d_out**-0.5)
    v = rand(s, r, d_in, dtype=dtype, scale=d_in**-0.5)
    args = (acts, out_grads, mask, u, v)

    got = gdig_ext.lowrank_benefit(*args)
    ref = reference.lowrank_benefit(*args)
    want = oracle_lowrank(*args)

    assert got.dtype == acc_dtype(dtype)
    assert got.shape == (b, s)
    assert_close(got, want, REL_TOL[dtype], "lowrank_benefit vs oracle")
    assert_close(ref, want, REL_TOL[dtype], "reference.lowrank_benefit vs oracle")
    assert_close(got, ref, REL_TOL_VS_REF[dtype], "lowrank_benefit vs reference")
    if b >= 3:
        assert (got[1] == 0).all(), "a fully padded example must have zero benefit"


# ---------------------------------------------------------------- ekfac_accumulate


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", range(len(TOKEN_SHAPES)))
def test_ekfac_accumulate_adds_in_place(case, dtype, mask_kind):
    b, t, d_in, d_out = TOKEN_SHAPES[case]
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, mask_kind)
    q_a, q_s = orthogonal(d_in, dtype), orthogonal(d_out, dtype)
    # Pre-filled, of the same order as one call's contribution, so that an op that
    # overwrites lam instead of adding to it fails.
    lam0 = torch.rand(d_out, d_in, dtype=acc_dtype(dtype)) * t * b + 1.0
    args = (acts, out_grads, mask, q_a, q_s)

    lam = lam0.clone()
    ptr = lam.data_ptr()
    assert gdig_ext.ekfac_accumulate(*args, lam) is None
    lam_ref = lam0.clone()
    reference.ekfac_accumulate(*args, lam_ref)
    want = lam0.to(F64) + oracle_ekfac(*args)

    assert lam.data_ptr() == ptr and lam.dtype == acc_dtype(dtype)
    assert_close(lam, want, REL_TOL[dtype], "ekfac_accumulate vs oracle")
    assert_close(lam_ref, want, REL_TOL[dtype], "reference.ekfac_accumulate vs oracle")
    assert_close(lam, lam_ref, REL_TOL_VS_REF[dtype], "ekfac_accumulate vs reference")
    # The increment alone, so that a large lam0 cannot hide an error in it.
    assert_close(
        lam.to(F64) - lam0.to(F64),
        oracle_ekfac(*args),
        2 * REL_TOL[dtype] if dtype != F64 else 1e-9,
        "ekfac_accumulate increment vs oracle",
    )


def test_ekfac_accumulate_twice_is_sum_of_batches():
    acts, out_grads, mask = token_inputs(4, 12, 33, 20, F32, "bool")
    q_a, q_s = orthogonal(33, F32), orthogonal(20, F32)
    lam = torch.zeros(20, 33)
    gdig_ext.ekfac_accumulate(acts[:2], out_grads[:2], mask[:2], q_a, q_s, lam)
    gdig_ext.ekfac_accumulate(acts[2:], out_grads[2:], mask[2:], q_a, q_s, lam)
    want = oracle_ekfac(acts, out_grads, mask, q_a, q_s)
    assert_close(lam, want, REL_TOL[F32], "two accumulations vs oracle of the union")


# ---------------------------------------------------------------- score_stats


# (N, S, D, k): single everything, odd sizes, then two cases that span several row tiles
# of the CPU kernel (csrc/score_stats.cpp holds 2^22 scores per tile), the last also past
# the reference's 65536-row chunk.
SCORE_SHAPES = [
    (1, 1, 1, 1),
    (37, 5, 33, 3),
    (300, 77, 65, 10),
    (3000, 1500, 16, 20),
    (70_000, 64, 8, 2),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SCORE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_score_stats_matches_oracle_and_reference(shape, dtype):
    n, s, d, k = shape
    cand, seeds = rand(n, d, dtype=dtype), rand(s, d, dtype=dtype)
    got = gdig_ext.score_stats(cand, seeds, k)
    ref = reference.score_stats(cand, seeds, k)
    tol = REL_TOL[dtype]
    check_score_stats(got, cand, seeds, k, tol, exact_npos=False)
    check_score_stats(ref, cand, seeds, k, tol, exact_npos=False)
    # n_pos was checked against the oracle above, with its rounding slack.
    for name, x, y in zip(["mean", "min", "top-k values"], got[1:4], ref[1:4], strict=True):
        assert_close(x, y, REL_TOL_VS_REF[dtype], f"score_stats {name} vs reference")


def half_integer_inputs(
    n: int, s: int, d: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Small integers plus a column giving every score a +0.5: exact in float32/64, never 0."""
    cand = torch.randint(-2, 3, (n, d + 1)).to(dtype)
    seeds = torch.randint(-2, 3, (s, d + 1)).to(dtype)
    cand[:, -1] = 1.0
    seeds[:, -1] = 0.5
    return cand, seeds


@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@pytest.mark.parametrize("shape", SCORE_SHAPES[1:], ids=lambda s: "x".join(map(str, s)))
def test_score_stats_n_pos_exact(shape, dtype):
    n, s, d, k = shape
    cand, seeds = half_integer_inputs(n, s, d, dtype)
    got = gdig_ext.score_stats(cand, seeds, k)
    check_score_stats(got, cand, seeds, k, REL_TOL[dtype], exact_npos=True)
    assert torch.equal(got[0], reference.score_stats(cand, seeds, k)[0])
    # Every score is a small half-integer, exact in float32 too, so the minimum is exact.
    sc = oracle_scores(cand, seeds)
    assert torch.equal(got[2].to(F64), sc.amin(dim=1))


@pytest.mark.parametrize("dtype", [F64, F32, BF16], ids=str)
def test_score_stats_k_zero_and_k_equals_s(dtype):
    cand, seeds = rand(50, 24, dtype=dtype), rand(9, 24, dtype=dtype)
    tol = REL_TOL[dtype]
    check_score_stats(gdig_ext.score_stats(cand, seeds, 0), cand, seeds, 0, tol, False)
    full = gdig_ext.score_stats(cand, seeds, 9)
    check_score_stats(full, cand, seeds, 9, tol, False)
    # k = S lists every seed once.
    assert torch.equal(full[4].sort(dim=1).values, torch.arange(9).expand(50, 9))


@pytest.mark.parametrize("k", [0, 3])
@pytest.mark.parametrize("dtype", [F64, F32, BF16], ids=str)
def test_score_stats_empty_pool(dtype, k):
    cand, seeds = torch.empty(0, 16, dtype=dtype), rand(5, 16, dtype=dtype)
    got = gdig_ext.score_stats(cand, seeds, k)
    check_score_stats(got, cand, seeds, k, REL_TOL[dtype], exact_npos=True)
    for name, x, y in zip(
        ["n_pos", "mean", "min", "topk_val", "topk_idx"],
        got,
        reference.score_stats(cand, seeds, k),
        strict=True,
    ):
        assert x.shape == y.shape and x.dtype == y.dtype, (
            f"empty pool: {name} differs from reference"
        )


@pytest.mark.parametrize("mmap_mode", ["r", "c"])
def test_score_stats_memmapped_pool(tmp_path, mmap_mode):
    """A pool saved with np.save is scored straight from the file, as the pipeline does."""
    n, s, d, k = 5000, 40, 48, 5
    path = tmp_path / "pool.npy"
    np.save(path, torch.randn(n, d).numpy())
    arr = np.load(path, mmap_mode=mmap_mode)
    assert isinstance(arr, np.memmap)
    with warnings.catch_warnings():
        # mode "r" is read-only: torch warns that writes would be undefined; the op only reads.
        warnings.simplefilter("ignore", UserWarning)
        cand = torch.from_numpy(arr)
    seeds = torch.randn(s, d)
    got = gdig_ext.score_stats(cand, seeds, k)
    check_score_stats(got, cand, seeds, k, REL_TOL[F32], exact_npos=False)
    in_memory = gdig_ext.score_stats(cand.clone(), seeds, k)
    for x, y in zip(got, in_memory, strict=True):
        assert torch.equal(x, y), "a memory-mapped pool must score exactly as the same pool in RAM"
    assert np.array_equal(np.load(path), arr), "the op wrote into the pool file"


# ---------------------------------------------------------------- layouts and edges


@pytest.mark.parametrize("b,t", [(0, 5), (3, 0)], ids=["B=0", "T=0"])
def test_token_ops_empty_batch_or_sequence(b, t):
    acts, out_grads = torch.randn(b, t, 6), torch.randn(b, t, 4)
    mask = torch.ones(b, t, dtype=torch.bool)
    proj = gdig_ext.project_grads(acts, out_grads, mask, torch.randn(6, 3), torch.randn(4, 2))
    assert proj.shape == (b, 2, 3) and (proj == 0).all()
    benefit = gdig_ext.lowrank_benefit(
        acts, out_grads, mask, torch.randn(5, 2, 4), torch.randn(5, 2, 6)
    )
    assert benefit.shape == (b, 5) and (benefit == 0).all()
    lam = torch.full((4, 6), 2.0)
    gdig_ext.ekfac_accumulate(acts, out_grads, mask, torch.randn(6, 6), torch.randn(4, 4), lam)
    assert (lam == 2.0).all(), "nothing to accumulate must leave lam as it was"


def test_token_ops_accept_non_contiguous_inputs():
    """Strided views (a feature slice, transposed projections) give the contiguous result."""
    acts = torch.randn(3, 8, 12)[:, :, ::2]  # [3, 8, 6], stride 2 in d_in
    out_grads = torch.randn(3, 4, 8).transpose(1, 2)  # [3, 8, 4]
    mask = (torch.rand(8, 3) > 0.3).T
    p_in, p_out = torch.randn(5, 6).T, torch.randn(2, 4).T
    u, v = torch.randn(4, 2, 3).permute(2, 1, 0), torch.randn(2, 3, 6).transpose(0, 1)
    q_a, q_s = torch.randn(6, 6).T, torch.randn(4, 4).T
    c = [x.contiguous() for x in (acts, out_grads, mask)]
    tol = REL_TOL[F32]
    assert_close(
        gdig_ext.project_grads(acts, out_grads, mask, p_in, p_out),
        gdig_ext.project_grads(*c, p_in.contiguous(), p_out.contiguous()),
        tol,
        "project_grads on strided inputs",
    )
    assert_close(
        gdig_ext.lowrank_benefit(acts, out_grads, mask, u, v),
        gdig_ext.lowrank_benefit(*c, u.contiguous(), v.contiguous()),
        tol,
        "lowrank_benefit on strided inputs",
    )
    lam, lam_c = torch.zeros(4, 6), torch.zeros(4, 6)
    gdig_ext.ekfac_accumulate(acts, out_grads, mask, q_a, q_s, lam)
    gdig_ext.ekfac_accumulate(*c, q_a.contiguous(), q_s.contiguous(), lam_c)
    assert_close(lam, lam_c, tol, "ekfac_accumulate on strided inputs")


def test_score_stats_accepts_non_contiguous_inputs():
    cand, seeds = torch.randn(300, 40)[:, ::2], torch.randn(20, 7).T
    got = gdig_ext.score_stats(cand, seeds, 4)
    want = gdig_ext.score_stats(cand.contiguous(), seeds.contiguous(), 4)
    assert torch.equal(got[0], want[0])
    for x, y in zip(got[1:4], want[1:4], strict=True):
        assert_close(x, y, REL_TOL[F32], "score_stats on strided inputs")


@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
def test_float32_mask_with_low_precision_inputs(dtype):
    """A 0/1 mask may come in any floating dtype, e.g. float32 from a collator."""
    acts, out_grads, mask = token_inputs(4, 10, 9, 7, dtype, "bool")
    p_in, p_out = rand(9, 3, dtype=dtype), rand(7, 2, dtype=dtype)
    assert torch.equal(
        gdig_ext.project_grads(acts, out_grads, mask.float(), p_in, p_out),
        gdig_ext.project_grads(acts, out_grads, mask, p_in, p_out),
    )


# ---------------------------------------------------------------- several tiles
# Shapes derived from the tile budgets in csrc/*.cpp (kTileElems) so that every loop of the
# CPU kernels runs more than once and ends on a partial tile. If a budget changes, these
# still pass but may stop covering the tile edges: update the numbers with it.


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_project_grads_several_tiles(dtype):
    # 2^24 projected values per tile; one example holds T*(k_in+k_out) = 6.1M: tiles of 2, 2, 1.
    b, t, d_in, d_out, k_in, k_out = 5, 1024, 7, 5, 6000, 2
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, "bool")
    p_in = rand(d_in, k_in, dtype=dtype, scale=k_in**-0.5)
    p_out = rand(d_out, k_out, dtype=dtype, scale=k_out**-0.5)
    args = (acts, out_grads, mask, p_in, p_out)
    assert_close(gdig_ext.project_grads(*args), oracle_project(*args), REL_TOL[dtype], "tiled")


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_lowrank_benefit_several_tiles(dtype):
    # 2^22 values per tile: seeds per tile 2^22/(T*r*8) = 256 of S = 300, then examples per
    # tile 2^22/(T*256*r) = 8 of B = 10.
    b, t, d_in, d_out, s, r = 10, 64, 20, 33, 300, 32
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, "float")
    u = rand(s, r, d_out, dtype=dtype, scale=d_out**-0.5)
    v = rand(s, r, d_in, dtype=dtype, scale=d_in**-0.5)
    args = (acts, out_grads, mask, u, v)
    assert_close(gdig_ext.lowrank_benefit(*args), oracle_lowrank(*args), REL_TOL[dtype], "tiled")


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_ekfac_accumulate_several_tiles(dtype):
    # 2^22 values per tile: 1677 rows of d_out = 1700, one example at a time of B = 2.
    b, t, d_in, d_out = 2, 8, 2500, 1700
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, "bool")
    # Any square bases exercise the kernel; orthogonal ones this large are slow to make.
    q_a = rand(d_in, d_in, dtype=dtype, scale=d_in**-0.5)
    q_s = rand(d_out, d_out, dtype=dtype, scale=d_out**-0.5)
    lam = torch.ones(d_out, d_in)
    gdig_ext.ekfac_accumulate(acts, out_grads, mask, q_a, q_s, lam)
    # Same definition as oracle_ekfac, with q applied to the tokens so that the float64
    # oracle stays cheap at this size: q_s^T G q_a = sum_t (q_s^T g_t)(q_a^T a_t)^T.
    a64 = acts.to(F64) @ q_a.to(F64)
    g64 = out_grads.to(F64) @ q_s.to(F64)
    want = 1.0 + oracle_grads(a64, g64, mask).square().sum(dim=0)
    assert_close(lam, want, REL_TOL[dtype], "tiled")


# ---------------------------------------------------------------- opcheck


def _opcheck_inputs(dtype: torch.dtype, mask_kind: str):
    acts, out_grads, mask = token_inputs(3, 6, 9, 5, dtype, mask_kind)
    return {
        "project_grads": (acts, out_grads, mask, rand(9, 4, dtype=dtype), rand(5, 3, dtype=dtype)),
        "lowrank_benefit": (
            acts,
            out_grads,
            mask,
            rand(4, 2, 5, dtype=dtype),
            rand(4, 2, 9, dtype=dtype),
        ),
        "score_stats": (rand(11, 7, dtype=dtype), rand(4, 7, dtype=dtype), 2),
        "ekfac_accumulate": (
            acts,
            out_grads,
            mask,
            orthogonal(9, dtype),
            orthogonal(5, dtype),
            torch.rand(5, 9, dtype=acc_dtype(dtype)),
        ),
    }


OPS = ["project_grads", "lowrank_benefit", "score_stats", "ekfac_accumulate"]


# score_stats takes no mask, so it runs once per dtype.
OPCHECK_CASES = [(op, m) for op in OPS for m in MASKS if op != "score_stats" or m == "bool"]


@pytest.mark.parametrize("dtype", [F32, F64, BF16], ids=str)
@pytest.mark.parametrize("name,mask_kind", OPCHECK_CASES)
def test_opcheck(name, mask_kind, dtype):
    args = _opcheck_inputs(dtype, mask_kind)[name]
    torch.library.opcheck(getattr(torch.ops.gdig, name).default, args)


def test_opcheck_edge_shapes():
    op = torch.ops.gdig
    torch.library.opcheck(op.score_stats.default, (torch.randn(0, 5), torch.randn(3, 5), 3))
    torch.library.opcheck(op.score_stats.default, (torch.randn(8, 5), torch.randn(3, 5), 0))
    acts, out_grads, mask = token_inputs(1, 1, 4, 3, F32, "bool")
    torch.library.opcheck(
        op.lowrank_benefit.default,
        (acts, out_grads, mask, torch.randn(1, 1, 3), torch.randn(1, 1, 4)),
    )


# ---------------------------------------------------------------- errors
# Each bad input raises RuntimeError whose message names the argument (csrc/checks.cpp).


def _good_token_args(op: str, dtype: torch.dtype = F32) -> list:
    acts, out_grads, mask = token_inputs(2, 5, 6, 4, dtype, "bool")
    extra = {
        "project_grads": [rand(6, 3, dtype=dtype), rand(4, 2, dtype=dtype)],
        "lowrank_benefit": [rand(3, 2, 4, dtype=dtype), rand(3, 2, 6, dtype=dtype)],
        "ekfac_accumulate": [
            rand(6, 6, dtype=dtype),
            rand(4, 4, dtype=dtype),
            torch.zeros(4, 6, dtype=acc_dtype(dtype)),
        ],
    }[op]
    return [acts, out_grads, mask, *extra]


TOKEN_OPS = ["project_grads", "lowrank_benefit", "ekfac_accumulate"]
ARG_INDEX = {"acts": 0, "out_grads": 1, "mask": 2}


# (argument, replacement builder, message pattern); applies to all three token ops.
COMMON_TOKEN_ERRORS = [
    ("acts", lambda a: a[0][0], r"acts must be 3-D"),
    ("out_grads", lambda a: a[1][0], r"out_grads must be 3-D"),
    ("out_grads", lambda a: a[1][:, :4], r"out_grads \[B,T,d_out\] must match acts"),
    ("out_grads", lambda a: a[1][:1], r"out_grads \[B,T,d_out\] must match acts"),
    ("mask", lambda a: a[2][:, :4], r"mask must have shape \[B,T\]"),
    ("mask", lambda a: a[2][0], r"mask must have shape \[B,T\]"),
    ("mask", lambda a: a[2].long(), r"mask must be bool or a 0/1 floating"),
    ("acts", lambda a: a[0].long(), r"acts must be float32, float64, bfloat16 or float16"),
    ("out_grads", lambda a: a[1].double(), r"out_grads has dtype Double but acts has dtype Float"),
    ("out_grads", lambda a: a[1].int(), r"out_grads has dtype Int but acts has dtype Float"),
]


@pytest.mark.parametrize("op", TOKEN_OPS)
@pytest.mark.parametrize(
    "arg,make,match", COMMON_TOKEN_ERRORS, ids=[m for _, _, m in COMMON_TOKEN_ERRORS]
)
def test_token_input_errors(op, arg, make, match):
    args = _good_token_args(op)
    args[ARG_INDEX[arg]] = make(args)
    with pytest.raises(RuntimeError, match=rf"{op}: {match}"):
        getattr(gdig_ext, op)(*args)


# (op, index of the argument to replace, replacement builder, message pattern)
OP_ERRORS = [
    ("project_grads", 3, lambda a: a[3][:5], r"p_in must have shape \[d_in,k_in\] with d_in = 6"),
    ("project_grads", 3, lambda a: a[3][:, 0], r"p_in must have shape \[d_in,k_in\]"),
    ("project_grads", 4, lambda a: a[4][:3], r"p_out must have shape \[d_out,k_out\]"),
    ("project_grads", 3, lambda a: a[3].double(), r"p_in has dtype Double but acts"),
    ("project_grads", 4, lambda a: a[4].bfloat16(), r"p_out has dtype BFloat16 but acts"),
    ("lowrank_benefit", 3, lambda a: a[3][0], r"u must have shape \[S,r,d_out\]"),
    ("lowrank_benefit", 3, lambda a: a[3][..., :3], r"u must have shape \[S,r,d_out\]"),
    ("lowrank_benefit", 4, lambda a: a[4][:2], r"v must have shape \[S,r,d_in\] = \[3,2,6\]"),
    ("lowrank_benefit", 4, lambda a: a[4][:, :1], r"v must have shape \[S,r,d_in\] = \[3,2,6\]"),
    ("lowrank_benefit", 4, lambda a: a[4][..., :5], r"v must have shape \[S,r,d_in\]"),
    ("lowrank_benefit", 3, lambda a: a[3].double(), r"u has dtype Double but acts"),
    ("lowrank_benefit", 4, lambda a: a[4].half(), r"v has dtype Half but acts"),
    ("ekfac_accumulate", 3, lambda a: a[3][:, :5], r"q_a must have shape \[d_in,d_in\]"),
    ("ekfac_accumulate", 3, lambda a: a[3][:5, :5], r"q_a must have shape \[d_in,d_in\]"),
    ("ekfac_accumulate", 4, lambda a: a[4][:3], r"q_s must have shape \[d_out,d_out\]"),
    ("ekfac_accumulate", 3, lambda a: a[3].double(), r"q_a has dtype Double but acts"),
    ("ekfac_accumulate", 4, lambda a: a[4].bfloat16(), r"q_s has dtype BFloat16 but acts"),
    ("ekfac_accumulate", 5, lambda a: a[5].T, r"lam must have shape \[d_out,d_in\]"),
    ("ekfac_accumulate", 5, lambda a: a[5][0], r"lam must have shape \[d_out,d_in\]"),
    ("ekfac_accumulate", 5, lambda a: a[5].bfloat16(), r"lam must be float32 or float64"),
    ("ekfac_accumulate", 5, lambda a: a[5].long(), r"lam must be float32 or float64"),
    (
        "ekfac_accumulate",
        5,
        lambda a: torch.zeros(6, 4).T,
        r"lam must be contiguous",
    ),
]


@pytest.mark.parametrize("op,index,make,match", OP_ERRORS, ids=[m for *_, m in OP_ERRORS])
def test_op_specific_errors(op, index, make, match):
    args = _good_token_args(op)
    args[index] = make(args)
    with pytest.raises(RuntimeError, match=rf"{op}: {match}"):
        getattr(gdig_ext, op)(*args)


def test_ekfac_accumulate_float64_inputs_need_float64_lam():
    args = _good_token_args("ekfac_accumulate", F64)
    args[5] = torch.zeros(4, 6, dtype=F32)
    with pytest.raises(RuntimeError, match=r"lam must be float64 for float64 inputs"):
        gdig_ext.ekfac_accumulate(*args)


def test_ekfac_accumulate_error_leaves_lam_untouched():
    args = _good_token_args("ekfac_accumulate")
    lam = args[5]
    args[4] = args[4][:3]
    with pytest.raises(RuntimeError, match="q_s"):
        gdig_ext.ekfac_accumulate(*args)
    assert (lam == 0).all()


SCORE_ERRORS = [
    (lambda c, s: (c[0], s, 2), r"cand must be 2-D \[N,D\]"),
    (lambda c, s: (c, s[None], 2), r"seeds must be 2-D \[S,D\]"),
    (lambda c, s: (c, s[:, :5], 2), r"cand \[N,D\] and seeds \[S,D\] must share D"),
    (lambda c, s: (c, s.double(), 2), r"seeds has dtype Double but cand has dtype Float"),
    (lambda c, s: (c.long(), s.long(), 2), r"cand must be float32, float64, bfloat16 or float16"),
    (lambda c, s: (c, s.int(), 2), r"seeds has dtype Int but cand has dtype Float"),
    (lambda c, s: (c, s, 5), r"k must be in \[0, S\] = \[0, 4\], got k=5"),
    (lambda c, s: (c, s, -1), r"k must be in \[0, S\] = \[0, 4\], got k=-1"),
    (lambda c, s: (c, s[:0], 0), r"seeds must have at least one row"),
]


@pytest.mark.parametrize("make,match", SCORE_ERRORS, ids=[m for _, m in SCORE_ERRORS])
def test_score_stats_errors(make, match):
    cand, seeds = torch.randn(10, 6), torch.randn(4, 6)
    with pytest.raises(RuntimeError, match=rf"score_stats: {match}"):
        gdig_ext.score_stats(*make(cand, seeds))
