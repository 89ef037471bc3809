"""CUDA tests of the compiled ops: each against a float64 oracle and the CPU kernel.

Skipped (with the reason) unless torch sees a GPU and gdig_ext was built with its CUDA
kernels (GDIG_CUDA=1 or auto with nvcc present). The oracle follows METHOD.md, not the
kernels: per-example gradients G_b = sum_t mask g_t a_t^T formed explicitly in float64
(on the GPU, so the large cases stay fast). Low-precision inputs are rounded first and
the oracle gets the same rounded values, so the bounds measure only the ops' own error.

Relative error is ||x - y|| / ||y|| over the whole output, oracle as y. The bounds are
those of the CPU tests (tests/test_ops.py): the error is dominated by rounding each
GEMM's output to the input dtype (bf16 ~4e-3, fp16 ~7e-4 per value), which cuBLAS and
the CPU share; fp32 assumes TF32 is off (torch's default), fp64 is plain rounding.
CUDA and CPU each sit within the bound of the oracle, so of each other within twice it.

Shapes under "several tiles" are derived from the GPU tile budget in
csrc/cuda/cuda_utils.cuh (kTileElems = 2^25 values) so that every loop of the CUDA
kernels runs more than once and ends on a partial tile; update them with the budget.
"""

from __future__ import annotations

import functools
import warnings

import helpers_ops
import numpy as np
import pytest
import torch
from helpers_ops import (
    BF16,
    DTYPES,
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
    oracle_lowrank,
    oracle_project,
)

try:
    import gdig_ext

    _BUILT_WITH_CUDA = gdig_ext.cuda_available()
    _WHY_NOT = "gdig_ext was built without its CUDA kernels (rebuild with GDIG_CUDA=1)"
except ImportError as exc:  # not built at all: nothing to test here
    gdig_ext = None
    _BUILT_WITH_CUDA = False
    _WHY_NOT = f"gdig_ext is not importable ({exc}); build it first"

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible"),
    pytest.mark.skipif(not _BUILT_WITH_CUDA, reason=_WHY_NOT),
]

REL_TOL_VS_CPU = {dt: 2 * tol for dt, tol in REL_TOL.items()}
CUDA = "cuda"
# Inputs are made on the GPU unless a test says otherwise.
rand = functools.partial(helpers_ops.rand, device=CUDA)
token_inputs = functools.partial(helpers_ops.token_inputs, device=CUDA)


def cpu(args: tuple) -> tuple:
    return tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args)


# ---------------------------------------------------------------- against oracle and CPU


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", range(len(TOKEN_SHAPES)))
def test_project_grads_cuda(case, dtype, mask_kind):
    b, t, d_in, d_out = TOKEN_SHAPES[case]
    k_in, k_out = PROJ_K[case]
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, mask_kind)
    p_in = rand(d_in, k_in, dtype=dtype, scale=k_in**-0.5)
    p_out = rand(d_out, k_out, dtype=dtype, scale=k_out**-0.5)
    args = (acts, out_grads, mask, p_in, p_out)

    got = gdig_ext.project_grads(*args)
    assert got.is_cuda and got.dtype == acc_dtype(dtype) and got.shape == (b, k_out, k_in)
    assert_close(got, oracle_project(*args), REL_TOL[dtype], "project_grads vs oracle")
    assert_close(got, gdig_ext.project_grads(*cpu(args)), REL_TOL_VS_CPU[dtype], "vs CPU")
    if b >= 3:
        assert (got[1] == 0).all(), "a fully padded example must give a zero gradient"


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", range(len(TOKEN_SHAPES)))
def test_lowrank_benefit_cuda(case, dtype, mask_kind):
    b, t, d_in, d_out = TOKEN_SHAPES[case]
    s, r = LOWRANK_SR[case]
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, mask_kind)
    u = rand(s, r, d_out, dtype=dtype, scale=d_out**-0.5)
    v = rand(s, r, d_in, dtype=dtype, scale=d_in**-0.5)
    args = (acts, out_grads, mask, u, v)

    got = gdig_ext.lowrank_benefit(*args)
    assert got.is_cuda and got.dtype == acc_dtype(dtype) and got.shape == (b, s)
    assert_close(got, oracle_lowrank(*args), REL_TOL[dtype], "lowrank_benefit vs oracle")
    assert_close(got, gdig_ext.lowrank_benefit(*cpu(args)), REL_TOL_VS_CPU[dtype], "vs CPU")
    if b >= 3:
        assert (got[1] == 0).all(), "a fully padded example must have zero benefit"


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", range(len(TOKEN_SHAPES)))
def test_ekfac_accumulate_cuda(case, dtype, mask_kind):
    b, t, d_in, d_out = TOKEN_SHAPES[case]
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, mask_kind)
    q_a = torch.linalg.qr(torch.randn(d_in, d_in, dtype=F64, device=CUDA))[0].to(dtype)
    q_s = torch.linalg.qr(torch.randn(d_out, d_out, dtype=F64, device=CUDA))[0].to(dtype)
    # Pre-filled, of the order of one call's contribution: an op that overwrites lam fails.
    lam0 = torch.rand(d_out, d_in, dtype=acc_dtype(dtype), device=CUDA) * t * b + 1.0
    args = (acts, out_grads, mask, q_a, q_s)

    lam = lam0.clone()
    ptr = lam.data_ptr()
    assert gdig_ext.ekfac_accumulate(*args, lam) is None
    assert lam.data_ptr() == ptr and lam.is_cuda and lam.dtype == acc_dtype(dtype)
    increment = oracle_ekfac(*args)
    assert_close(lam, lam0.to(F64) + increment, REL_TOL[dtype], "ekfac_accumulate vs oracle")
    # The increment alone, so that a large lam0 cannot hide an error in it.
    inc_tol = 2 * REL_TOL[dtype] if dtype != F64 else 1e-9
    assert_close(lam.to(F64) - lam0.to(F64), increment, inc_tol, "increment vs oracle")
    lam_cpu = lam0.cpu()
    gdig_ext.ekfac_accumulate(*cpu(args), lam_cpu)
    assert_close(lam, lam_cpu, REL_TOL_VS_CPU[dtype], "ekfac_accumulate vs CPU")


