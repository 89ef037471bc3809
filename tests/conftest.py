"""Shared pytest setup: markers, a fixed seed per test, and a small thread count.

The suite must run in a few minutes on a 2-core machine, so torch is pinned to
2 threads (more only adds contention) and every test starts from the same RNG
state, which makes a failure reproducible by running that test alone.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Without `pip install -e .` the pipeline lives in python/ and gdig_ext at the root.
# Appended, not prepended, so an installed build or an explicit PYTHONPATH wins.
for _path in (os.path.join(_ROOT, "python"), _ROOT):
    if _path not in sys.path:
        sys.path.append(_path)

torch.set_num_threads(2)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; skipped when none is visible")
    config.addinivalue_line(
        "markers", "slow: takes more than a few seconds; deselect with -m 'not slow'"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device visible")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random LLaMA saved as a Hugging Face folder (shared, read-only)."""
    from helpers_models import save_tiny

    return save_tiny("llama", tmp_path_factory.mktemp("model") / "llama")


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)
