"""Tests of the compiled ops on every device: against a float64 oracle, the reference and,
on CUDA, the CPU kernel.

Each test body runs on the CPU and, as its ``cuda`` case, on the GPU: CUDA cases carry the
``cuda`` marker (conftest skips them when torch sees no GPU) and are skipped as well when a
GPU is visible but gdig_ext was built without its CUDA kernels (rebuild with GDIG_CUDA=1).
score_stats has a third placement, ``cuda-streamed``: ``cand`` stays on the CPU (e.g. a
memory-mapped pool) and is streamed to seeds on the GPU.

The oracle is written from the definitions in METHOD.md, not from the reference or the
kernels: it forms every per-example gradient G_b = sum_t mask[b,t] g_t a_t^T explicitly in
float64 (on the inputs' device, so the large CUDA cases stay fast) and then applies
P_out^T G P_in, sum_k u_k^T G v_k, (Q_S^T G Q_A)^2 and cand @ seeds^T. Low-precision inputs
are rounded first and the oracle is fed the same rounded values, so the bounds measure only
the ops' own error.

Relative error is ||x - y|| / ||y|| over the whole output, with the oracle as y. Each bound
(helpers_ops.REL_TOL) is a few times the error of the reference itself at that dtype: an
fp32-accumulated sum of rounded bf16/fp16 products, or a plain float64/float32 sum. It is
dominated by rounding each GEMM's output to the input dtype, which cuBLAS and the CPU share.
The CUDA ops keep their fp32 GEMMs free of TF32 whatever the caller's setting (tested below);
the references follow the caller's setting (TF32 off by default). Compiled op, reference
and CPU kernel each sit within the bound of the oracle, so of each other within twice it.

Shapes under "several tiles" are derived from each backend's tile budget (kTileElems: 2^22
values in csrc/*.cpp and csrc/cuda/cuda_utils.cuh, 2^24 for project_grads on the CPU; on
CUDA a pass of ekfac_accumulate holds kInputElems = 2^25 rotated tokens) so that every loop
of the kernels runs more than once and ends on a partial tile. If a budget changes, these
still pass but may stop covering the tile edges: update the numbers with it.
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
    assert_close_nan,
    check_score_stats,
    oracle_ekfac,
    oracle_lowrank,
    oracle_project,
    oracle_scores,
    orthogonal,
    rand,
    rel_err,
    token_inputs,
)

import gdig_ext
from gdig_ext import reference

# Compiled, reference and CPU kernel each sit within REL_TOL of the oracle: of each other
# within twice it.
REL_TOL_VS_REF = {dt: 2 * tol for dt, tol in REL_TOL.items()}

# Without a GPU conftest skips every `cuda` case ("no CUDA device visible"); with one, a
# build that lacks the CUDA kernels would fail them all in the dispatcher instead.
CUDA_MARKS = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        torch.cuda.is_available() and not gdig_ext.cuda_available(),
        reason="gdig_ext was built without its CUDA kernels (rebuild with GDIG_CUDA=1)",
    ),
]
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA_MARKS)]
ONLY_CUDA = [pytest.param("cuda", marks=CUDA_MARKS)]
# score_stats: (cand's device, seeds' device); outputs live on seeds' device.
PLACEMENTS = [
    pytest.param(("cpu", "cpu"), id="cpu"),
    pytest.param(("cuda", "cuda"), id="cuda", marks=CUDA_MARKS),
    pytest.param(("cpu", "cuda"), id="cuda-streamed", marks=CUDA_MARKS),
]
NAN = float("nan")


def on_cpu(args) -> tuple:
    """The same inputs on the CPU, to run the CPU kernel on them."""
    return tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args)


def load_pool(path, n: int, d: int, mmap_mode: str = "r") -> torch.Tensor:
    """An [n,d] float32 pool saved with np.save, memory-mapped back as the pipeline does."""
    np.save(path, torch.randn(n, d).numpy())
    arr = np.load(path, mmap_mode=mmap_mode)
    assert isinstance(arr, np.memmap)
    with warnings.catch_warnings():
        # mode "r" is read-only: torch warns that writes would be undefined; the op only reads.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


# ---------------------------------------------------------------- project_grads


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", range(len(TOKEN_SHAPES)))
@pytest.mark.parametrize("device", DEVICES)
def test_project_grads_matches_oracle_and_reference(device, case, dtype, mask_kind):
    b, t, d_in, d_out = TOKEN_SHAPES[case]
    k_in, k_out = PROJ_K[case]
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, mask_kind, device=device)
    p_in = rand(d_in, k_in, dtype=dtype, scale=k_in**-0.5, device=device)
    p_out = rand(d_out, k_out, dtype=dtype, scale=k_out**-0.5, device=device)
    args = (acts, out_grads, mask, p_in, p_out)

    got = gdig_ext.project_grads(*args)
    ref = reference.project_grads(*args)
    want = oracle_project(*args)

    assert got.device == acts.device
    assert got.dtype == acc_dtype(dtype)
    assert got.shape == (b, k_out, k_in)
    assert_close(got, want, REL_TOL[dtype], "project_grads vs oracle")
    assert_close(ref, want, REL_TOL[dtype], "reference.project_grads vs oracle")
    assert_close(got, ref, REL_TOL_VS_REF[dtype], "project_grads vs reference")
    if device != "cpu":
        cpu = gdig_ext.project_grads(*on_cpu(args))
        assert_close(got, cpu, REL_TOL_VS_REF[dtype], "project_grads vs the CPU kernel")
    if b >= 3:
        assert (got[1] == 0).all(), "a fully padded example must give a zero gradient"


# ---------------------------------------------------------------- lowrank_benefit


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", range(len(TOKEN_SHAPES)))
@pytest.mark.parametrize("device", DEVICES)
def test_lowrank_benefit_matches_oracle_and_reference(device, case, dtype, mask_kind):
    b, t, d_in, d_out = TOKEN_SHAPES[case]
    s, r = LOWRANK_SR[case]
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, mask_kind, device=device)
    u = rand(s, r, d_out, dtype=dtype, scale=d_out**-0.5, device=device)
    v = rand(s, r, d_in, dtype=dtype, scale=d_in**-0.5, device=device)
    args = (acts, out_grads, mask, u, v)

    got = gdig_ext.lowrank_benefit(*args)
    ref = reference.lowrank_benefit(*args)
    want = oracle_lowrank(*args)

    assert got.device == acts.device
    assert got.dtype == acc_dtype(dtype)
    assert got.shape == (b, s)
    assert_close(got, want, REL_TOL[dtype], "lowrank_benefit vs oracle")
    assert_close(ref, want, REL_TOL[dtype], "reference.lowrank_benefit vs oracle")
    assert_close(got, ref, REL_TOL_VS_REF[dtype], "lowrank_benefit vs reference")
    if device != "cpu":
        cpu = gdig_ext.lowrank_benefit(*on_cpu(args))
        assert_close(got, cpu, REL_TOL_VS_REF[dtype], "lowrank_benefit vs the CPU kernel")
    if b >= 3:
        assert (got[1] == 0).all(), "a fully padded example must have zero benefit"


# ---------------------------------------------------------------- ekfac_accumulate


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", range(len(TOKEN_SHAPES)))
@pytest.mark.parametrize("device", DEVICES)
def test_ekfac_accumulate_adds_in_place(device, case, dtype, mask_kind):
    b, t, d_in, d_out = TOKEN_SHAPES[case]
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, mask_kind, device=device)
    q_a, q_s = orthogonal(d_in, dtype, device), orthogonal(d_out, dtype, device)
    # Pre-filled, of the same order as one call's contribution, so that an op that
    # overwrites lam instead of adding to it fails.
    lam0 = torch.rand(d_out, d_in, dtype=acc_dtype(dtype), device=device) * t * b + 1.0
    args = (acts, out_grads, mask, q_a, q_s)

    lam = lam0.clone()
    ptr = lam.data_ptr()
    assert gdig_ext.ekfac_accumulate(*args, lam) is None
    lam_ref = lam0.clone()
    reference.ekfac_accumulate(*args, lam_ref)
    increment = oracle_ekfac(*args)
    want = lam0.to(F64) + increment

    assert lam.data_ptr() == ptr and lam.device == acts.device and lam.dtype == acc_dtype(dtype)
    assert_close(lam, want, REL_TOL[dtype], "ekfac_accumulate vs oracle")
    assert_close(lam_ref, want, REL_TOL[dtype], "reference.ekfac_accumulate vs oracle")
    assert_close(lam, lam_ref, REL_TOL_VS_REF[dtype], "ekfac_accumulate vs reference")
    # The increment alone, so that a large lam0 cannot hide an error in it.
    assert_close(
        lam.to(F64) - lam0.to(F64),
        increment,
        2 * REL_TOL[dtype] if dtype != F64 else 1e-9,
        "ekfac_accumulate increment vs oracle",
    )
    if device != "cpu":
        lam_cpu = lam0.cpu()
        gdig_ext.ekfac_accumulate(*on_cpu(args), lam_cpu)
        assert_close(lam, lam_cpu, REL_TOL_VS_REF[dtype], "ekfac_accumulate vs the CPU kernel")


@pytest.mark.parametrize("device", DEVICES)
def test_ekfac_accumulate_twice_is_sum_of_batches(device):
    acts, out_grads, mask = token_inputs(4, 12, 33, 20, F32, "bool", device=device)
    q_a, q_s = orthogonal(33, F32, device), orthogonal(20, F32, device)
    lam = torch.zeros(20, 33, device=device)
    gdig_ext.ekfac_accumulate(acts[:2], out_grads[:2], mask[:2], q_a, q_s, lam)
    gdig_ext.ekfac_accumulate(acts[2:], out_grads[2:], mask[2:], q_a, q_s, lam)
    want = oracle_ekfac(acts, out_grads, mask, q_a, q_s)
    assert_close(lam, want, REL_TOL[F32], "two accumulations vs oracle of the union")


# ---------------------------------------------------------------- score_stats


# (N, S, D, k): single everything, odd sizes, then two cases that span several row tiles
# of the CPU kernel (2^22 scores per tile), the last also past the reference's 65536-row
# chunk.
SCORE_SHAPES = [
    (1, 1, 1, 1),
    (37, 5, 33, 3),
    (300, 77, 65, 10),
    (3000, 1500, 16, 20),
    (70_000, 64, 8, 2),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SCORE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_score_stats_matches_oracle_and_reference(placement, shape, dtype):
    cand_on, dev = placement
    n, s, d, k = shape
    cand, seeds = rand(n, d, dtype=dtype, device=cand_on), rand(s, d, dtype=dtype, device=dev)
    got = gdig_ext.score_stats(cand, seeds, k)
    ref = reference.score_stats(cand, seeds, k)
    tol = REL_TOL[dtype]
    check_score_stats(got, cand, seeds, k, tol, exact_npos=False)
    check_score_stats(ref, cand, seeds, k, tol, exact_npos=False)
    # n_pos was checked against the oracle above, with its rounding slack.
    others = [("reference", ref)]
    if dev != "cpu":
        others.append(("the CPU kernel", gdig_ext.score_stats(cand.cpu(), seeds.cpu(), k)))
    for who, other in others:
        for name, x, y in zip(["mean", "min", "top-k values"], got[1:4], other[1:4], strict=True):
            assert_close(x, y, REL_TOL_VS_REF[dtype], f"score_stats {name} vs {who}")


def half_integer_inputs(
    n: int, s: int, d: int, dtype: torch.dtype, cand_on: str, dev: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Small integers plus a column giving every score a +0.5: exact in float32/64, never 0."""
    cand = torch.randint(-2, 3, (n, d + 1)).to(cand_on, dtype)
    seeds = torch.randint(-2, 3, (s, d + 1)).to(dev, dtype)
    cand[:, -1] = 1.0
    seeds[:, -1] = 0.5
    return cand, seeds


