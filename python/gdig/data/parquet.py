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


def _records(table) -> list[dict[str, Any]]:
    rows = table.to_pylist()
    return [{k: _json_safe(v) for k, v in row.items()} for row in rows]


def iter_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number from 1, record)`` of every row, one row group in memory at a time."""
    pf = _pyarrow_parquet().ParquetFile(path)
    row = 0
    for group in range(pf.num_row_groups):
        for rec in _records(pf.read_row_group(group)):
            row += 1
            yield row, rec


def read_rows(path: str | Path, rows: Iterable[int]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row, record)`` for the given row numbers (from 1, ascending): only the row groups
    that hold them are read, each once."""
    pf = _pyarrow_parquet().ParquetFile(path)
    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
    group, first, cached, cached_group = 0, 1, None, -1
    for row in rows:
        while group < len(sizes) and row >= first + sizes[group]:
            first += sizes[group]
            group += 1
        if group >= len(sizes):
            raise IndexError(f"{path}: row {row} is past the end ({first - 1} rows)")
        if cached_group != group:
            cached, cached_group = _records(pf.read_row_group(group)), group
        yield row, cached[row - first]
