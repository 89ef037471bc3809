"""CUDA-only cases of the compiled ops that tests/test_ops.py does not reach.

Every test here needs a GPU and a build with the CUDA kernels; both conditions skip it
otherwise (the module's ``pytestmark``). What is covered, per op:

- zero sizes: k = 0 (projection width, rank, seeds, top-k), B = 0 (N = 0) and T = 0 (D = 0),
  compared with the reference and with the CPU kernel;
- NaN inputs: the GPU result is NaN exactly where the CPU kernel's is (the CPU kernel is the
  specification: lowrank_benefit skips padded tokens, so a NaN there does not reach its
  output, unlike the reference's), and close to it elsewhere;
- a non-default stream: inputs are made on a side stream that is held busy first, so an op
  that ran on another stream than the current one would read them before they exist;
- a non-default device (only with two GPUs): inputs on cuda:1 while cuda:0 is current;
- score_stats with a CPU ``cand`` spanning several staging tiles, so that the double
  buffering (two pinned buffers, a copy stream, events) runs through both buffers many times;
- lowrank_benefit with ranks that take the vectorised loads and ranks that do not;
- ekfac_accumulate with bf16/fp16 inputs (tensor-core GEMMs, fp32 tiles) against the float64
  oracle, over several row and example tiles, with a d_out whose rows are not 16-byte
  aligned, and fp16 rotated entries beyond fp16's range;
- score_stats when the copy stream would be the caller's own (pool) stream, with N x D past
  2^31 (on the GPU and streamed), and with a pinned pool, contiguous (uploaded directly) or
  strided (staged);
- every op at the pipeline's real shapes (SmolLM2-135M's down_proj, S = 256, r = 32);
- two threads calling the ops at once, each on its own stream.

Tile sizes quoted below come from csrc/cuda: kTileElems = 2^22 values per L2-sized tile,
kInputElems = 2^25 rotated tokens per pass of ekfac_accumulate, kStageElems = 2^22 values
per pinned staging buffer (score_stats). If those change, these tests still pass but may
stop covering the tile edges.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers_ops import (
    BF16,
    F16,
    F32,
    F64,
    REL_TOL,
    acc_dtype,
    assert_close,
    assert_close_nan,
    check_score_stats,
    oracle_ekfac,
    oracle_lowrank,
    oracle_project,
    orthogonal,
    rand,
    token_inputs,
)

import gdig_ext
from gdig_ext import reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible"),
    pytest.mark.skipif(
        not gdig_ext.cuda_available(),
        reason="gdig_ext was built without its CUDA kernels (rebuild with GDIG_CUDA=1)",
    ),
]

REL_TOL_VS_REF = {dt: 2 * tol for dt, tol in REL_TOL.items()}
NAN = float("nan")
TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
# score_stats: cand on the GPU, or on the CPU and streamed to seeds on the GPU.
CAND_ON = ["cuda", "cpu"]
CAND_IDS = ["cuda", "cuda-streamed"]
# Rows of a streamed score_stats tile at D = 2048 (and S <= 2048): the pinned staging
# buffers hold 2^22 values each, i.e. 2048 rows (the scores of a tile, 2^22 / S, more).
STAGE_ROWS_AT_D2048 = 2048


def on_cpu(args) -> tuple:
    return tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args)


def token_args(op: str, b: int, t: int, dtype: torch.dtype, device: str, **dims) -> tuple:
    """Inputs of a token op: d_in = 9, d_out = 7 unless given; k_in/k_out, S/r as given."""
    d_in, d_out = dims.get("d_in", 9), dims.get("d_out", 7)
    if b and t:
        acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, "bool", device=device)
    else:  # token_inputs needs a row and a token
        acts = torch.randn(b, t, d_in, device=device).to(dtype)
        out_grads = torch.randn(b, t, d_out, device=device).to(dtype)
        mask = torch.ones(b, t, dtype=torch.bool, device=device)

    def r(*shape: int) -> torch.Tensor:
        return rand(*shape, dtype=dtype, device=device)

    if op == "project_grads":
        return (acts, out_grads, mask, r(d_in, dims.get("k_in", 3)), r(d_out, dims.get("k_out", 2)))
    if op == "lowrank_benefit":
        s, rank = dims.get("S", 4), dims.get("r", 3)
        return (acts, out_grads, mask, r(s, rank, d_out), r(s, rank, d_in))
    lam = torch.rand(d_out, d_in, dtype=acc_dtype(dtype), device=device) + 1.0
    return (
        acts,
        out_grads,
        mask,
        orthogonal(d_in, dtype, device),
        orthogonal(d_out, dtype, device),
        lam,
    )


def run_op(op: str, impl, args: tuple) -> torch.Tensor:
    """The op's result: its output, or lam after accumulating into a copy of it."""
    if op == "ekfac_accumulate":
        lam = args[5].clone()
        getattr(impl, op)(*args[:5], lam)
        return lam
    return getattr(impl, op)(*args)


