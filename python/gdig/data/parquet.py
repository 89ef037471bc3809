"""Parquet pairs files, read one row group at a time (pyarrow), the format large corpora
ship in. Rows are numbered from 1 and stand in for line numbers in every message."""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from gdig.io.errors import UsageError


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(
            "reading Parquet needs pyarrow: pip install pyarrow (or pip install 'gdig[parquet]')"
        ) from None
    return pq


def _json_safe(value: Any) -> Any:
    """Arrow values as JSON values, so that every input field survives into the outputs
    (dates, decimals and bytes become strings)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, datetime.date | datetime.time | datetime.datetime):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


def table_records(table) -> list[dict[str, Any]]:
    """The rows of an Arrow table (or record batch) as JSON-safe records."""
    rows = table.to_pylist()
    return [{k: _json_safe(v) for k, v in row.items()} for row in rows]


def records_table(records: Iterable[dict[str, Any]], chunk: int = 4096):
    """Records as one Arrow table, built a chunk at a time (a field missing from some
    records, or null in a whole chunk, takes its type from the others)."""
    import pyarrow as pa

    def table(recs: list[dict[str, Any]]):
        # every field of the chunk, in order of appearance (from_pylist keeps the first
        # record's only)
        names = list(dict.fromkeys(k for rec in recs for k in rec))
        return pa.table({k: [rec.get(k) for rec in recs] for k in names})

    parts, buf = [], []
    for rec in records:
        buf.append(rec)
        if len(buf) == chunk:
            parts.append(table(buf))
            buf = []
    if buf or not parts:
        parts.append(table(buf))
    return pa.concat_tables(parts, promote_options="default")


def write_parquet(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records as a Parquet file, atomically; return how many."""
    from gdig.io.atomic import atomic_open

    table = records_table(records)
    with atomic_open(path) as fh:
        _pyarrow_parquet().write_table(table, fh)
    return table.num_rows


def iter_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number from 1, record)`` of every row, one row group in memory at a time."""
    pf = _pyarrow_parquet().ParquetFile(path)
    row = 0
    for group in range(pf.num_row_groups):
        for rec in table_records(pf.read_row_group(group)):
            row += 1
            yield row, rec


class RowReader:
    """Random access to a Parquet file's rows (numbered from 1), one row group decoded at a
    time and kept until a row of another group is asked for: reading rows in ascending
    order decodes each group once."""

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self._pf = _pyarrow_parquet().ParquetFile(path)
        sizes = [self._pf.metadata.row_group(g).num_rows for g in range(self._pf.num_row_groups)]
        self._first = [1]
        for size in sizes:
            self._first.append(self._first[-1] + size)
        self._cached: tuple[int, list[dict[str, Any]]] = (-1, [])

    def read(self, rows: Iterable[int]) -> Iterator[dict[str, Any]]:
        """The records of the given row numbers, in this order."""
        import bisect

        for row in rows:
            group = bisect.bisect_right(self._first, row) - 1
            if not 0 <= group < len(self._first) - 1:
                raise IndexError(f"{self.path}: row {row} is past the end")
            if self._cached[0] != group:
                self._cached = (group, table_records(self._pf.read_row_group(group)))
            yield self._cached[1][row - self._first[group]]

    def close(self) -> None:
        self._cached = (-1, [])
