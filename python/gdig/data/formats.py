"""The input formats, one table: name -> how to scan a file once and read rows back.

A format is an :class:`InputFormat`: the file endings that name it, how to tell it from
the first bytes when the name does not, ``scan`` (every unit of the file in order: its
line or row number, where to find it again, and its content) and ``reader`` (random
access to units by where they were found). A pool is scanned once into an index and read
back by seeking (:mod:`gdig.data.pool`), so the pairs of a pool of millions are never
held whole. Text formats give a line's bytes (parsed as JSONL or TSV by
:mod:`gdig.data.lineparser`); table formats give each row as a record. ``write`` (where a
format has one) writes records back in that format, so a selection can go back to where
its pool came from. Adding a format is one reader and one line in :data:`FORMATS`.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

# One unit of input: (line or row number from 1, where to find it again, the line's
# bytes, a table row's record, or None for a line over max_line_bytes).
Unit = tuple[int, int, Any]


class UnitReader(Protocol):
    """Random access to a file's units by where :func:`InputFormat.scan` found them."""

    def read(self, where: list[int]) -> Iterator[Any]:
        """The content of each unit, in this order."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class InputFormat:
    """One input format (see the module doc)."""

    name: str
    label: str  # as help texts and messages name it
    suffixes: tuple[str, ...]  # file endings (before any .gz) that select it
    scan: Callable[[Path, int], Iterator[Unit]]  # (path, max_line_bytes)
    reader: Callable[[Path, int], UnitReader]
    sniff: Callable[[Path], bool]  # True when the first bytes say it is this format
    folder: bool = False  # the input is a folder, not a file
    lines: bool = False  # text lines: found again by byte offset; .gz allowed
    write: Callable[[Path, Iterable[dict[str, Any]]], int] | None = None


# --- text lines (JSONL, TSV), plain or gzip -------------------------------------------


def open_binary(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def raw_lines(fh: IO[bytes], max_line_bytes: int) -> Iterator[Unit]:
    """Yield (line_no, byte offset of the line, content without newline), with content
    None for a too-long line.

    Reads at most ``max_line_bytes + 2`` bytes at a time so a runaway line (e.g. a
    binary file without newlines) never has to sit in memory whole. The offset is in the
    (decompressed) stream, so ``fh.seek(offset)`` returns to the line.
    """
    limit = max_line_bytes + 2  # room for "\r\n"
    line_no = 0
    while True:
        offset = fh.tell()
        raw = fh.readline(limit)
        if not raw:
            return
        line_no += 1
        if raw.endswith(b"\n"):
            content = raw[:-1]
        elif len(raw) < limit:  # last line of the file, no newline
            content = raw
        else:  # cut off mid-line: drain the rest of it
            while chunk := fh.readline(1 << 20):
                if chunk.endswith(b"\n"):
                    break
            yield line_no, offset, None
            continue
        if content.endswith(b"\r"):
            content = content[:-1]
        yield line_no, offset, (content if len(content) <= max_line_bytes else None)


def _scan_lines(path: Path, max_line_bytes: int) -> Iterator[Unit]:
    with open_binary(path) as fh:
        yield from raw_lines(fh, max_line_bytes)


class _LineReader:
    """Lines read back by seeking to their offsets; one handle stays open across calls
    (the engine reads a pool block by block, and reopening would make a gzip file
    decompress from its start for every block)."""

    def __init__(self, path: Path, max_line_bytes: int) -> None:
        self._fh = open_binary(path)
        self._limit = max_line_bytes + 2

    def read(self, where: list[int]) -> Iterator[bytes]:
        for offset in where:
            self._fh.seek(offset)  # gzip: forward seeks decompress only the gap
            yield self._fh.readline(self._limit).rstrip(b"\n").removesuffix(b"\r")

    def close(self) -> None:
        self._fh.close()


def _first_line(path: Path) -> bytes:
    """The first non-blank line (BOM and spaces stripped), or b""."""
    try:
        with open_binary(path) as fh:
            for _, _, content in raw_lines(fh, 1 << 20):
                if content is None:
                    return b""
                text = content.lstrip(b"\xef\xbb\xbf").strip()
                if text:
                    return text
    except (OSError, EOFError):
        pass
    return b""


def _write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    from gdig.data.pairs import write_jsonl

    return write_jsonl(path, records)


# --- tables (Parquet, a saved Hugging Face dataset) ------------------------------------


def _scan_table(rows: Callable[[Path], Iterator[tuple[int, dict[str, Any]]]]):
    def scan(path: Path, max_line_bytes: int) -> Iterator[Unit]:
        for row, rec in rows(path):
            yield row, row, rec

    return scan


def _parquet_scan(path: Path, max_line_bytes: int) -> Iterator[Unit]:
    from gdig.data.parquet import iter_rows

    return _scan_table(iter_rows)(path, max_line_bytes)


def _parquet_reader(path: Path, max_line_bytes: int) -> UnitReader:
    from gdig.data.parquet import RowReader

    return RowReader(path)


def _parquet_sniff(path: Path) -> bool:
    if path.is_dir() or path.suffix == ".gz":
        return False
    with open(path, "rb") as fh:
        return fh.read(4) == b"PAR1"


def _parquet_write(path: Path, records: Iterable[dict[str, Any]]) -> int:
    from gdig.data.parquet import write_parquet

    return write_parquet(path, records)


def _hf_scan(path: Path, max_line_bytes: int) -> Iterator[Unit]:
    from gdig.data.hfdataset import iter_rows

    return _scan_table(iter_rows)(path, max_line_bytes)


def _hf_reader(path: Path, max_line_bytes: int) -> UnitReader:
    from gdig.data.hfdataset import RowReader

    return RowReader(path)


def _hf_sniff(path: Path) -> bool:
    from gdig.data.hfdataset import is_dataset_folder

    return is_dataset_folder(path)


def _hf_write(path: Path, records: Iterable[dict[str, Any]]) -> int:
    from gdig.data.hfdataset import write_dataset

    return write_dataset(path, records)


# The order is the order in which formats are sniffed: binary and folder signatures
# before the text formats, whose first line could hold any byte.
FORMATS: dict[str, InputFormat] = {
    f.name: f
    for f in (
        InputFormat(
            "hf",
            "a Hugging Face dataset folder (Dataset.save_to_disk)",
            (),
            _hf_scan,
            _hf_reader,
            _hf_sniff,
            folder=True,
            write=_hf_write,
        ),
        InputFormat(
            "parquet",
            "Parquet",
            (".parquet",),
            _parquet_scan,
            _parquet_reader,
            _parquet_sniff,
            write=_parquet_write,
        ),
        InputFormat(
            "jsonl",
            "JSONL",
            (".jsonl", ".json"),
            _scan_lines,
            _LineReader,
            lambda p: _first_line(p).startswith((b"{", b"[")),
            lines=True,
            write=_write_jsonl,
        ),
        InputFormat(
            "tsv",
            "TSV",
            (".tsv",),
            _scan_lines,
            _LineReader,
            lambda p: b"\t" in _first_line(p),
            lines=True,
        ),
    )
}


def register_format(fmt: InputFormat) -> None:
    """Add a format to the table (a plug-in, or a test); it is sniffed after the others."""
    FORMATS[fmt.name] = fmt


def formats_text() -> str:
    """The formats as help texts name them: "JSONL or TSV (plain or .gz), Parquet or ..."."""
    lines = [f.label for f in FORMATS.values() if f.lines]
    tables = [f.label for f in FORMATS.values() if not f.lines]
    parts = [" or ".join(lines) + " (plain or .gz)", *reversed(tables)]
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def format_from_name(path: Path) -> InputFormat | None:
    """The format a file's name says (``.gz`` looked through), or None."""
    suffixes = path.suffixes
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if not suffixes:
        return None
    end = suffixes[-1].lower()
    return next((f for f in FORMATS.values() if end in f.suffixes), None)


def sniff(path: Path) -> InputFormat | None:
    """The format the first bytes (or a folder's files) say, or None."""
    for f in FORMATS.values():
        if f.folder == path.is_dir() and f.sniff(path):
            return f
    return None


def input_files(path: Path) -> list[Path]:
    """The files whose bytes are an input's content: the file itself, or a folder
    format's files (hidden ones aside), in name order; [] for a folder of no format."""
    if not path.is_dir():
        return [path]
    if not any(f.folder and f.sniff(path) for f in FORMATS.values()):
        return []
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
