"""A pool of pairs that is never held whole: read once, kept as a few numbers a pair.

:func:`open_pool` streams a pairs file (any format of :mod:`gdig.data.formats`) under the
same rules as :func:`gdig.data.pairs.iter_pairs` and keeps, for every good pair, its id
(as UTF-8 bytes in one buffer), its line (or row) number and where it starts in the file
(byte offset in the decompressed stream; the row for tables). The result is a
``Sequence[Pair]`` and an :class:`~gdig.data.examples.Examples`: ``pool[i]`` and
``pool.take(rows)`` read the pairs back from the file by seeking, so a caller holds only
the pairs it is working on.

Memory: about ``len(id) + 32`` bytes a pair (id buffer, id start, line, offset, and a
64-bit hash of the id, for the duplicate check and :meth:`PoolIndex.rows_of`). The pairs
read back are exactly the pairs read the first time, every field included.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from gdig.data.formats import UnitReader
from gdig.data.idlist import IdList
from gdig.data.lineparser import LineParser
from gdig.data.pair import Pair, PairsError
from gdig.data.pairs import (
    ReadOptions,
    duplicate_id_error,
    finish_scan,
    open_input,
    parse_unit,
    scan_pairs,
)

__all__ = ["PoolIndex", "open_pool"]

_BLOCK = 1024  # pairs read back at once when indexed one by one (sequential access)


class PoolIndex(Sequence[Pair]):
    """The good pairs of one file, in file order, read back on demand (see module doc)."""

    def __init__(
        self,
        path: Path,
        opts: ReadOptions,
        parser: LineParser,
        id_blob: bytes,
        id_start: np.ndarray,
        lines: np.ndarray,
        offsets: np.ndarray,
        hashes: np.ndarray,
    ) -> None:
        self.path = path
        self.opts = opts
        self._parser = parser  # keeps a TSV header's column names for re-reads
        self._id_blob = id_blob
        self._id_start = id_start  # [n + 1]
        self.lines = lines  # [n] line (Parquet: row) numbers, from 1
        self.offsets = offsets  # [n] where each pair starts
        self.hashes = hashes  # [n] uint64 _hash of each id (duplicates, rows_of)
        self._block: tuple[int, list[Pair]] | None = None
        self._reader: UnitReader | None = None  # kept open across reads

    def __len__(self) -> int:
        return len(self.lines)

    def id(self, i: int) -> str:
        a, b = self._id_start[i], self._id_start[i + 1]
        return self._id_blob[a:b].decode("utf-8")

    def ids(self) -> IdList:
        """Every id, in file order, without reading the pairs (shares no buffer)."""
        return IdList.from_arrays(np.frombuffer(self._id_blob, np.uint8), self._id_start[1:])

    @overload
    def __getitem__(self, i: int) -> Pair: ...
    @overload
    def __getitem__(self, i: slice) -> list[Pair]: ...
    def __getitem__(self, i: int | slice) -> Pair | list[Pair]:
        if isinstance(i, slice):
            return self.take(range(*i.indices(len(self))))
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"pool index {i} out of range ({n} pairs)")
        if self._block is None or not (self._block[0] <= i < self._block[0] + len(self._block[1])):
            self._block = (i, self.take(range(i, min(i + _BLOCK, n))))
        return self._block[1][i - self._block[0]]

    def __iter__(self) -> Iterator[Pair]:
        for start in range(0, len(self), _BLOCK):
            yield from self.take(range(start, min(start + _BLOCK, len(self))))

    def take(self, rows: Iterable[int]) -> list[Pair]:
        """The pairs at these positions, in this order (each distinct one read once, in
        file order: a gzip file is never rewound)."""
        rows = np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows, np.int64)
        if rows.size == 0:
            return []
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"pool rows out of range ({len(self)} pairs)")
        unique = np.unique(rows)
        got = dict(zip(unique.tolist(), self._read(unique), strict=True))
        return [got[r] for r in rows.tolist()]

    def _read(self, rows: np.ndarray) -> Iterator[Pair]:
        # One reader stays open across calls: the engine reads a pool block by block, and
        # reopening would make a gzip file decompress from its start for every block.
        if self._reader is None:
            self._reader = self.opts.format.reader(self.path, self.opts.max_line_bytes)
        contents = self._reader.read(self.offsets[rows].tolist())
        for r, content in zip(rows.tolist(), contents, strict=True):
            yield self._parse(r, (int(self.lines[r]), int(self.offsets[r]), content))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader = None

    def __del__(self) -> None:
        self.close()

    def _parse(self, r: int, unit: Any) -> Pair:
        try:
            pair = parse_unit(self._parser, unit, self.opts.max_line_bytes)
        except PairsError:
            pair = None
        if pair is None or pair.id != self.id(r):
            raise PairsError(
                str(self.path),
                int(self.lines[r]),
                "<line>",
                "the file changed while gdig was using it",
                "leave the pool alone during a run, then run the command again",
            )
        return pair

    def subset(self, keep: np.ndarray) -> PoolIndex:
        """A pool of only the pairs where ``keep`` (a boolean mask) is true."""
        keep = np.asarray(keep, dtype=bool)
        starts, ends = self._id_start[:-1][keep], self._id_start[1:][keep]
        blob = b"".join(self._id_blob[a:b] for a, b in zip(starts, ends, strict=True))
        id_start = np.zeros(len(starts) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=id_start[1:])
        return PoolIndex(
            self.path,
            self.opts,
            self._parser,
            blob,
            id_start,
            self.lines[keep],
            self.offsets[keep],
            self.hashes[keep],
        )

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """Positions of these ids (-1 for an id not in the pool), without a dict of every
        id: the hashes kept from reading the pool are sorted."""
        hashes = self.hashes
        order = np.argsort(hashes, kind="stable")
        want = np.fromiter((_hash(i) for i in ids), dtype=np.uint64, count=len(ids))
        pos = np.searchsorted(hashes[order], want)
        out = np.full(len(ids), -1, dtype=np.int64)
        for j, (p, cid) in enumerate(zip(pos.tolist(), ids, strict=True)):
            while p < len(order) and hashes[order[p]] == want[j]:
                if self.id(int(order[p])) == cid:
                    out[j] = order[p]
                    break
                p += 1
        return out


def _hash(text: str) -> int:
    """A 64-bit hash of an id, the same in every process (Python's hash() is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def open_pool(
    path: str | os.PathLike[str],
    *,
    skipped: list[dict[str, Any]] | None = None,
    progress: bool = False,
    **options: Any,
) -> PoolIndex:
    """Read a pairs file once and index it. ``options`` are :class:`ReadOptions` fields
    (``bad_lines``, ``max_line_bytes``, ``fmt``, ``src_field``, ``tgt_field``,
    ``src_lang``, ``tgt_lang``), as :func:`iter_pairs` takes them; ``skipped`` too.

    Same pairs, same errors and skip records as ``iter_pairs``: a repeated id is a bad
    line (the first one is kept), found after the pass from 64-bit hashes rather than a
    dict of every id, so the error names the first repeated line and its first line.
    """
    path, opts = open_input(path, ReadOptions(**options))
    parser = opts.parser(path)
    own_skips: list[dict[str, Any]] = [] if skipped is None else skipped
    n_before = len(own_skips)
    blob = bytearray()
    id_start, lines, offsets, hashes = array("q", [0]), array("q"), array("q"), array("Q")
    from tqdm.auto import tqdm

    size = path.stat().st_size
    by_bytes = opts.format.lines and path.suffix != ".gz"  # offsets in the file's bytes
    with tqdm(
        total=size, desc=f"read {path.name}", unit="B", unit_scale=True, disable=not progress
    ) as bar:
        for k, (pair, offset) in enumerate(scan_pairs(path, opts, parser, own_skips)):
            raw_id = pair.id.encode("utf-8")
            blob += raw_id
            id_start.append(len(blob))
            lines.append(pair.line or 0)
            offsets.append(offset)
            hashes.append(_hash(pair.id))
            if progress and k % 4096 == 0 and by_bytes:
                bar.update(offset - bar.n)
        bar.update(size - bar.n)
    pool = PoolIndex(
        path,
        opts,
        parser,
        bytes(blob),
        np.frombuffer(id_start, dtype=np.int64).copy(),
        np.frombuffer(lines, dtype=np.int64).copy(),
        np.frombuffer(offsets, dtype=np.int64).copy(),
        np.frombuffer(hashes, dtype=np.uint64).copy(),
    )
    del blob, id_start, lines, offsets, hashes
    keep = _first_of_each_id(pool, own_skips)
    if keep is not None:
        pool = pool.subset(keep)
        own_skips[n_before:] = sorted(own_skips[n_before:], key=lambda rec: rec["line"])
    finish_scan(path, len(pool), own_skips, n_before, warn=skipped is None)
    return pool