@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@pytest.mark.parametrize("shape", SCORE_SHAPES[1:], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_score_stats_n_pos_exact(placement, shape, dtype):
    n, s, d, k = shape
    cand, seeds = half_integer_inputs(n, s, d, dtype, *placement)
    got = gdig_ext.score_stats(cand, seeds, k)
    check_score_stats(got, cand, seeds, k, REL_TOL[dtype], exact_npos=True)
    assert torch.equal(got[0], reference.score_stats(cand, seeds, k)[0])
    # Every score is a small half-integer, exact in float32 too, so the minimum is exact.
    sc = oracle_scores(cand, seeds)
    assert torch.equal(got[2].to(F64), sc.amin(dim=1))


@pytest.mark.parametrize("dtype", [F64, F32, BF16], ids=str)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_score_stats_k_zero_and_k_equals_s(placement, dtype):
    cand_on, dev = placement
    cand, seeds = rand(50, 24, dtype=dtype, device=cand_on), rand(9, 24, dtype=dtype, device=dev)
    tol = REL_TOL[dtype]
    none = gdig_ext.score_stats(cand, seeds, 0)
    check_score_stats(none, cand, seeds, 0, tol, False)
    full = gdig_ext.score_stats(cand, seeds, 9)
    check_score_stats(full, cand, seeds, 9, tol, False)
    # k = S lists every seed once.
    assert torch.equal(full[4].sort(dim=1).values.cpu(), torch.arange(9).expand(50, 9))
    # k only adds the top-k: the other statistics do not depend on it.
    for name, x, y in zip(["n_pos", "mean", "min"], none[:3], full[:3], strict=True):
        assert torch.equal(x, y), f"score_stats {name} differs between k=0 and k=S"


@pytest.mark.parametrize("k", [0, 3])
@pytest.mark.parametrize("dtype", [F64, F32, BF16], ids=str)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_score_stats_empty_pool(placement, dtype, k):
    cand_on, dev = placement
    cand = torch.empty(0, 16, dtype=dtype, device=cand_on)
    seeds = rand(5, 16, dtype=dtype, device=dev)
    got = gdig_ext.score_stats(cand, seeds, k)
    check_score_stats(got, cand, seeds, k, REL_TOL[dtype], exact_npos=True)
    for name, x, y in zip(
        ["n_pos", "mean", "min", "topk_val", "topk_idx"],
        got,
        reference.score_stats(cand, seeds, k),
        strict=True,
    ):
        assert x.shape == y.shape and x.dtype == y.dtype and x.device == y.device, (
            f"empty pool: {name} differs from reference"
        )


@pytest.mark.parametrize("where", ["cand-rows", "seed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_score_stats_nan_scores(placement, dtype, where):
    """NaN scores follow torch, like the reference: a row holding one has mean and min NaN,
    n_pos counts only scores > 0, and top-k ranks NaN above every number.

    "cand-rows": a NaN feature in two candidates makes their whole rows NaN (the others
    stay finite); "seed": a NaN feature in one seed puts one NaN in every row."""
    cand_on, dev = placement
    n, s, d, k = 37, 9, 16, 4
    cand, seeds = rand(n, d, dtype=dtype, device=cand_on), rand(s, d, dtype=dtype, device=dev)
    if where == "cand-rows":
        cand[[3, n - 1], 5] = NAN
    else:
        seeds[2, 0] = NAN
    sc = oracle_scores(cand, seeds)
    nan_rows = sc.isnan().any(dim=1)
    assert nan_rows.sum() == (2 if where == "cand-rows" else n)  # the inputs do what we say

    tol = REL_TOL[dtype]
    got = gdig_ext.score_stats(cand, seeds, k)
    ref = reference.score_stats(cand, seeds, k)
    check_score_stats(got, cand, seeds, k, tol, exact_npos=False)
    check_score_stats(ref, cand, seeds, k, tol, exact_npos=False)
    _, mean, mn, tv, ti = got
    assert torch.equal(mn.isnan(), nan_rows), "min must be NaN exactly in rows with a NaN score"
    assert torch.equal(mean.isnan(), nan_rows), "mean must be NaN exactly in rows with a NaN"
    assert tv[:, 0].isnan().equal(nan_rows), "top-1 must be the NaN score of its row"
    if where == "seed":
        assert (ti[:, 0] == 2).all(), "top-1 must point at the NaN seed"
    others = [("reference", ref)]
    if dev != "cpu":
        others.append(("the CPU kernel", gdig_ext.score_stats(cand.cpu(), seeds.cpu(), k)))
    for who, other in others:
        for name, x, y in zip(["mean", "min", "top-k values"], got[1:4], other[1:4], strict=True):
            assert_close_nan(x, y, REL_TOL_VS_REF[dtype], f"score_stats {name} vs {who}")


@pytest.mark.parametrize("mmap_mode", ["r", "c"])
@pytest.mark.parametrize("device", DEVICES)
def test_score_stats_memmapped_pool(tmp_path, device, mmap_mode):
    """A pool saved with np.save is scored straight from the file, as the pipeline does
    (streamed tile by tile to the GPU when seeds are there)."""
    n, s, d, k = 5000, 40, 48, 5  # one tile on each backend, however the pool is held
    path = tmp_path / "pool.npy"
    cand = load_pool(path, n, d, mmap_mode)
    before = cand.clone()
    seeds = torch.randn(s, d, device=device)
    got = gdig_ext.score_stats(cand, seeds, k)
    check_score_stats(got, cand, seeds, k, REL_TOL[F32], exact_npos=False)
    # The same pool in RAM on the CPU, in the GPU's memory on CUDA: the same tile, the same
    # GEMM, so the same bits.
    in_memory = gdig_ext.score_stats(cand.clone().to(device), seeds, k)
    for x, y in zip(got, in_memory, strict=True):
        assert torch.equal(x, y), "a memory-mapped pool must score exactly as the same pool held"
    assert torch.equal(cand, before), "the op wrote into the pool"
    assert np.array_equal(np.load(path), before.numpy()), "the op wrote into the pool file"


@pytest.mark.parametrize("device", ONLY_CUDA)
def test_score_stats_pinned_pool_is_read_before_return(device):
    """A pinned, contiguous pool is read only by the op's CPU copies into its own pinned
    staging (double-buffered uploads), so the op must be done with the caller's buffer when
    it returns. The pool is overwritten with NaN right after the call, with no
    synchronisation: a read still in flight would carry NaN into the scores of its tile. (A
    race can only be caught, not ruled out, by a test.)"""
    n, s, d, k = 20_000, 4096, 64, 7  # three tiles, as in test_score_stats_several_tiles
    cand = torch.randn(n, d).pin_memory()
    assert cand.is_pinned() and cand.is_contiguous()
    kept = cand.clone()
    seeds = rand(s, d, dtype=F32, device=device)
    got = gdig_ext.score_stats(cand, seeds, k)
    cand.fill_(NAN)
    check_score_stats(got, kept, seeds, k, REL_TOL[F32])


# ---------------------------------------------------------------- top-k order


def _equal_with_nan(x: torch.Tensor, y: torch.Tensor) -> bool:
    x, y = x.cpu(), y.cpu()
    return torch.equal(x.isnan(), y.isnan()) and torch.equal(x[~x.isnan()], y[~y.isnan()])


@pytest.mark.parametrize("nan", ["none", "cand-rows", "seeds"])
@pytest.mark.parametrize("dtype", [F32, BF16, F64], ids=str)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_score_stats_top_k_order_on_ties_and_nan(placement, dtype, nan):
    """Every backend ranks in the order of csrc/topk_order.h: NaN first, then larger scores,
    equal scores (+0 and -0 included, two NaN too) by lower seed index: the first k of a
    stable descending sort. Features in {-1, 0, 1} over D = 3 make exact, heavily tied
    scores (|score| <= 3: exact in bf16 too), so the indices are exactly determined."""
    cand_on, dev = placement
    n, s, d, k = 300, 40, 3, 12
    cand = torch.randint(-1, 2, (n, d)).to(cand_on, dtype)
    seeds = torch.randint(-1, 2, (s, d)).to(dev, dtype)
    if nan == "cand-rows":
        cand[[5, n - 1], 1] = NAN  # two rows of NaN scores
    elif nan == "seeds":
        seeds[[7, 30], 0] = NAN  # two NaN scores in every row
    got = gdig_ext.score_stats(cand, seeds, k)
    want = oracle_scores(cand, seeds).sort(dim=1, descending=True, stable=True)
    assert torch.equal(got[4].cpu(), want.indices[:, :k].cpu()), "top-k indices out of order"
    assert _equal_with_nan(got[3], want.values[:, :k]), "top-k values differ from the sort"
    ref = reference.score_stats(cand, seeds, k)  # torch.topk: the same values
    assert _equal_with_nan(got[3], ref[3]), "top-k values differ from torch.topk's"
    if nan == "seeds":
        assert (got[4][:, :2].cpu() == torch.tensor([7, 30])).all()


# ---------------------------------------------------------------- TF32


@pytest.fixture
def caller_tf32():
    """TF32 switched on for fp32 matmuls, as a caller may have it (the fp32_precision
    setting where torch has it, else allow_tf32); restored afterwards. Returns a reader of
    the setting, to check that an op leaves it as it found it."""
    matmul = torch.backends.cuda.matmul
    name, on = (
        ("fp32_precision", "tf32") if hasattr(matmul, "fp32_precision") else ("allow_tf32", True)
    )
    old = getattr(matmul, name)
    setattr(matmul, name, on)
    yield lambda: getattr(matmul, name) == on
    setattr(matmul, name, old)


def _fp32_case(op: str, device: str) -> tuple:
    """fp32 inputs of ``op`` whose GEMMs reduce over 32 to 256 values: TF32 (10-bit
    mantissa) would put their relative error near 1e-3, 50 times REL_TOL[F32]."""
    if op == "score_stats":
        return rand(300, 256, dtype=F32, device=device), rand(64, 256, dtype=F32, device=device), 5
    acts, out_grads, mask = token_inputs(4, 32, 96, 64, F32, device=device)
    extra = {
        "project_grads": (
            rand(96, 16, dtype=F32, device=device),
            rand(64, 8, dtype=F32, device=device),
        ),
        "lowrank_benefit": (
            rand(8, 4, 64, dtype=F32, device=device),
            rand(8, 4, 96, dtype=F32, device=device),
        ),
        "ekfac_accumulate": (orthogonal(96, F32, device), orthogonal(64, F32, device)),
    }[op]
    return (acts, out_grads, mask, *extra)


def _fp32_result(impl, op: str, args: tuple) -> torch.Tensor:
    if op == "ekfac_accumulate":
        lam = torch.zeros(64, 96, device=args[0].device)
        getattr(impl, op)(*args, lam)
        return lam
    out = getattr(impl, op)(*args)
    return out[1] if op == "score_stats" else out  # score_stats: the mean of the scores


def _fp32_oracle(op: str, args: tuple) -> torch.Tensor:
    if op == "score_stats":
        return oracle_scores(args[0], args[1]).mean(dim=1)
    return {"project_grads": oracle_project, "lowrank_benefit": oracle_lowrank}.get(
        op, oracle_ekfac
    )(*args)


@pytest.mark.parametrize(
    "op", ["project_grads", "lowrank_benefit", "ekfac_accumulate", "score_stats"]
)
@pytest.mark.parametrize("device", DEVICES)
def test_fp32_ops_ignore_the_callers_tf32(device, op, caller_tf32):
    """The ops' fp32 GEMMs run in full fp32 with the caller's TF32 on (csrc/cuda: a scoped
    at::NoTF32Guard), and the caller's setting is as it was afterwards. On the CPU the
    setting does nothing, so there the case checks only that; on an Ampere or later GPU the
    reference (plain torch, which follows the setting) shows that TF32 is really on."""
    args = _fp32_case(op, device)
    got = _fp32_result(gdig_ext, op, args)
    assert caller_tf32(), "the op changed the caller's TF32 setting"
    want = _fp32_oracle(op, args)
    assert_close(got, want, REL_TOL[F32], f"{op} with the caller's TF32 on")
    if device == "cuda" and torch.cuda.get_device_capability()[0] >= 8:
        ref = _fp32_result(reference, op, args)
        err = rel_err(ref, want)
        # TF32 rounds inputs to 10 bits: about 4e-4 here, against about 1e-7 in full fp32.
        assert err > 2 * REL_TOL[F32], f"TF32 seems off: the reference's error is {err:.1e}"


# ---------------------------------------------------------------- layouts and edges


@pytest.mark.parametrize("b,t", [(0, 5), (3, 0)], ids=["B=0", "T=0"])
@pytest.mark.parametrize("device", DEVICES)
def test_token_ops_empty_batch_or_sequence(device, b, t):
    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device)

    acts, out_grads = randn(b, t, 6), randn(b, t, 4)
    mask = torch.ones(b, t, dtype=torch.bool, device=device)
    proj = gdig_ext.project_grads(acts, out_grads, mask, randn(6, 3), randn(4, 2))
    assert proj.device == acts.device and proj.shape == (b, 2, 3) and (proj == 0).all()
    benefit = gdig_ext.lowrank_benefit(acts, out_grads, mask, randn(5, 2, 4), randn(5, 2, 6))
    assert benefit.device == acts.device and benefit.shape == (b, 5) and (benefit == 0).all()
    lam = torch.full((4, 6), 2.0, device=device)
    gdig_ext.ekfac_accumulate(acts, out_grads, mask, randn(6, 6), randn(4, 4), lam)
    assert (lam == 2.0).all(), "nothing to accumulate must leave lam as it was"


@pytest.mark.parametrize("device", DEVICES)
def test_token_ops_accept_non_contiguous_inputs(device):
    """Strided views (slices, transposes) are read as what they are, not as dense memory:
    each op matches the oracle and its own result on contiguous copies."""
    acts, out_grads, mask = token_inputs(4, 20, 40, 30, F32, device=device)
    acts, mask = acts[:, ::2, :33], mask[:, ::2]  # [4, 10, 33], strided in T and d_in
    out_grads = out_grads.transpose(1, 2)[..., ::2].transpose(1, 2)  # [4, 10, 30]

    def r(*shape: int) -> torch.Tensor:
        return rand(*shape, dtype=F32, device=device)

    p_in, p_out = r(50, 33).T[:, ::10], r(6, 30).T  # [33, 5], [30, 6]
    u, v = r(30, 4, 5).permute(2, 1, 0), r(5, 33, 4).transpose(1, 2)  # [5, 4, 30], [5, 4, 33]
    q_a, q_s = r(33, 33).T, r(30, 60)[:, ::2]
    for x in (acts, out_grads, mask, p_in, p_out, u, v, q_a, q_s):
        assert not x.is_contiguous()
    tok = (acts, out_grads, mask)
    dense = tuple(x.contiguous() for x in tok)
    tol = REL_TOL[F32]

    got = gdig_ext.project_grads(*tok, p_in, p_out)
    assert_close(got, oracle_project(*tok, p_in, p_out), tol, "project_grads on views")
    want = gdig_ext.project_grads(*dense, p_in.contiguous(), p_out.contiguous())
    assert_close(got, want, tol, "project_grads on views vs contiguous")

    got = gdig_ext.lowrank_benefit(*tok, u, v)
    assert_close(got, oracle_lowrank(*tok, u, v), tol, "lowrank_benefit on views")
    want = gdig_ext.lowrank_benefit(*dense, u.contiguous(), v.contiguous())
    assert_close(got, want, tol, "lowrank_benefit on views vs contiguous")

    lam, lam_dense = torch.zeros(30, 33, device=device), torch.zeros(30, 33, device=device)
    gdig_ext.ekfac_accumulate(*tok, q_a, q_s, lam)
    assert_close(lam, oracle_ekfac(*tok, q_a, q_s), tol, "ekfac_accumulate on views")
    gdig_ext.ekfac_accumulate(*dense, q_a.contiguous(), q_s.contiguous(), lam_dense)
    assert_close(lam, lam_dense, tol, "ekfac_accumulate on views vs contiguous")


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_score_stats_accepts_non_contiguous_inputs(placement):
    cand_on, dev = placement
    cand = torch.randn(300, 40, device=cand_on)[:, ::2]  # [300, 20], stride 2 in D
    seeds = torch.randn(20, 7, device=dev).T  # [7, 20]
    assert not cand.is_contiguous() and not seeds.is_contiguous()
    got = gdig_ext.score_stats(cand, seeds, 4)
    check_score_stats(got, cand, seeds, 4, REL_TOL[F32])
    want = gdig_ext.score_stats(cand.contiguous(), seeds.contiguous(), 4)
    for name, x, y in zip(["mean", "min", "top-k values"], got[1:4], want[1:4], strict=True):
        assert_close(x, y, REL_TOL[F32], f"score_stats {name} on strided vs contiguous inputs")


@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_float32_mask_with_low_precision_inputs(device, dtype):
    """A 0/1 mask may come in any floating dtype, e.g. float32 from a collator."""
    acts, out_grads, mask = token_inputs(4, 10, 9, 7, dtype, "bool", device=device)
    p_in, p_out = rand(9, 3, dtype=dtype, device=device), rand(7, 2, dtype=dtype, device=device)
    assert torch.equal(
        gdig_ext.project_grads(acts, out_grads, mask.float(), p_in, p_out),
        gdig_ext.project_grads(acts, out_grads, mask, p_in, p_out),
    )


# ---------------------------------------------------------------- several tiles
# Per device, shapes that make every loop of that backend's kernel run more than once and
# end on a partial tile (see the module docstring).

# (B, T, d_in, d_out, k_in, k_out). CPU: 2^24 projected values per tile, one example holds
# T*(k_in+k_out) = 6.1M: tiles of 2, 2, 1. CUDA: 2^22, with T = 256 an example holds 1.5M:
# tiles of 2, 2, 1.
PROJECT_TILED = {"cpu": (5, 1024, 7, 5, 6000, 2), "cuda": (5, 256, 7, 5, 6000, 2)}
# (B, T, d_in, d_out, S, r). CPU: 2^22 values per tile, seeds per tile 2^22/(T*r*8) = 256 of
# S = 300, then examples per tile 2^22/(T*256*r) = 8 of B = 10. CUDA: 2^21 values for each
# of gu and av, seeds per tile 2^21/(T*r*8) = 8 of 300, examples per tile 2^21/(T*8*r) = 8
# of 20.
LOWRANK_TILED = {"cpu": (10, 64, 20, 33, 300, 32), "cuda": (20, 512, 64, 48, 300, 64)}
# (device, (B, T, d_in, d_out), dtype)
EKFAC_TILED = [
    # 2^22 values per tile: 1677 rows of d_out = 1700, one example at a time of B = 2.
    pytest.param("cpu", (2, 8, 2500, 1700), F32, id="cpu-float32"),
    pytest.param("cpu", (2, 8, 2500, 1700), BF16, id="cpu-bfloat16"),
    # One pass of all 3 examples; 2^22/(d_in*3) = 170 -> 168 rows (a multiple of 8) per
    # tile of 4100 rows: 24 full row tiles and one of 68.
    pytest.param("cuda", (3, 4, 8192, 4100), F32, id="cuda-row-tiles", marks=CUDA_MARKS),
    # 2^25/(T*(d_in+d_out)) = 32 examples per pass of B = 80 (32, 32, 16); 2^22/(32*512) =
    # 256 rows per tile: two row tiles per pass.
    pytest.param("cuda", (80, 1024, 512, 512), F32, id="cuda-example-tiles", marks=CUDA_MARKS),
]
# (N, S, D, k). CPU: 2^22/S = 2796 rows per tile of 7000. CUDA: 2^22/S = 1024 rows per tile
# of 20000 (19 full tiles and one of 544), cand on the GPU or streamed (the staging buffers
# would hold 2^22/D = 65536 rows).
SCORE_TILED = {"cpu": (7000, 1500, 16, 7), "cuda": (20_000, 4096, 64, 7)}


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_project_grads_several_tiles(device, dtype):
    b, t, d_in, d_out, k_in, k_out = PROJECT_TILED[device]
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, "bool", device=device)
    p_in = rand(d_in, k_in, dtype=dtype, scale=k_in**-0.5, device=device)
    p_out = rand(d_out, k_out, dtype=dtype, scale=k_out**-0.5, device=device)
    args = (acts, out_grads, mask, p_in, p_out)
    assert_close(gdig_ext.project_grads(*args), oracle_project(*args), REL_TOL[dtype], "tiled")


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_lowrank_benefit_several_tiles(device, dtype):
    b, t, d_in, d_out, s, r = LOWRANK_TILED[device]
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, "float", device=device)
    u = rand(s, r, d_out, dtype=dtype, scale=d_out**-0.5, device=device)
    v = rand(s, r, d_in, dtype=dtype, scale=d_in**-0.5, device=device)
    args = (acts, out_grads, mask, u, v)
    assert_close(gdig_ext.lowrank_benefit(*args), oracle_lowrank(*args), REL_TOL[dtype], "tiled")