# (N, S, D, k): single everything, odd sizes, k = S.
SCORE_SHAPES = [(1, 1, 1, 1), (37, 5, 33, 3), (300, 77, 65, 10), (3000, 1500, 16, 20), (9, 9, 8, 9)]


@pytest.mark.parametrize("cand_on", ["cuda", "cpu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SCORE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_score_stats_cuda(shape, dtype, cand_on):
    n, s, d, k = shape
    cand, seeds = rand(n, d, dtype=dtype, device=cand_on), rand(s, d, dtype=dtype)
    got = gdig_ext.score_stats(cand, seeds, k)
    check_score_stats(got, cand, seeds, k, REL_TOL[dtype])
    on_cpu = gdig_ext.score_stats(cand.cpu(), seeds.cpu(), k)
    for name, x, y in zip(["mean", "min", "top-k values"], got[1:4], on_cpu[1:4], strict=True):
        assert_close(x, y, REL_TOL_VS_CPU[dtype], f"score_stats {name} vs CPU")


def test_score_stats_n_pos_exact_and_empty_pool():
    # Small integers plus a column giving every score a +0.5: exact in float32, never 0.
    cand = torch.randint(-2, 3, (500, 17), device=CUDA).float()
    seeds = torch.randint(-2, 3, (40, 17), device=CUDA).float()
    cand[:, -1], seeds[:, -1] = 1.0, 0.5
    n_pos, _, mn, _, _ = gdig_ext.score_stats(cand, seeds, 4)
    sc = cand.double() @ seeds.double().T
    assert torch.equal(n_pos, (sc > 0).sum(dim=1))
    assert torch.equal(mn.double(), sc.amin(dim=1))
    empty = gdig_ext.score_stats(torch.empty(0, 17), seeds, 3)
    check_score_stats(empty, torch.empty(0, 17), seeds, 3, REL_TOL[F32])


def test_score_stats_memmapped_pool(tmp_path):
    """A pool on disk, memory-mapped on the CPU, streamed against seeds on the GPU."""
    n, s, d, k = 5000, 40, 48, 5
    path = tmp_path / "pool.npy"
    np.save(path, np.random.default_rng(0).standard_normal((n, d), dtype=np.float32))
    arr = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only array: the op only reads
        cand = torch.from_numpy(arr)
    seeds = rand(s, d, dtype=F32)
    got = gdig_ext.score_stats(cand, seeds, k)
    check_score_stats(got, cand, seeds, k, REL_TOL[F32])
    on_gpu = gdig_ext.score_stats(cand.to(CUDA), seeds, k)
    for x, y in zip(got, on_gpu, strict=True):
        assert torch.equal(x, y), "a streamed pool must score exactly as the same pool on the GPU"


# ---------------------------------------------------------------- several tiles


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_project_grads_several_tiles(dtype):
    # One example holds T*(k_in+k_out) = 12.3M projected values: tiles of 2, 2, 1 examples.
    b, t, d_in, d_out, k_in, k_out = 5, 2048, 7, 5, 6000, 2
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype)
    p_in = rand(d_in, k_in, dtype=dtype, scale=k_in**-0.5)
    p_out = rand(d_out, k_out, dtype=dtype, scale=k_out**-0.5)
    args = (acts, out_grads, mask, p_in, p_out)
    assert_close(gdig_ext.project_grads(*args), oracle_project(*args), REL_TOL[dtype], "tiled")


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_lowrank_benefit_several_tiles(dtype):
    # Seeds per tile 2^25/(T*r*8) = 128 of S = 300; examples per tile 2^25/(T*128*r) = 8 of 20.
    b, t, d_in, d_out, s, r = 20, 512, 64, 48, 300, 64
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, "float")
    u = rand(s, r, d_out, dtype=dtype, scale=d_out**-0.5)
    v = rand(s, r, d_in, dtype=dtype, scale=d_in**-0.5)
    args = (acts, out_grads, mask, u, v)
    assert_close(gdig_ext.lowrank_benefit(*args), oracle_lowrank(*args), REL_TOL[dtype], "tiled")