def _first_of_each_id(pool: PoolIndex, skips: list[dict[str, Any]]) -> np.ndarray | None:
    """Mask keeping the first pair of each id (None: no repeats); raises under
    ``bad_lines="error"`` for the earliest repeat; otherwise adds its skip records."""
    hashes = pool.hashes
    order = np.argsort(hashes, kind="stable")  # equal hashes stay in file order
    same = hashes[order][1:] == hashes[order][:-1]
    if not same.any():
        return None
    keep = np.ones(len(pool), dtype=bool)
    repeats: list[tuple[int, int]] = []  # (row of the repeat, row of the first)
    for j in np.flatnonzero(same).tolist():
        # the run of equal hashes: compare the ids with every earlier pair of the run
        row = int(order[j + 1])
        k = j
        while k >= 0 and hashes[order[k]] == hashes[row]:
            first = int(order[k])
            if keep[first] and pool.id(first) == pool.id(row):
                keep[row] = False
                repeats.append((row, first))
                break
            k -= 1
    if not repeats:
        return None
    repeats.sort()
    if pool.opts.bad_lines == "error":
        row, first = repeats[0]
        raise duplicate_id_error(
            pool.path, pool.id(row), int(pool.lines[first]), int(pool.lines[row])
        )
    for row, first in repeats:
        err = duplicate_id_error(
            pool.path, pool.id(row), int(pool.lines[first]), int(pool.lines[row])
        )
        skips.append(err.as_skip_record())
    return keep