@pytest.mark.parametrize("device", DEVICES)
def test_lowrank_benefit_more_examples_than_one_launch(device):
    # T = r = S = 1 puts all 70000 examples in one tile: on CUDA, past the 65535-block grid.y
    # limit of one launch.
    acts, out_grads, mask = token_inputs(70_000, 1, 3, 2, F32, device=device)
    u, v = rand(1, 1, 2, dtype=F32, device=device), rand(1, 1, 3, dtype=F32, device=device)
    args = (acts, out_grads, mask, u, v)
    assert_close(gdig_ext.lowrank_benefit(*args), oracle_lowrank(*args), REL_TOL[F32], "70000")


@pytest.mark.parametrize("device,shape,dtype", EKFAC_TILED)
def test_ekfac_accumulate_several_tiles(device, shape, dtype):
    b, t, d_in, d_out = shape
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, "bool", device=device)
    # Any square bases exercise the kernel; orthogonal ones this large are slow to make.
    q_a = rand(d_in, d_in, dtype=dtype, scale=d_in**-0.5, device=device)
    q_s = rand(d_out, d_out, dtype=dtype, scale=d_out**-0.5, device=device)
    lam = torch.ones(d_out, d_in, device=device)
    gdig_ext.ekfac_accumulate(acts, out_grads, mask, q_a, q_s, lam)
    # oracle_ekfac applies q to the tokens, so the float64 oracle stays cheap at this size.
    want = 1.0 + oracle_ekfac(acts, out_grads, mask, q_a, q_s)
    assert_close(lam, want, REL_TOL[dtype], "tiled")


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_score_stats_several_tiles(tmp_path, placement):
    """From a memory-mapped pool: read tile by tile on the CPU, streamed to the GPU, or
    moved to the GPU whole first."""
    cand_on, dev = placement
    n, s, d, k = SCORE_TILED[dev]
    cand = load_pool(tmp_path / "pool.npy", n, d).to(cand_on)
    seeds = rand(s, d, dtype=F32, device=dev)
    check_score_stats(gdig_ext.score_stats(cand, seeds, k), cand, seeds, k, REL_TOL[F32])