def test_lowrank_benefit_more_examples_than_one_launch():
    # T = r = S = 1 puts all 70000 examples in one tile: past the 65535-block grid.y limit.
    acts, out_grads, mask = token_inputs(70_000, 1, 3, 2, F32)
    u, v = rand(1, 1, 2, dtype=F32), rand(1, 1, 3, dtype=F32)
    args = (acts, out_grads, mask, u, v)
    assert_close(gdig_ext.lowrank_benefit(*args), oracle_lowrank(*args), REL_TOL[F32], "70000")


@pytest.mark.parametrize(
    "shape",
    [
        (3, 4, 8192, 4100),  # 2^25/d_in = 4096 rows per tile of 4100, one example at a time
        (250, 64, 512, 512),  # all rows; 2^25/(512*512 + 64*1024) = 102 examples per tile
    ],
    ids=["row-tiles", "example-tiles"],
)
def test_ekfac_accumulate_several_tiles(shape):
    b, t, d_in, d_out = shape
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, F32)
    # Any square bases exercise the kernel; orthogonal ones this large are slow to make.
    q_a = rand(d_in, d_in, dtype=F32, scale=d_in**-0.5)
    q_s = rand(d_out, d_out, dtype=F32, scale=d_out**-0.5)
    lam = torch.ones(d_out, d_in, device=CUDA)
    gdig_ext.ekfac_accumulate(acts, out_grads, mask, q_a, q_s, lam)
    want = 1.0 + oracle_ekfac(acts, out_grads, mask, q_a, q_s)
    assert_close(lam, want, REL_TOL[F32], "tiled")


@pytest.mark.parametrize("cand_on", ["memmap", "cuda"])
def test_score_stats_several_tiles(tmp_path, cand_on):
    # Rows per tile of N = 20000: 2^25/(S+D) = 8065 when streamed from a memory-mapped
    # file (the tile holds a copy of the candidates), 2^25/S = 8192 when cand is on the GPU.
    n, s, d, k = 20_000, 4096, 64, 7
    path = tmp_path / "pool.npy"
    np.save(path, np.random.default_rng(1).standard_normal((n, d), dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cand = torch.from_numpy(np.load(path, mmap_mode="r"))
    if cand_on == "cuda":
        cand = cand.to(CUDA)
    seeds = rand(s, d, dtype=F32)
    check_score_stats(gdig_ext.score_stats(cand, seeds, k), cand, seeds, k, REL_TOL[F32])


# ---------------------------------------------------------------- layouts


def test_non_contiguous_inputs():
    """Views (strided slices, transposes) are read correctly, not as if they were dense."""
    acts, out_grads, mask = token_inputs(4, 20, 40, 30, F32)
    acts, out_grads, mask = acts[:, ::2, :33], out_grads.transpose(1, 2)[..., ::2], mask[:, ::2]
    out_grads = out_grads.transpose(1, 2)
    p_in, p_out = rand(50, 33, dtype=F32).T, rand(30, 6, dtype=F32)
    u, v = rand(5, 4, 30, dtype=F32), rand(5, 33, 4, dtype=F32).transpose(1, 2)
    for x in (acts, out_grads, mask, p_in, v):
        assert not x.is_contiguous()
    tok = (acts, out_grads, mask)
    assert_close(
        gdig_ext.project_grads(*tok, p_in, p_out),
        oracle_project(*tok, p_in, p_out),
        REL_TOL[F32],
        "project_grads on views",
    )
    assert_close(
        gdig_ext.lowrank_benefit(*tok, u, v),
        oracle_lowrank(*tok, u, v),
        REL_TOL[F32],
        "lowrank_benefit on views",
    )
    lam = torch.zeros(30, 33, device=CUDA)
    q_a, q_s = rand(40, 33, dtype=F32)[:33], rand(30, 30, dtype=F32).T
    gdig_ext.ekfac_accumulate(*tok, q_a, q_s, lam)
    assert_close(lam, oracle_ekfac(*tok, q_a, q_s), REL_TOL[F32], "ekfac_accumulate on views")
    cand, seeds = rand(100, 66, dtype=F32)[:, ::2], rand(33, 7, dtype=F32).T
    check_score_stats(gdig_ext.score_stats(cand, seeds, 3), cand, seeds, 3, REL_TOL[F32])
    check_score_stats(gdig_ext.score_stats(cand.cpu(), seeds, 3), cand, seeds, 3, REL_TOL[F32])


# ---------------------------------------------------------------- opcheck


def _opcheck_inputs(dtype: torch.dtype, mask_kind: str) -> dict[str, tuple]:
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
            rand(9, 9, dtype=dtype),
            rand(5, 5, dtype=dtype),
            torch.rand(5, 9, dtype=acc_dtype(dtype), device=CUDA),
        ),
    }


