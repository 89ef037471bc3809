"""gdig: G-DIG selection of machine-translation instruction data.

Benefit convention used everywhere: B(m, s) = grad L(s)^T H^-1 grad L(m);
positive means candidate m helps seed s (it lowers the seed's loss).

The public Python API is what ``__all__`` lists (see docs/API.md)::

    import gdig
    run = gdig.run(model="smollm2", seeds="seeds.jsonl", pool="pool.jsonl", out="runs/x")

Everything else is private by name or lives in a subpackage. The names load on first use,
so ``import gdig`` (and the ``gdig`` command's start) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "run": "gdig.api",
    "open_run": "gdig.api",
    "score": "gdig.api",
    "Run": "gdig.api",
    "Selection": "gdig.select.selection",
    "SelectConfig": "gdig.select.config",
    "Pair": "gdig.data.pair",
    "read_pairs": "gdig.data.pairs",
    "demo_paths": "gdig.data.demo_files",
    "GdigError": "gdig.io.errors",
    "UsageError": "gdig.io.errors",
    "PairsError": "gdig.data.pair",
    "ShortfallError": "gdig.select.selection",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # once: later lookups are plain attributes
        return value
    raise AttributeError(f"module 'gdig' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