# ---------------------------------------------------------------- opcheck


def _opcheck_inputs(dtype: torch.dtype, mask_kind: str, device: str) -> dict[str, tuple]:
    acts, out_grads, mask = token_inputs(3, 6, 9, 5, dtype, mask_kind, device=device)

    def r(*shape: int) -> torch.Tensor:
        return rand(*shape, dtype=dtype, device=device)

    return {
        "project_grads": (acts, out_grads, mask, r(9, 4), r(5, 3)),
        "lowrank_benefit": (acts, out_grads, mask, r(4, 2, 5), r(4, 2, 9)),
        "score_stats": (r(11, 7), r(4, 7), 2),
        "ekfac_accumulate": (
            acts,
            out_grads,
            mask,
            orthogonal(9, dtype, device),
            orthogonal(5, dtype, device),
            torch.rand(5, 9, dtype=acc_dtype(dtype), device=device),
        ),
    }


OPS = ["project_grads", "lowrank_benefit", "score_stats", "ekfac_accumulate"]


# score_stats takes no mask, so it runs once per dtype.
OPCHECK_CASES = [(op, m) for op in OPS for m in MASKS if op != "score_stats" or m == "bool"]


@pytest.mark.parametrize("dtype", [F32, F64, BF16], ids=str)
@pytest.mark.parametrize("name,mask_kind", OPCHECK_CASES)
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, name, mask_kind, dtype):
    args = _opcheck_inputs(dtype, mask_kind, device)[name]
    torch.library.opcheck(getattr(torch.ops.gdig, name).default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_edge_shapes(device):
    op = torch.ops.gdig

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device)

    torch.library.opcheck(op.score_stats.default, (randn(0, 5), randn(3, 5), 3))
    torch.library.opcheck(op.score_stats.default, (randn(8, 5), randn(3, 5), 0))
    acts, out_grads, mask = token_inputs(1, 1, 4, 3, F32, "bool", device=device)
    torch.library.opcheck(
        op.lowrank_benefit.default, (acts, out_grads, mask, randn(1, 1, 3), randn(1, 1, 4))
    )


