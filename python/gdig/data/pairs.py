"""Translation pairs: read them from any format of :mod:`gdig.data.formats`, write them
back as JSONL.

Input formats (chosen by extension, ``.gz`` allowed on top of JSONL and TSV; otherwise
sniffed from the first bytes):

* JSONL (``.jsonl``, ``.json``): one object a line with string fields ``src`` and
  ``tgt``; optional ``id``, ``src_lang``, ``tgt_lang``; any other field is kept in
  ``Pair.extra`` so that outputs lose nothing.
* TSV (``.tsv``): ``src<TAB>tgt[<TAB>id]``, or with a header line starting
  ``src<TAB>tgt`` whose column names are then used as field names.
* Parquet (``.parquet``, needs pyarrow): columns as JSONL's fields, read one row group
  at a time; row numbers (from 1) stand in for line numbers.
* A Hugging Face dataset folder (``Dataset.save_to_disk``; needs pyarrow, not
  ``datasets``): columns as Parquet's, memory-mapped.

The text fields may have other names (``src_field=``/``tgt_field=``, e.g. ``source`` and
``target``): the Pair still has ``.src``/``.tgt`` and remembers the names, so
:meth:`Pair.to_record` writes the record back under the names it was read with. Inputs
without languages (TSV) can be given them (``src_lang=``/``tgt_lang=``); a record's own
language wins.

Every problem is reported as ``"{path}:{line}: field '{field}': what; what to do"``.
Problems that concern a whole line rather than one field use the field name
``<line>``; the empty-file problem uses ``<file>``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gdig.data.formats import FORMATS, InputFormat, Unit, format_from_name, formats_text, sniff
from gdig.data.lineparser import LineParser, check_field_names, check_lang
from gdig.data.pair import BAD_LINE_POLICIES, FILE_FIELD, LINE_FIELD, Pair, PairsError
from gdig.io.atomic import atomic_open

__all__ = [
    "FILE_FIELD",
    "LINE_FIELD",
    "Pair",
    "PairsError",
    "ReadOptions",
    "iter_pairs",
    "read_pairs",
    "write_jsonl",
]


def parse_unit(parser: LineParser, unit: Unit, max_line_bytes: int) -> Pair | None:
    """The unit's Pair; None for a blank line or a TSV header; PairsError when bad."""
    line_no, _, content = unit
    if content is None:
        raise parser.error(
            line_no,
            LINE_FIELD,
            f"line longer than max_line_bytes={max_line_bytes}",
            "check that this is a text file of pairs, or raise max_line_bytes",
        )
    if isinstance(content, dict):
        pair = parser.parse_record(line_no, content)
    else:
        if line_no == 1:
            content = content.removeprefix(b"\xef\xbb\xbf")  # UTF-8 BOM
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as e:
            raise parser.error(
                line_no,
                LINE_FIELD,
                f"not valid UTF-8 (byte {content[e.start]:#04x} at offset {e.start})",
                "re-encode the file as UTF-8, e.g. `iconv -f <encoding> -t utf-8`",
            ) from None
        if not text.strip():
            return None
        pair = parser.parse(line_no, text)
    if pair is not None:
        pair.line = line_no
    return pair


@dataclass
class ReadOptions:
    """How a pairs file is read (see :func:`iter_pairs`)."""

    bad_lines: str = "error"
    max_line_bytes: int = 1_000_000
    fmt: str | None = None
    src_field: str = "src"
    tgt_field: str = "tgt"
    src_lang: str | None = None
    tgt_lang: str | None = None

    def checked(self) -> ReadOptions:
        if self.bad_lines not in BAD_LINE_POLICIES:
            raise ValueError(f"bad_lines={self.bad_lines!r}: use one of {BAD_LINE_POLICIES}")
        if self.fmt is not None and self.fmt not in FORMATS:
            raise ValueError(f"fmt={self.fmt!r}: use one of {', '.join(FORMATS)} or None (detect)")
        if self.max_line_bytes < 1:
            raise ValueError(f"max_line_bytes={self.max_line_bytes}: must be positive")
        check_field_names(self.src_field, self.tgt_field)
        return replace(
            self,
            src_lang=check_lang("src_lang", self.src_lang),
            tgt_lang=check_lang("tgt_lang", self.tgt_lang),
        )

    @property
    def format(self) -> InputFormat:
        return FORMATS[self.fmt or "jsonl"]

    def parser(self, path: Path) -> LineParser:
        return LineParser(
            path,
            self.fmt or "jsonl",
            src_field=self.src_field,
            tgt_field=self.tgt_field,
            src_lang=self.src_lang,
            tgt_lang=self.tgt_lang,
        )


def open_input(path: str | os.PathLike[str], opts: ReadOptions) -> tuple[Path, ReadOptions]:
    """The checked path and options with the format resolved (name, else first bytes)."""
    opts = opts.checked()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; check the path")
    fmt = FORMATS[opts.fmt] if opts.fmt else format_from_name(path) or sniff(path)
    if fmt is None or fmt.folder != path.is_dir():
        if path.is_dir():
            raise PairsError(
                str(path), 0, FILE_FIELD, "is a folder", f"give a file of pairs ({formats_text()})"
            )
        raise PairsError(
            str(path),
            0,
            FILE_FIELD,
            "cannot tell the format from the extension or the first line",
            "name the file .jsonl (one JSON object a line), .tsv (src<TAB>tgt[<TAB>id]) or "
            ".parquet",
        )
    return path, replace(opts, fmt=fmt.name)


