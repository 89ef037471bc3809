"""benchmarks/bench_ops.py's baselines compute what the compiled ops compute, at their
precision, and its table's check compares outputs element by element.

The timings themselves are the benchmark's (``python benchmarks/bench_ops.py``), never a
test's: these run the baselines once each at the quick sizes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.append(str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_ops import (
    OPS,
    QUICK_SIZES,
    _make_inputs,
    command_flags,
    compare,
    implementations,
    outputs,
    parse_args,
)

from gdig_ext import reference

# Relative gap of output norms allowed between a baseline and the compiled op. For bf16
# it is below the 2e-3 by which the fp32-widened oracle misses the CPU ekfac_accumulate, so
# a baseline that drifts from the kernel's working dtype fails here.
GAP = {"float32": 1e-5, "bfloat16": 5e-4}


def _outputs(op: str, fn, dtype: str) -> list[torch.Tensor]:
    torch.manual_seed(0)
    args = _make_inputs(op, QUICK_SIZES[op], getattr(torch, dtype), "cpu")
    return outputs(op, fn, args)


def _gap(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double(), y.double()
    return (torch.linalg.vector_norm(x - y) / torch.linalg.vector_norm(y).clamp_min(1e-30)).item()


@pytest.mark.parametrize("budget", [None, 1000], ids=["one-chunk", "many-chunks"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("op", OPS)
def test_baselines_match_compiled(op: str, dtype: str, budget: int | None) -> None:
    impls = implementations(op)
    want = _outputs(op, impls["compiled"], dtype)
    for name, fn in [
        ("whole", impls["whole"]),
        ("frugal", lambda *a: impls["frugal"](*a, budget=budget)),
    ]:
        got = _outputs(op, fn, dtype)
        for i, (x, y) in enumerate(zip(got, want, strict=True)):
            if y.is_floating_point():
                assert _gap(x, y) <= GAP[dtype], f"{op} {dtype} {name} output {i}"
            elif i == 0 or op != "score_stats":  # top-k indices may swap on ties
                assert torch.equal(x, y), f"{op} {dtype} {name} output {i}"


def test_ekfac_oracle_is_wider_than_the_cpu_kernel_in_bf16() -> None:
    """Why bench_ops has its own whole ekfac baseline: the oracle's bmm is fp32 for bf16."""
    compiled = _outputs(
        "ekfac_accumulate", implementations("ekfac_accumulate")["compiled"], "bfloat16"
    )
    oracle = _outputs("ekfac_accumulate", reference.ekfac_accumulate, "bfloat16")
    assert _gap(oracle[0], compiled[0]) > GAP["bfloat16"]


def test_outputs_of_ekfac_do_not_accumulate_across_calls() -> None:
    """The table's check calls each side once on shared inputs: lam must start at zero."""
    fn = implementations("ekfac_accumulate")["whole"]
    first, second = (_outputs("ekfac_accumulate", fn, "float32")[0] for _ in range(2))
    assert torch.equal(first, second) and first.abs().max() > 0


def test_check_is_elementwise_not_by_norm() -> None:
    y = torch.arange(1.0, 9.0)
    swapped = y.flip(0)  # same norm, every element moved
    assert compare([swapped], [y]).rel == pytest.approx(7 / 8)
    n_pos, idx = torch.tensor([3, 1]), torch.tensor([[0, 1], [2, 3]])
    check = compare([y, n_pos, idx], [y, torch.tensor([3, 2]), torch.tensor([[0, 1], [3, 2]])])
    assert (check.rel, check.ints_differ, check.ints) == (0.0, 3, 6)
    assert check.text() == "0.0e+00; 3 of 6 ints differ"


def test_printed_command_reruns_the_same_table() -> None:
    # The command above a table names every option that shaped it (a float32-only table
    # printed without --dtypes would rerun with bf16 rows too).
    for argv in (
        ["--device", "cpu", "--repeats", "5", "--dtypes", "float32"],
        ["--device", "cpu", "--repeats", "3", "--ops", "score_stats", "--threads", "1"],
        ["--device", "cpu", "--repeats", "5"],
    ):
        cfg = parse_args(argv)
        printed = command_flags(cfg).split()
        assert parse_args(printed) == cfg
    assert "--dtypes" not in command_flags(parse_args([]))
