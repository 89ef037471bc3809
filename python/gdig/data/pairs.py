"""Translation pairs: read them from JSONL or TSV, write them back as JSONL.

Input formats (chosen by extension, ``.gz`` allowed on top; otherwise sniffed):

* JSONL (``.jsonl``, ``.json``): one object a line with string fields ``src`` and
  ``tgt``; optional ``id``, ``src_lang``, ``tgt_lang``; any other field is kept in
  ``Pair.extra`` so that outputs lose nothing.
* TSV (``.tsv``): ``src<TAB>tgt[<TAB>id]``, or with a header line starting
  ``src<TAB>tgt`` whose column names are then used as field names.

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

import gzip
import json
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from gdig.data.lineparser import _check_field_names, _check_lang, _LineParser
from gdig.data.pair import _BAD_LINE_POLICIES, _FORMATS, FILE_FIELD, LINE_FIELD, Pair, PairsError
from gdig.io.atomic import atomic_open

__all__ = [
    "FILE_FIELD",
    "LINE_FIELD",
    "Pair",
    "PairsError",
    "iter_pairs",
    "read_pairs",
    "write_jsonl",
]


def _open_binary(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _format_from_name(path: Path) -> str | None:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return _FORMATS.get(suffixes[-1].lower()) if suffixes else None


def _raw_lines(fh: IO[bytes], max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """Yield (line_no, content without newline), or (line_no, None) for a too-long line.

    Reads at most ``max_line_bytes + 2`` bytes at a time so a runaway line (e.g. a
    binary file without newlines) never has to sit in memory whole.
    """
    limit = max_line_bytes + 2  # room for "\r\n"
    line_no = 0
    while True:
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
            yield line_no, None
            continue
        if content.endswith(b"\r"):
            content = content[:-1]
        yield line_no, (content if len(content) <= max_line_bytes else None)


def _sniff(path: Path, max_line_bytes: int) -> str:
    with _open_binary(path) as fh:
        for _, content in _raw_lines(fh, max_line_bytes):
            if content is None:
                break
            text = content.lstrip(b"\xef\xbb\xbf").strip()
            if not text:
                continue
            if text.startswith((b"{", b"[")):
                return "jsonl"
            if b"\t" in text:
                return "tsv"
            break
    raise PairsError(
        str(path),
        0,
        FILE_FIELD,
        "cannot tell the format from the extension or the first line",
        "name the file .jsonl (one JSON object a line) or .tsv (src<TAB>tgt[<TAB>id])",
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
    """Stream the pairs of a JSONL or TSV file, one at a time.

    ``bad_lines="error"`` raises PairsError at the first bad line. ``"skip"`` drops
    bad lines but appends ``{file, line, field, reason}`` to ``skipped`` (or, when
    ``skipped`` is None, warns with a count at the end); of lines that repeat an
    id, the first is kept. Blank lines are ignored. A file with no pairs at all is
    an error under either policy. ``fmt`` ("jsonl" or "tsv") overrides detection.
    Only the set of ids seen is held in memory.

    ``src_field``/``tgt_field`` name the fields (JSONL keys, TSV header columns) that
    hold the texts; a headerless TSV's first two columns are given these names. The
    pairs remember them, so ``Pair.to_record`` writes the texts back under the same
    names. ``src_lang``/``tgt_lang`` are language codes for records that have none
    (e.g. TSV); a record's own non-empty code wins. Bad values raise UsageError.
    """
    if bad_lines not in _BAD_LINE_POLICIES:
        raise ValueError(f"bad_lines={bad_lines!r}: use one of {_BAD_LINE_POLICIES}")
    if fmt is not None and fmt not in ("jsonl", "tsv"):
        raise ValueError(f"fmt={fmt!r}: use 'jsonl', 'tsv' or None (detect)")
    if max_line_bytes < 1:
        raise ValueError(f"max_line_bytes={max_line_bytes}: must be positive")
    _check_field_names(src_field, tgt_field)
    src_lang = _check_lang("src_lang", src_lang)
    tgt_lang = _check_lang("tgt_lang", tgt_lang)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; check the path")
    fmt = fmt or _format_from_name(path) or _sniff(path, max_line_bytes)
    parser = _LineParser(
        path, fmt, src_field=src_field, tgt_field=tgt_field, src_lang=src_lang, tgt_lang=tgt_lang
    )
    own_skips: list[dict[str, Any]] = [] if skipped is None else skipped
    n_skipped_before = len(own_skips)
    first_line_of_id: dict[str, int] = {}
    n_pairs = 0

    def bad(err: PairsError) -> None:
        if bad_lines == "error":
            raise err
        own_skips.append(err.as_skip_record())

    with _open_binary(path) as fh:
        for line_no, content in _raw_lines(fh, max_line_bytes):
            if content is None:
                bad(
                    parser.error(
                        line_no,
                        LINE_FIELD,
                        f"line longer than max_line_bytes={max_line_bytes}",
                        "check that this is a text file of pairs, or raise max_line_bytes",
                    )
                )
                continue
            if line_no == 1:
                content = content.removeprefix(b"\xef\xbb\xbf")  # UTF-8 BOM
            try:
                text = content.decode("utf-8")
            except UnicodeDecodeError as e:
                bad(
                    parser.error(
                        line_no,
                        LINE_FIELD,
                        f"not valid UTF-8 (byte {content[e.start]:#04x} at offset {e.start})",
                        "re-encode the file as UTF-8, e.g. `iconv -f <encoding> -t utf-8`",
                    )
                )
                continue
            if not text.strip():
                continue
            try:
                pair = parser.parse(line_no, text)
            except PairsError as err:
                bad(err)
                continue
            if pair is None:  # TSV header
                continue
            first = first_line_of_id.get(pair.id)
            if first is not None:
                bad(
                    parser.error(
                        line_no,
                        "id",
                        f"duplicate id {pair.id!r} (first on line {first}, again on line "
                        f"{line_no})",
                        "give every pair a distinct id",
                    )
                )
                continue
            first_line_of_id[pair.id] = line_no
            pair.line = line_no
            n_pairs += 1
            yield pair

    n_skipped = len(own_skips) - n_skipped_before
    if n_pairs == 0:
        what = f"no pairs ({n_skipped} bad lines skipped)" if n_skipped else "no pairs"
        raise PairsError(
            str(path), 0, FILE_FIELD, what, "check that this is the intended file of pairs"
        )
    if skipped is None and n_skipped:
        first = own_skips[0]
        warnings.warn(
            f"{path}: skipped {n_skipped} bad lines, first {first['file']}:{first['line']}: "
            f"field '{first['field']}': {first['reason']} (pass skipped=[] to get them all)",
            stacklevel=2,
        )


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


def write_jsonl(path: str | os.PathLike[str], records: Iterable[dict[str, Any] | Pair]) -> int:
    """Write records (dicts or Pairs) as UTF-8 JSONL, atomically; return how many.

    The file appears whole or not at all (:func:`gdig.io.atomic.atomic_open`).
    """
    n = 0
    with atomic_open(path) as fh:
        for rec in records:
            if isinstance(rec, Pair):
                rec = rec.to_record()
            fh.write(json.dumps(rec, ensure_ascii=False).encode("utf-8") + b"\n")
            n += 1
    return n