# ---------------------------------------------------------------- zero sizes

# (op, case, token_args keywords): B = 0, T = 0, and each op's own "k = 0".
ZERO_CASES = [
    ("project_grads", "B=0", {"b": 0, "t": 5}),
    ("project_grads", "T=0", {"b": 3, "t": 0}),
    ("project_grads", "k_in=0", {"b": 3, "t": 5, "k_in": 0}),
    ("project_grads", "k_out=0", {"b": 3, "t": 5, "k_out": 0}),
    ("lowrank_benefit", "B=0", {"b": 0, "t": 5}),
    ("lowrank_benefit", "T=0", {"b": 3, "t": 0}),
    ("lowrank_benefit", "r=0", {"b": 3, "t": 5, "r": 0}),
    ("lowrank_benefit", "S=0", {"b": 3, "t": 5, "S": 0}),
    ("ekfac_accumulate", "B=0", {"b": 0, "t": 5}),
    ("ekfac_accumulate", "T=0", {"b": 3, "t": 0}),
    ("ekfac_accumulate", "d_in=0", {"b": 3, "t": 5, "d_in": 0}),
    ("ekfac_accumulate", "d_out=0", {"b": 3, "t": 5, "d_out": 0}),
]


@pytest.mark.parametrize("dtype", [F32, BF16, F64], ids=str)
@pytest.mark.parametrize("op,case,dims", ZERO_CASES, ids=[f"{o}-{c}" for o, c, _ in ZERO_CASES])
def test_token_ops_zero_sizes(op, case, dims, dtype):
    dims = dict(dims)
    args = token_args(op, dims.pop("b"), dims.pop("t"), dtype, "cuda", **dims)
    got = run_op(op, gdig_ext, args)
    ref = run_op(op, reference, args)
    cpu = run_op(op, gdig_ext, on_cpu(args))
    assert got.device == args[0].device, f"{op} {case}: result on {got.device}"
    for who, other in [("reference", ref), ("the CPU kernel", cpu)]:
        assert got.shape == other.shape and got.dtype == other.dtype, f"{op} {case} vs {who}"
        assert torch.equal(got.cpu(), other.cpu()), f"{op} {case}: values differ from {who}"
    if op == "ekfac_accumulate":
        assert torch.equal(got, args[5]), "nothing to accumulate must leave lam as it was"
    else:
        assert (got == 0).all(), f"{op} {case}: an empty sum must be 0"


# (case, N, D, k) for score_stats: no top-k, no candidate, no feature.
SCORE_ZERO = [("k=0", 40, 16, 0), ("N=0", 0, 16, 3), ("D=0", 40, 0, 3), ("N=0,k=0", 0, 16, 0)]


@pytest.mark.parametrize("dtype", [F32, BF16, F64], ids=str)
@pytest.mark.parametrize("case,n,d,k", SCORE_ZERO, ids=[c for c, *_ in SCORE_ZERO])
@pytest.mark.parametrize("cand_on", CAND_ON, ids=CAND_IDS)
def test_score_stats_zero_sizes(cand_on, case, n, d, k, dtype):
    cand = rand(n, d, dtype=dtype, device=cand_on)
    seeds = rand(6, d, dtype=dtype, device="cuda")
    got = gdig_ext.score_stats(cand, seeds, k)
    check_score_stats(got, cand, seeds, k, REL_TOL[dtype], exact_npos=(d == 0))
    for who, other in [
        ("reference", reference.score_stats(cand, seeds, k)),
        ("the CPU kernel", gdig_ext.score_stats(cand.cpu(), seeds.cpu(), k)),
    ]:
        names = ["n_pos", "mean", "min", "topk_val", "topk_idx"]
        for name, x, y in zip(names, got, other, strict=True):
            assert x.shape == y.shape and x.dtype == y.dtype, f"{case}: {name} vs {who}"
        # With D = 0 every score is 0: the statistics are exact, the top-k indices are any
        # k distinct seeds (ties), which check_score_stats has checked.
        for name, x, y in zip(names[:4], got[:4], other[:4], strict=True):
            if d == 0:
                assert torch.equal(x.cpu(), y.cpu()), f"{case}: {name} differs from {who}"
            elif x.numel():
                assert_close(x, y, REL_TOL_VS_REF[dtype], f"{case}: {name} vs {who}")


