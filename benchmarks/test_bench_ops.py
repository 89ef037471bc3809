"""pytest-benchmark timings of each op, compiled vs reference, at small sizes.

    pytest benchmarks/test_bench_ops.py --benchmark-group-by=param:op

Not part of the test suite (testpaths = tests): it times, it does not check. For the
realistic sizes and peak memory, run benchmarks/bench_ops.py.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_ops import OPS, QUICK_SIZES, _make_inputs

import gdig_ext
from gdig_ext import reference


@pytest.mark.parametrize("impl", ["reference", "compiled"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("op", OPS)
def test_bench(benchmark, op: str, dtype: str, impl: str) -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    torch.manual_seed(0)
    args = _make_inputs(op, QUICK_SIZES[op], getattr(torch, dtype), "cpu")
    fn = getattr(gdig_ext if impl == "compiled" else reference, op)
    benchmark.group = f"{op} {dtype}"
    benchmark(fn, *args)