OPS = ["project_grads", "lowrank_benefit", "score_stats", "ekfac_accumulate"]


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("name", OPS)
def test_opcheck_cuda(name, dtype, mask_kind):
    if name == "score_stats" and mask_kind == "float":
        pytest.skip("score_stats takes no mask")
    args = _opcheck_inputs(dtype, mask_kind)[name]
    torch.library.opcheck(getattr(torch.ops.gdig, name).default, args)


def test_opcheck_score_stats_streamed_cand():
    args = (torch.randn(11, 7), torch.randn(4, 7, device=CUDA), 2)
    torch.library.opcheck(
        torch.ops.gdig.score_stats.default,
        args,
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


# ---------------------------------------------------------------- mixed devices


def _token_args(op: str) -> list:
    acts, out_grads, mask = token_inputs(2, 5, 6, 4, F32)
    extra = {
        "project_grads": [rand(6, 3, dtype=F32), rand(4, 2, dtype=F32)],
        "lowrank_benefit": [rand(3, 2, 4, dtype=F32), rand(3, 2, 6, dtype=F32)],
        "ekfac_accumulate": [
            rand(6, 6, dtype=F32),
            rand(4, 4, dtype=F32),
            torch.zeros(4, 6, device=CUDA),
        ],
    }[op]
    return [acts, out_grads, mask, *extra]


NAMES = {
    "project_grads": ["acts", "out_grads", "mask", "p_in", "p_out"],
    "lowrank_benefit": ["acts", "out_grads", "mask", "u", "v"],
    "ekfac_accumulate": ["acts", "out_grads", "mask", "q_a", "q_s", "lam"],
}
MIXED = [(op, i) for op, names in NAMES.items() for i in range(len(names))]


@pytest.mark.parametrize("op,index", MIXED, ids=[f"{op}-{NAMES[op][i]}" for op, i in MIXED])
def test_one_input_on_the_cpu_is_an_error(op, index):
    args = _token_args(op)
    args[index] = args[index].cpu()
    with pytest.raises(RuntimeError, match=rf"{op}: .*(is on cpu|on cuda:\d+ but .* is on cpu)"):
        getattr(gdig_ext, op)(*args)
    if op == "ekfac_accumulate" and index != 5:
        assert (args[5] == 0).all(), "a rejected call must leave lam untouched"


def test_score_stats_seeds_on_the_cpu_is_an_error():
    with pytest.raises(RuntimeError, match=r"score_stats: .*seeds on a CUDA device"):
        gdig_ext.score_stats(rand(10, 6, dtype=F32), torch.randn(4, 6), 2)


def test_token_checks_run_on_cuda_too():
    """The CUDA kernels share the CPU's validation: a bad shape names the argument."""
    args = _token_args("lowrank_benefit")
    args[4] = args[4][:, :, :5]
    with pytest.raises(RuntimeError, match=r"lowrank_benefit: v must have shape \[S,r,d_in\]"):
        gdig_ext.lowrank_benefit(*args)
    args = _token_args("ekfac_accumulate")
    args[5] = args[5].T
    with pytest.raises(RuntimeError, match=r"ekfac_accumulate: lam must have shape"):
        gdig_ext.ekfac_accumulate(*args)