@pytest.mark.parametrize("device", ONLY_CUDA)
def test_opcheck_score_stats_streamed_cand(device):
    # Only the utils that accept inputs on two devices (the aot_dispatch ones do not).
    args = (torch.randn(11, 7), torch.randn(4, 7, device=device), 2)
    torch.library.opcheck(
        torch.ops.gdig.score_stats.default,
        args,
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


# ---------------------------------------------------------------- errors
# Each bad input raises RuntimeError whose message names the argument (csrc/checks.cpp);
# both backends run the same checks first, so each message is tested on every device.


def _good_token_args(op: str, dtype: torch.dtype = F32, device: str = "cpu") -> list:
    acts, out_grads, mask = token_inputs(2, 5, 6, 4, dtype, "bool", device=device)

    def r(*shape: int) -> torch.Tensor:
        return rand(*shape, dtype=dtype, device=device)

    extra = {
        "project_grads": [r(6, 3), r(4, 2)],
        "lowrank_benefit": [r(3, 2, 4), r(3, 2, 6)],
        "ekfac_accumulate": [
            r(6, 6),
            r(4, 4),
            torch.zeros(4, 6, dtype=acc_dtype(dtype), device=device),
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
@pytest.mark.parametrize("device", DEVICES)
def test_token_input_errors(device, op, arg, make, match):
    args = _good_token_args(op, device=device)
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
    ("ekfac_accumulate", 5, lambda a: a[5].new_zeros(6, 4).T, r"lam must be contiguous"),
]


@pytest.mark.parametrize("op,index,make,match", OP_ERRORS, ids=[m for *_, m in OP_ERRORS])
@pytest.mark.parametrize("device", DEVICES)
def test_op_specific_errors(device, op, index, make, match):
    args = _good_token_args(op, device=device)
    args[index] = make(args)
    with pytest.raises(RuntimeError, match=rf"{op}: {match}"):
        getattr(gdig_ext, op)(*args)


@pytest.mark.parametrize("device", DEVICES)
def test_ekfac_accumulate_float64_inputs_need_float64_lam(device):
    args = _good_token_args("ekfac_accumulate", F64, device)
    args[5] = torch.zeros(4, 6, dtype=F32, device=device)
    with pytest.raises(RuntimeError, match=r"lam must be float64 for float64 inputs"):
        gdig_ext.ekfac_accumulate(*args)


@pytest.mark.parametrize("device", DEVICES)
def test_ekfac_accumulate_error_leaves_lam_untouched(device):
    args = _good_token_args("ekfac_accumulate", device=device)
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
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_score_stats_errors(placement, make, match):
    cand_on, dev = placement
    cand, seeds = torch.randn(10, 6, device=cand_on), torch.randn(4, 6, device=dev)
    with pytest.raises(RuntimeError, match=rf"score_stats: {match}"):
        gdig_ext.score_stats(*make(cand, seeds))


# ---------------------------------------------------------------- mixed devices (CUDA)
# The dispatcher sends a call to the CUDA kernel when any input is on the GPU; only
# score_stats' cand may then stay on the CPU.

NAMES = {
    "project_grads": ["acts", "out_grads", "mask", "p_in", "p_out"],
    "lowrank_benefit": ["acts", "out_grads", "mask", "u", "v"],
    "ekfac_accumulate": ["acts", "out_grads", "mask", "q_a", "q_s", "lam"],
}
MIXED = [(op, i) for op, names in NAMES.items() for i in range(len(names))]


@pytest.mark.parametrize("op,index", MIXED, ids=[f"{op}-{NAMES[op][i]}" for op, i in MIXED])
@pytest.mark.parametrize("device", ONLY_CUDA)
def test_one_input_on_the_cpu_is_an_error(device, op, index):
    args = _good_token_args(op, device=device)
    args[index] = args[index].cpu()
    with pytest.raises(RuntimeError, match=rf"{op}: .*(is on cpu|on cuda:\d+ but .* is on cpu)"):
        getattr(gdig_ext, op)(*args)
    if op == "ekfac_accumulate" and index != 5:
        assert (args[5] == 0).all(), "a rejected call must leave lam untouched"


@pytest.mark.parametrize("device", ONLY_CUDA)
def test_score_stats_seeds_on_the_cpu_is_an_error(device):
    with pytest.raises(RuntimeError, match=r"score_stats: .*seeds on a CUDA device"):
        gdig_ext.score_stats(torch.randn(10, 6, device=device), torch.randn(4, 6), 2)