def scan_pairs(
    path: Path, opts: ReadOptions, parser: LineParser, skips: list[dict[str, Any]]
) -> Iterator[tuple[Pair, int]]:
    """``(pair, offset)`` of every good unit, in file order, duplicates of ids included;
    bad units raise (``bad_lines="error"``) or are appended to ``skips``."""
    for unit in opts.format.scan(path, opts.max_line_bytes):
        try:
            pair = parse_unit(parser, unit, opts.max_line_bytes)
        except PairsError as err:
            if opts.bad_lines == "error":
                raise
            skips.append(err.as_skip_record())
            continue
        if pair is not None:
            yield pair, unit[1]


def duplicate_id_error(path: Path, pair_id: str, first: int, again: int) -> PairsError:
    return PairsError(
        str(path),
        again,
        "id",
        f"duplicate id {pair_id!r} (first on line {first}, again on line {again})",
        "give every pair a distinct id",
    )


def finish_scan(
    path: Path, n_pairs: int, own_skips: list[dict[str, Any]], n_before: int, warn: bool
) -> None:
    """The end-of-file checks: a file without pairs is an error; skips are warned about
    when the caller did not ask for them."""
    n_skipped = len(own_skips) - n_before
    if n_pairs == 0:
        what = f"no pairs ({n_skipped} bad lines skipped)" if n_skipped else "no pairs"
        raise PairsError(
            str(path), 0, FILE_FIELD, what, "check that this is the intended file of pairs"
        )
    if warn and n_skipped:
        first = own_skips[n_before]
        warnings.warn(
            f"{path}: skipped {n_skipped} bad lines, first {first['file']}:{first['line']}: "
            f"field '{first['field']}': {first['reason']} (pass skipped=[] to get them all)",
            stacklevel=3,
        )


def iter_pairs(
    path: str | os.PathLike[str],
    *,
    bad_lines: str = "error",
    max_line_bytes: int = 1_000_000,
    skipped: list[dict[str, Any]] | None = None,
    fmt: str | None = None,
    src_field: str = "src",
    tgt_field: str = "tgt",
    src_lang: str | None = None,
    tgt_lang: str | None = None,
) -> Iterator[Pair]:
    """Stream the pairs of a file (JSONL, TSV, Parquet, a saved dataset), one at a time.

    ``bad_lines="error"`` raises PairsError at the first bad line. ``"skip"`` drops
    bad lines but appends ``{file, line, field, reason}`` to ``skipped`` (or, when
    ``skipped`` is None, warns with a count at the end); of lines that repeat an
    id, the first is kept. Blank lines are ignored. A file with no pairs at all is
    an error under either policy. ``fmt`` (a name in ``gdig.data.formats.FORMATS``) overrides
    detection. Only the set of ids seen is held in memory (:func:`gdig.data.pool.open_pool`
    keeps less: a few numbers a pair). Table rows count as lines, from 1.

    ``src_field``/``tgt_field`` name the fields (JSONL keys, TSV header columns, Parquet
    columns) that hold the texts; a headerless TSV's first two columns are given these
    names. The pairs remember them, so ``Pair.to_record`` writes the texts back under the
    same names. ``src_lang``/``tgt_lang`` are language codes for records that have none
    (e.g. TSV); a record's own non-empty code wins. Bad values raise UsageError.
    """
    opts = ReadOptions(bad_lines, max_line_bytes, fmt, src_field, tgt_field, src_lang, tgt_lang)
    path, opts = open_input(path, opts)
    parser = opts.parser(path)
    own_skips: list[dict[str, Any]] = [] if skipped is None else skipped
    n_before = len(own_skips)
    first_line_of_id: dict[str, int] = {}
    n_pairs = 0
    for pair, _ in scan_pairs(path, opts, parser, own_skips):
        first = first_line_of_id.get(pair.id)
        if first is not None:
            err = duplicate_id_error(path, pair.id, first, pair.line or 0)
            if bad_lines == "error":
                raise err
            own_skips.append(err.as_skip_record())
            continue
        first_line_of_id[pair.id] = pair.line or 0
        n_pairs += 1
        yield pair
    finish_scan(path, n_pairs, own_skips, n_before, warn=skipped is None)


def read_pairs(
    path: str | os.PathLike[str],
    *,
    bad_lines: str = "error",
    max_line_bytes: int = 1_000_000,
    skipped: list[dict[str, Any]] | None = None,
    fmt: str | None = None,
    src_field: str = "src",
    tgt_field: str = "tgt",
    src_lang: str | None = None,
    tgt_lang: str | None = None,
) -> list[Pair]:
    """All pairs of a file as a list; see ``iter_pairs`` for formats and options."""
    return list(
        iter_pairs(
            path,
            bad_lines=bad_lines,
            max_line_bytes=max_line_bytes,
            skipped=skipped,
            fmt=fmt,
            src_field=src_field,
            tgt_field=tgt_field,
            src_lang=src_lang,
            tgt_lang=tgt_lang,
        )
    )


def jsonl_line(record: dict[str, Any]) -> bytes:
    """One record as a UTF-8 JSONL line (non-ASCII kept as is)."""
    return json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"


def write_jsonl(path: str | os.PathLike[str], records: Iterable[dict[str, Any] | Pair]) -> int:
    """Write records (dicts or Pairs) as UTF-8 JSONL, atomically; return how many.

    The file appears whole or not at all (:func:`gdig.io.atomic.atomic_open`).
    """
    n = 0
    with atomic_open(path) as fh:
        for rec in records:
            if isinstance(rec, Pair):
                rec = rec.to_record()
            fh.write(jsonl_line(rec))
            n += 1
    return n
