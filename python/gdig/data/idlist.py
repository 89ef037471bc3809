"""Candidate ids held compactly: one UTF-8 blob and the offsets into it.

A pool of millions of pairs has millions of ids; as a list of Python strings each costs
about 65 bytes (object header, text, list slot), as an :class:`IdList` 8 bytes plus its
text. It reads like a sequence of ``str`` (indexing, slicing, iteration, ``len``,
equality with any sequence of strings), decoding an id only when it is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np


def as_idlist(ids: Sequence[str]) -> IdList:
    """``ids`` as an IdList: itself when it is one, else a compact copy."""
    return ids if isinstance(ids, IdList) else IdList.of(ids)


class IdList(Sequence[str]):
    """Immutable sequence of ids; build it with :meth:`of` or :meth:`extend` while filling."""

    def __init__(self) -> None:
        self._blob = bytearray()
        self._ends: list[int] | np.ndarray = []  # a list while filling, int64 once frozen

    @classmethod
    def of(cls, ids: Iterable[str]) -> IdList:
        out = cls()
        out.extend(ids)
        return out.freeze()

    def extend(self, ids: Iterable[str]) -> None:
        """Append ids (only before :meth:`freeze`)."""
        if not isinstance(self._ends, list):
            raise TypeError("IdList: frozen; build a new one")
        for cid in ids:
            self._blob += str(cid).encode("utf-8")
            self._ends.append(len(self._blob))

    def freeze(self) -> IdList:
        if isinstance(self._ends, list):
            self._ends = np.asarray(self._ends, dtype=np.int64)
        return self

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(blob uint8, ends int64)``: the ids as two arrays (an ``.npz`` keeps them)."""
        self.freeze()
        return np.frombuffer(bytes(self._blob), dtype=np.uint8), np.asarray(self._ends)

    @classmethod
    def from_arrays(cls, blob: np.ndarray, ends: np.ndarray) -> IdList:
        """The inverse of :meth:`to_arrays`; raises ValueError on inconsistent arrays."""
        ends = np.asarray(ends, dtype=np.int64)
        if ends.ndim != 1 or np.any(np.diff(ends) < 0) or (len(ends) and ends[-1] != blob.size):
            raise ValueError("IdList: the offsets do not match the text they index")
        out = cls()
        out._blob = bytearray(np.asarray(blob, dtype=np.uint8).tobytes())
        out._ends = ends
        return out

    def __len__(self) -> int:
        return len(self._ends)

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> IdList: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.take(range(len(self))[i])  # a range slice: no index array of N
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"IdList index {i} out of range for {n} ids")
        start = int(self._ends[i - 1]) if i else 0
        return self._blob[start : int(self._ends[i])].decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        start = 0
        for end in np.asarray(self._ends).tolist():
            yield self._blob[start:end].decode("utf-8")
            start = end

    def take(self, rows: Sequence[int] | np.ndarray) -> IdList:
        """The ids at these positions, as a new IdList."""
        out = IdList()
        out.extend(self[int(r)] for r in np.asarray(rows, dtype=np.int64).tolist())
        return out.freeze()

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        if isinstance(other, IdList):
            return self._blob == other._blob and np.array_equal(self._ends, other._ends)
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # mutable while filling, compared by value

    def __repr__(self) -> str:
        head = ", ".join(repr(x) for x in self[: min(3, len(self))])
        return f"IdList([{head}{', ...' if len(self) > 3 else ''}], n={len(self)})"
