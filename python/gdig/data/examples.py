"""What the influence engine reads: examples with an id, two texts and their languages.

The engine takes any :class:`Examples`: a pool read from a file
(:class:`gdig.data.pool.PoolIndex`, pairs read back on demand) or pairs held in memory
(:class:`ExampleList`). Both give the ids without reading texts and the examples at some
rows in one pass, so the engine never asks which one it got.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from gdig.data.idlist import IdList


@runtime_checkable
class Example(Protocol):
    """One translation example (:class:`gdig.data.pair.Pair` is one)."""

    id: str
    src: str
    tgt: str
    src_lang: str | None
    tgt_lang: str | None


@runtime_checkable
class Examples(Protocol):
    """A sequence of examples with distinct ids, as the engine reads it."""

    def __len__(self) -> int: ...

    def ids(self) -> Sequence[str]:
        """Every id, in order, without reading the texts."""
        ...

    def take(self, rows: Iterable[int]) -> list[Example]:
        """The examples at these rows, in this order."""
        ...


class ExampleList(Sequence[Example]):
    """Examples held in memory; their ids must be distinct (checked here, once)."""

    def __init__(self, items: Iterable[Example]) -> None:
        self._items = list(items)
        seen: set[str] = set()
        for item in self._items:
            if item.id in seen:
                raise ValueError(
                    f"example ids are not unique: {item.id!r} occurs twice; give every pair "
                    "its own id"
                )
            seen.add(item.id)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):  # type: ignore[override]
        return self._items[i]

    def ids(self) -> IdList:
        return IdList.of(item.id for item in self._items)

    def take(self, rows: Iterable[int]) -> list[Example]:
        return [self._items[int(r)] for r in np.asarray(list(rows), dtype=np.int64).tolist()]


def as_examples(items: Examples | Iterable[Example]) -> Examples:
    """``items`` as :class:`Examples`: itself when it is one, else an :class:`ExampleList`."""
    return items if isinstance(items, Examples) else ExampleList(items)