# ---------------------------------------------------------------- NaN inputs

# Where the NaN goes: a real token (row 0 is never padded), a padded token (row 1 of
# token_inputs is fully padded), or a parameter (p_in, u, q_a).
NAN_WHERE = ["valid-acts", "valid-out_grads", "padded-acts", "padded-out_grads", "param"]
NAN_OPS = ["project_grads", "lowrank_benefit", "ekfac_accumulate"]


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("where", NAN_WHERE)
@pytest.mark.parametrize("op", NAN_OPS)
def test_token_ops_nan_inputs_follow_the_cpu_kernel(op, where, dtype):
    dims = {"d_in": 33, "d_out": 20, "k_in": 5, "k_out": 4, "S": 6, "r": 8}
    args = list(token_args(op, 5, 9, dtype, "cuda", **dims))
    assert not args[2][1].any() and args[2][0].all()  # row 1 padded, row 0 full
    if where == "valid-acts":
        args[0][0, 3, 7] = NAN
    elif where == "valid-out_grads":
        args[1][0, 2, 1] = NAN
    elif where == "padded-acts":
        args[0][1, 4, 2] = NAN
    elif where == "padded-out_grads":
        args[1][1, 0, 5] = NAN
    else:
        args[3][0, 0] = NAN
    got = run_op(op, gdig_ext, tuple(args))
    cpu = run_op(op, gdig_ext, on_cpu(args))
    if where.startswith("valid") or where == "param":
        assert cpu.isnan().any(), "the NaN must reach the CPU kernel's result"
    # NaN exactly where the CPU kernel has it, within twice the bound elsewhere.
    assert_close_nan(got, cpu, REL_TOL_VS_REF[dtype], f"{op} with NaN in {where}")


# ---------------------------------------------------------------- non-default stream

# Cycles the side stream spins before its inputs exist (tens of ms): an op queued on any
# other stream would read them first. torch.cuda._sleep is private; without it the stream
# tests still compare results, they just cannot catch an op on the wrong stream.
SLEEP_CYCLES = 50_000_000


def on_side_stream(base: tuple, run):
    """run(inputs) on a fresh stream, with inputs copied from ``base`` on that stream after
    it has been held busy; returns the result once the current stream has waited for it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())  # base was made on the current stream
    with torch.cuda.stream(side):
        if hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(SLEEP_CYCLES)
        args = tuple(a.clone() if isinstance(a, torch.Tensor) and a.is_cuda else a for a in base)
        out = run(args)
    torch.cuda.current_stream().wait_stream(side)
    return out


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("op", NAN_OPS)
def test_token_ops_on_a_side_stream(op, dtype):
    base = token_args(op, 6, 40, dtype, "cuda", d_in=64, d_out=48, k_in=8, k_out=8, S=5, r=16)
    got = on_side_stream(base, lambda args: run_op(op, gdig_ext, args))
    want = run_op(op, reference, base)
    assert_close(got, want, REL_TOL_VS_REF[dtype], f"{op} on a side stream vs reference")


@pytest.mark.parametrize("cand_on", CAND_ON, ids=CAND_IDS)
def test_score_stats_on_a_side_stream(cand_on):
    # Streamed, D = 2048 gives tiles of 2048 rows: 3 tiles through the staging buffers.
    n, s, d, k = 5000, 64, 2048, 5
    cand = rand(n, d, dtype=F32, device=cand_on)
    seeds = rand(s, d, dtype=F32, device="cuda")
    got = on_side_stream((cand, seeds), lambda args: gdig_ext.score_stats(*args, k))
    check_score_stats(got, cand, seeds, k, REL_TOL[F32])
    want = reference.score_stats(cand, seeds, k)
    for name, x, y in zip(["mean", "min", "top-k values"], got[1:4], want[1:4], strict=True):
        assert_close(x, y, REL_TOL_VS_REF[F32], f"score_stats {name} on a side stream")


# ---------------------------------------------------------------- non-default device


@TWO_GPUS
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("op", NAN_OPS)
def test_token_ops_on_the_second_device(op, dtype):
    with torch.cuda.device(0):  # cuda:0 is current; the inputs live on cuda:1
        args = token_args(op, 5, 17, dtype, "cuda:1", d_in=33, d_out=20, S=6, r=8)
        got = run_op(op, gdig_ext, args)
        want = run_op(op, reference, args)
        assert got.device == torch.device("cuda:1"), f"{op}: result on {got.device}"
        assert_close(got, want, REL_TOL_VS_REF[dtype], f"{op} on cuda:1 vs reference")


@TWO_GPUS
@pytest.mark.parametrize("cand_on", ["cuda:1", "cpu"], ids=CAND_IDS)
def test_score_stats_on_the_second_device(cand_on):
    n, s, d, k = 5000, 64, 2048, 5
    with torch.cuda.device(0):
        cand = rand(n, d, dtype=F32, device=cand_on)
        seeds = rand(s, d, dtype=F32, device="cuda:1")
        got = gdig_ext.score_stats(cand, seeds, k)
        check_score_stats(got, cand, seeds, k, REL_TOL[F32])  # also: outputs on cuda:1


# ---------------------------------------------------------------- score_stats, streamed


def memmapped(path, x: torch.Tensor) -> torch.Tensor:
    """``x`` saved with np.save and memory-mapped back read-only, as the pipeline reads pools."""
    np.save(path, x.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only array: the op only reads it
        return torch.from_numpy(np.load(path, mmap_mode="r"))


# N around the staging tile of 2048 rows: one row short, exactly one, one over, and
# several tiles ending on a partial one (both buffers used three times).
STREAM_N = [STAGE_ROWS_AT_D2048 - 1, STAGE_ROWS_AT_D2048, STAGE_ROWS_AT_D2048 + 1, 12_345]


@pytest.mark.parametrize("dtype", [F32, BF16, F64], ids=str)
@pytest.mark.parametrize("n", STREAM_N)
def test_score_stats_streamed_several_tiles(tmp_path, n, dtype):
    s, d, k = 96, 2048, 7
    cand = rand(n, d, dtype=dtype)
    if dtype == F32:
        cand = memmapped(tmp_path / "pool.npy", cand)
    seeds = rand(s, d, dtype=dtype, device="cuda")
    got = gdig_ext.score_stats(cand, seeds, k)
    check_score_stats(got, cand, seeds, k, REL_TOL[dtype])
    others = [
        ("reference", reference.score_stats(cand, seeds, k)),
        ("cand on the GPU", gdig_ext.score_stats(cand.to("cuda"), seeds, k)),
        ("the CPU kernel", gdig_ext.score_stats(cand, seeds.cpu(), k)),
    ]
    for who, other in others:
        for name, x, y in zip(["mean", "min", "top-k values"], got[1:4], other[1:4], strict=True):
            assert_close(x, y, REL_TOL_VS_REF[dtype], f"streamed score_stats {name} vs {who}")


def test_score_stats_streamed_exact_on_half_integers():
    """Scores that are exact in float32 (small integers plus 0.5): streaming through the
    staging buffers must give exactly what the same pool on the GPU gives."""
    n, s, d, k = 9000, 50, 2047, 6  # D + 1 = 2048 columns: 2048 rows a tile, 5 tiles
    cand = torch.randint(-2, 3, (n, d + 1)).float()
    seeds = torch.randint(-2, 3, (s, d + 1)).float()
    cand[:, -1], seeds[:, -1] = 1.0, 0.5
    seeds = seeds.cuda()
    got = gdig_ext.score_stats(cand, seeds, k)
    want = gdig_ext.score_stats(cand.cuda(), seeds, k)
    check_score_stats(got, cand, seeds, k, REL_TOL[F32], exact_npos=True)
    for name, x, y in zip(["n_pos", "mean", "min", "top-k values"], got[:4], want[:4], strict=True):
        assert torch.equal(x, y), f"streamed {name} differs from the same pool on the GPU"


def test_score_stats_streamed_nan_rows_in_several_tiles():
    """NaN candidates at both ends of tiles, in both staging buffers."""
    n, s, d, k = 7000, 33, 2048, 4
    cand, seeds = rand(n, d, dtype=F32), rand(s, d, dtype=F32, device="cuda")
    t = STAGE_ROWS_AT_D2048
    nan_rows = [0, t - 1, t, 2 * t + 5, 3 * t - 1, n - 1]
    cand[nan_rows, 11] = NAN
    got = gdig_ext.score_stats(cand, seeds, k)
    check_score_stats(got, cand, seeds, k, REL_TOL[F32])
    cpu = gdig_ext.score_stats(cand, seeds.cpu(), k)
    want = torch.zeros(n, dtype=torch.bool)
    want[nan_rows] = True
    assert torch.equal(got[1].isnan().cpu(), want) and torch.equal(got[2].isnan().cpu(), want)
    for name, x, y in zip(["mean", "min", "top-k values"], got[1:4], cpu[1:4], strict=True):
        assert_close_nan(x, y, REL_TOL_VS_REF[F32], f"streamed NaN rows: {name} vs CPU kernel")


def test_score_stats_streamed_strided_memmapped_pool(tmp_path):
    """Every other column of a memory-mapped pool: each tile is gathered on the CPU."""
    n, s, d, k = 6000, 40, 4096, 5
    cand = memmapped(tmp_path / "pool.npy", torch.randn(n, d))[:, ::2]  # [6000, 2048]
    assert not cand.is_contiguous()
    seeds = rand(s, d // 2, dtype=F32, device="cuda")
    got = gdig_ext.score_stats(cand, seeds, k)
    check_score_stats(got, cand, seeds, k, REL_TOL[F32])
    dense = gdig_ext.score_stats(cand.contiguous(), seeds, k)
    for name, x, y in zip(
        ["n_pos", "mean", "min", "top-k values"], got[:4], dense[:4], strict=True
    ):
        assert torch.equal(x, y), f"strided pool: {name} differs from its contiguous copy"


def test_score_stats_streamed_back_to_back_calls():
    """Two streamed calls with no synchronisation between them, each pool overwritten right
    after its call: the second call's staging buffers may be the first's, freed blocks of
    the caching host allocator, which must not be handed out while a copy still reads them."""
    n, s, d, k = 7000, 64, 2048, 5
    pools = [torch.randn(n, d).pin_memory(), torch.randn(n, d)]
    kept = [p.clone() for p in pools]
    seeds = rand(s, d, dtype=F32, device="cuda")
    outs = []
    for pool in pools:
        outs.append(gdig_ext.score_stats(pool, seeds, k))
        pool.fill_(NAN)
    for out, pool in zip(outs, kept, strict=True):
        check_score_stats(out, pool, seeds, k, REL_TOL[F32])


# ---------------------------------------------------------------- lowrank_benefit loads

# Ranks that are multiples of every dtype's 16-byte pack (8 bf16/fp16, 4 fp32, 2 fp64),
# of some only, and of none: the vectorised and the scalar kernel, lanes 1 to 32 per token.
LOWRANK_R = [1, 2, 3, 4, 5, 8, 12, 16, 32, 64, 256, 264]


@pytest.mark.parametrize("dtype", [F64, F32, BF16, F16], ids=str)
@pytest.mark.parametrize("r", LOWRANK_R)
def test_lowrank_benefit_ranks(r, dtype):
    # T = 300 > every rows-per-pass of the block (256 threads / lanes), padded rows included.
    acts, out_grads, mask = token_inputs(5, 300, 40, 24, dtype, "float", device="cuda")
    u = rand(3, r, 24, dtype=dtype, scale=24**-0.5, device="cuda")
    v = rand(3, r, 40, dtype=dtype, scale=40**-0.5, device="cuda")
    args = (acts, out_grads, mask, u, v)
    got = gdig_ext.lowrank_benefit(*args)
    assert_close(got, oracle_lowrank(*args), REL_TOL[dtype], f"lowrank_benefit r={r}")
    cpu = gdig_ext.lowrank_benefit(*on_cpu(args))
    assert_close(got, cpu, REL_TOL_VS_REF[dtype], f"lowrank_benefit r={r} vs the CPU kernel")
    assert (got[1] == 0).all(), "a fully padded example must have zero benefit"


# ---------------------------------------------------------------- ekfac_accumulate, bf16/fp16

# Bound on ||lam increment - oracle|| / ||oracle|| for bf16/fp16 inputs on the GPU. The
# rotated tokens are rounded to the input dtype (as in the reference); the rotated
# gradients are fp32 sums of exact products, squared in fp32. The same numerics simulated
# on the CPU over six draws of EKFAC_SHAPES give at most 5.7e-3 (bf16) and 8.3e-4 (fp16),
# both at B = T = 1 where nothing averages out (1.1e-3 and 1.4e-4 at the largest shape);
# the bounds are about twice that. (The CPU kernel, which also rounds each rotated entry to
# bf16, is held to helpers_ops.REL_TOL: 1.5e-2 and 3e-3.)
EKFAC_LOWP_TOL = {BF16: 1.2e-2, F16: 2e-3}
EKFAC_SHAPES = [(1, 1, 33, 77), (5, 17, 33, 77), (6, 70, 130, 97), (40, 16, 256, 192)]


@pytest.mark.parametrize("lam_dtype", [F32, F64], ids=["lam-float32", "lam-float64"])
@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
@pytest.mark.parametrize("shape", EKFAC_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_ekfac_accumulate_low_precision_vs_oracle(shape, dtype, lam_dtype):
    b, t, d_in, d_out = shape
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, "bool", device="cuda")
    q_a, q_s = orthogonal(d_in, dtype, "cuda"), orthogonal(d_out, dtype, "cuda")
    lam0 = torch.rand(d_out, d_in, dtype=lam_dtype, device="cuda") * t * b + 1.0
    lam = lam0.clone()
    gdig_ext.ekfac_accumulate(acts, out_grads, mask, q_a, q_s, lam)
    increment = oracle_ekfac(acts, out_grads, mask, q_a, q_s)
    tol = EKFAC_LOWP_TOL[dtype]
    assert_close(lam.to(F64) - lam0.to(F64), increment, tol, "bf16/fp16 increment vs oracle")
    lam_cpu = lam0.cpu()
    gdig_ext.ekfac_accumulate(*on_cpu((acts, out_grads, mask, q_a, q_s)), lam_cpu)
    assert_close(lam, lam_cpu, REL_TOL_VS_REF[dtype], "ekfac_accumulate vs the CPU kernel")


def oracle_ekfac_by_example(acts, out_grads, mask, q_a, q_s) -> torch.Tensor:
    """oracle_ekfac one example at a time: a [B, d_out, d_in] float64 tensor at d = 4096
    would take B x 128 MiB."""
    total = torch.zeros(q_s.shape[0], q_a.shape[0], dtype=F64, device=acts.device)
    for i in range(acts.shape[0]):
        sl = slice(i, i + 1)
        total += oracle_ekfac(acts[sl], out_grads[sl], mask[sl], q_a, q_s)
    return total


@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=str)
def test_ekfac_accumulate_several_row_and_example_tiles(dtype):
    """d_in = d_out = 4096, T = 512, B = 20: a pass holds 2^25 / (512 x 8192) = 8 examples
    (passes of 8, 8, 4: lam is updated once per 8 examples), a tile 2^22 / (8 x 4096) = 128
    rows of 4096 (32 row tiles per pass)."""
    b, t, d = 20, 512, 4096
    acts, out_grads, mask = token_inputs(b, t, d, d, dtype, "bool", device="cuda")
    # Any square bases exercise the kernel; orthogonal ones this large are slow to make.
    q_a = rand(d, d, dtype=dtype, scale=d**-0.5, device="cuda")
    q_s = rand(d, d, dtype=dtype, scale=d**-0.5, device="cuda")
    lam = torch.ones(d, d, device="cuda")
    gdig_ext.ekfac_accumulate(acts, out_grads, mask, q_a, q_s, lam)
    want = 1.0 + oracle_ekfac_by_example(acts, out_grads, mask, q_a, q_s)
    # Token rotations with k = 4096 may use cuBLAS's reduced-precision split-K for bf16
    # (torch's default), so this large case is held to the suite-wide bound.
    assert_close(lam, want, REL_TOL[dtype], "ekfac_accumulate over row and example tiles")


def test_ekfac_accumulate_fp16_rotated_entries_beyond_fp16_range():
    """64 tokens of 40 in one feature, identity bases: the rotated entry is 64 x 40 x 40 =
    102400, past fp16's largest finite value (65504); the tile is fp32, so lam gets its
    square exactly."""
    t, d_in, d_out = 64, 16, 8
    acts = torch.zeros(2, t, d_in, dtype=F16, device="cuda")
    out_grads = torch.zeros(2, t, d_out, dtype=F16, device="cuda")
    acts[0, :, 3], out_grads[0, :, 5] = 40.0, 40.0
    mask = torch.ones(2, t, dtype=torch.bool, device="cuda")
    q_a = torch.eye(d_in, dtype=F16, device="cuda")
    q_s = torch.eye(d_out, dtype=F16, device="cuda")
    lam = torch.zeros(d_out, d_in, device="cuda")
    gdig_ext.ekfac_accumulate(acts, out_grads, mask, q_a, q_s, lam)
    want = torch.zeros(d_out, d_in, dtype=F64)
    want[5, 3] = (t * 40.0 * 40.0) ** 2
    assert torch.isfinite(lam).all(), "a rotated entry beyond fp16's range overflowed"
    assert torch.equal(lam.cpu().to(F64), want)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
def test_ekfac_accumulate_low_precision_unaligned_d_out_over_row_tiles(dtype):
    """d_out = 1100: a row of g is 2200 bytes, not a multiple of 16, so the tensor-core GEMM
    reads g with an unaligned leading dimension; one pass of all 16 examples (2^25 /
    (64 x 2124) = 246 would fit), 2^22 / (16 x 1024) = 256 rows per tile: 4 full row tiles
    and one of 76."""
    b, t, d_in, d_out = 16, 64, 1024, 1100
    acts, out_grads, mask = token_inputs(b, t, d_in, d_out, dtype, "bool", device="cuda")
    q_a = rand(d_in, d_in, dtype=dtype, scale=d_in**-0.5, device="cuda")
    q_s = rand(d_out, d_out, dtype=dtype, scale=d_out**-0.5, device="cuda")
    lam = torch.zeros(d_out, d_in, device="cuda")
    gdig_ext.ekfac_accumulate(acts, out_grads, mask, q_a, q_s, lam)
    want = oracle_ekfac_by_example(acts, out_grads, mask, q_a, q_s)
    # k = 1024 rotations: the suite-wide bound (see the pipeline's shapes below); a tile
    # read or written at the wrong rows would be off by far more.
    assert_close(lam, want, REL_TOL[dtype], "unaligned d_out over row tiles")


# ---------------------------------------------------------------- the pipeline's shapes

# SmolLM2-135M's tracked down_proj (d_in 1536, d_out 576), T about 32, S = 256 seeds of rank
# 32, k_in = k_out = 32; score_stats on its 10 layers' features (D = 10 x 32 x 32).
PIPE = {"B": 16, "T": 32, "d_in": 1536, "d_out": 576, "S": 256, "r": 32, "k": 32, "D": 10240}


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_token_ops_at_the_pipelines_shapes(dtype):
    p = PIPE
    shape = (p["B"], p["T"], p["d_in"], p["d_out"])
    acts, out_grads, mask = token_inputs(*shape, dtype, "float", device="cuda")

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return rand(*shape, dtype=dtype, scale=scale, device="cuda")

    tok = (acts, out_grads, mask)
    p_in, p_out = (
        r(p["d_in"], p["k"], scale=p["k"] ** -0.5),
        r(p["d_out"], p["k"], scale=p["k"] ** -0.5),
    )
    got = gdig_ext.project_grads(*tok, p_in, p_out)
    assert_close(got, oracle_project(*tok, p_in, p_out), REL_TOL[dtype], "project_grads")
    u = r(p["S"], p["r"], p["d_out"], scale=p["d_out"] ** -0.5)
    v = r(p["S"], p["r"], p["d_in"], scale=p["d_in"] ** -0.5)
    got = gdig_ext.lowrank_benefit(*tok, u, v)
    assert_close(got, oracle_lowrank(*tok, u, v), REL_TOL[dtype], "lowrank_benefit")
    q_a, q_s = orthogonal(p["d_in"], dtype, "cuda"), orthogonal(p["d_out"], dtype, "cuda")
    lam = torch.zeros(p["d_out"], p["d_in"], device="cuda")
    gdig_ext.ekfac_accumulate(*tok, q_a, q_s, lam)
    # Rotations with k = 1536 may use cuBLAS's reduced-precision split-K for bf16 (torch's
    # default): the suite-wide bound, as in test_ekfac_accumulate_several_row_and_example_tiles.
    assert_close(lam, oracle_ekfac(*tok, q_a, q_s), REL_TOL[dtype], "ekfac_accumulate")


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("cand_on", CAND_ON, ids=CAND_IDS)
def test_score_stats_at_the_pipelines_shapes(cand_on, dtype):
    n, s, d, k = 5000, PIPE["S"], PIPE["D"], 5
    cand = rand(n, d, dtype=dtype, device=cand_on)
    seeds = rand(s, d, dtype=dtype, device="cuda")
    check_score_stats(gdig_ext.score_stats(cand, seeds, k), cand, seeds, k, REL_TOL[dtype])


# ---------------------------------------------------------------- score_stats, more streaming


def test_score_stats_when_the_copy_stream_would_be_the_callers():
    """The op draws its copy stream from torch's pool, which hands out 32 streams in turn,
    and torch.cuda.Stream() is drawn from the same pool: after drawing 31 more, the op's
    draw would be the caller's current stream itself. Done on 33 fresh streams (the pool
    cycle and one more), with a pageable and with a pinned pool; each call must still match
    the CPU kernel."""
    n, s, d, k = 5000, 40, 2048, 4  # 3 staging tiles of 2048 rows
    pageable = rand(n, d, dtype=F32)
    pinned = pageable.pin_memory()
    seeds = rand(s, d, dtype=F32, device="cuda")
    want = gdig_ext.score_stats(pageable, seeds.cpu(), k)
    for i in range(33):
        caller = torch.cuda.Stream()
        for _ in range(31):
            torch.cuda.Stream()  # the pool's next stream is `caller` again
        caller.wait_stream(torch.cuda.current_stream())  # seeds were made there
        with torch.cuda.stream(caller):
            got = gdig_ext.score_stats(pinned if i % 2 else pageable, seeds, k)
        torch.cuda.current_stream().wait_stream(caller)
        for name, x, y in zip(["mean", "min", "top-k values"], got[1:4], want[1:4], strict=True):
            assert_close(x, y, REL_TOL_VS_REF[F32], f"call {i}: {name} vs the CPU kernel")


@pytest.mark.parametrize("placement", ["cuda", "cpu", "cpu-pinned"])
def test_score_stats_more_than_2_31_values(placement):
    """N x D = 2^31 + 6M bf16 values (4.3 GB): every offset past 2^31 must be 64-bit. The
    pool repeats a random block (cheap to make) with fresh random rows at the places that
    matter, around row 2^31 / D and at both ends; those rows are checked against float64."""
    d, s, k = 2048, 16, 3
    edge = (1 << 31) // d
    n = edge + 3000
    on = "cuda" if placement == "cuda" else "cpu"
    block = rand(4096, d, dtype=BF16, device=on)
    cand = block.repeat((n + 4095) // 4096, 1)[:n]
    rows = torch.tensor([0, 1, n // 2, edge - 1, edge, edge + 1, n - 2, n - 1], device=on)
    cand[rows] = rand(len(rows), d, dtype=BF16, device=on)
    if placement == "cpu-pinned":
        cand = cand.pin_memory()
    assert cand.numel() > 1 << 31
    seeds = rand(s, d, dtype=BF16, device="cuda")
    got = gdig_ext.score_stats(cand, seeds, k)
    sampled = tuple(x[rows.to("cuda")] for x in got)
    check_score_stats(sampled, cand[rows], seeds, k, REL_TOL[BF16])


def test_score_stats_streamed_pinned_pools():
    """A pinned pool: contiguous (here a slice of rows at an offset) is uploaded straight
    from it; strided is staged through the op's own buffers. Both give exactly what the
    same rows give from pageable memory (staged, in the same tiles: the same GEMMs)."""
    n, s, d, k = 6000, 48, 4096, 5
    base = torch.randn(n + 100, d).pin_memory()
    seeds = rand(s, d // 2, dtype=F32, device="cuda")
    seeds_full = rand(s, d, dtype=F32, device="cuda")
    for cand, sd in [(base[100:], seeds_full), (base[:n, ::2], seeds)]:
        assert cand.is_pinned()
        got = gdig_ext.score_stats(cand, sd, k)
        pageable = torch.empty(cand.shape, dtype=cand.dtype).copy_(cand)
        want = gdig_ext.score_stats(pageable, sd, k)
        names = ["n_pos", "mean", "min", "top-k values"]
        for name, x, y in zip(names, got[:4], want[:4], strict=True):
            assert torch.equal(x, y), f"pinned pool ({cand.stride()}): {name} differs"


# ---------------------------------------------------------------- two threads


def test_ops_from_two_threads_each_on_its_own_stream():
    """Two threads call every op at once, each on its own stream (a streamed score_stats
    included), several times over: each result equals the same call made alone."""
    import threading

    torch.manual_seed(1)
    cases = {
        op: token_args(op, 8, 48, F32, "cuda", d_in=256, d_out=192, k_in=16, k_out=16, S=32, r=16)
        for op in NAN_OPS
    }
    cand, seeds = rand(6000, 1024, dtype=F32), rand(64, 1024, dtype=F32, device="cuda")

    def run_all() -> list[torch.Tensor]:
        out = [run_op(op, gdig_ext, args) for op, args in cases.items()]
        return out + list(gdig_ext.score_stats(cand, seeds, 5)[1:4])

    alone = run_all()
    torch.cuda.synchronize()
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(i: int) -> None:
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.default_stream())
            start.wait()
            with torch.cuda.stream(stream):
                outs = [run_all() for _ in range(5)]
            stream.synchronize()
            results[i] = outs
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, outs in results.items():
        for j, out in enumerate(outs):
            for x, y in zip(out, alone, strict=True):
                assert_close(x, y, 1e-6, f"thread {i}, round {j}")
