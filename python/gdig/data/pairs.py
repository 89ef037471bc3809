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
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gdig.io.atomic import atomic_open
from gdig.io.errors import UsageError

__all__ = [
    "FILE_FIELD",
    "LINE_FIELD",
    "Pair",
    "PairsError",
    "iter_pairs",
    "read_pairs",
    "write_jsonl",
]

LINE_FIELD = "<line>"  # field name for problems of a whole line (bad JSON, too long, ...)
FILE_FIELD = "<file>"  # field name for problems of the whole file (no pairs at all)

_META_FIELDS = ("id", "src_lang", "tgt_lang")  # the fields besides the two texts
_BAD_LINE_POLICIES = ("error", "skip")
_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv"}


@dataclass(slots=True)
class Pair:
    """One translation example. ``extra`` holds every other input field, untouched."""

    id: str
    src: str
    tgt: str
    src_lang: str | None = None
    tgt_lang: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Line of the input file the pair came from (for messages); not part of its identity.
    line: int | None = field(default=None, compare=False, repr=False)
    # Names the texts had in the input (``--src-field``/``--tgt-field``); ``to_record``
    # writes them back under these names. Presentation only, not part of the identity.
    src_field: str = field(default="src", compare=False, repr=False)
    tgt_field: str = field(default="tgt", compare=False, repr=False)

    def to_record(self) -> dict[str, Any]:
        """All input fields as a JSON-ready dict (languages only when known).

        The texts go under the field names they were read from (``src``/``tgt`` unless
        the reader was given others), so reading the output back with the same options
        gives the same pair.
        """
        rec: dict[str, Any] = {"id": self.id}
        if self.src_lang is not None:
            rec["src_lang"] = self.src_lang
        if self.tgt_lang is not None:
            rec["tgt_lang"] = self.tgt_lang
        rec[self.src_field] = self.src
        rec[self.tgt_field] = self.tgt
        rec.update(self.extra)
        return rec


class PairsError(UsageError):
    """A bad input line or file; ``str()`` names the file, line and field (exit status 2)."""

    def __init__(self, path: str, line: int, field_name: str, reason: str, hint: str) -> None:
        self.path = path
        self.line = line
        self.field = field_name
        self.reason = reason
        self.hint = hint
        super().__init__(f"{path}:{line}: field '{field_name}': {reason}; {hint}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable despite the 5-argument __init__
        return (type(self), (self.path, self.line, self.field, self.reason, self.hint))

    def as_skip_record(self) -> dict[str, Any]:
        return {"file": self.path, "line": self.line, "field": self.field, "reason": self.reason}


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


def _field_list(rec: dict[str, Any]) -> str:
    return ", ".join(str(k) for k in rec) if rec else "none"


def _check_field_names(src_field: Any, tgt_field: Any) -> None:
    for flag, value in (("src_field", src_field), ("tgt_field", tgt_field)):
        if not isinstance(value, str) or not value.strip():
            raise UsageError(
                f"{flag}={value!r} (--{flag.replace('_', '-')}): must be a non-empty field name"
            )
        if value in _META_FIELDS:
            raise UsageError(
                f"{flag}={value!r} (--{flag.replace('_', '-')}): {value!r} is a reserved "
                f"field ({', '.join(_META_FIELDS)}); name the field that holds the text"
            )
    if src_field == tgt_field:
        raise UsageError(
            f"src_field and tgt_field are both {src_field!r} (--src-field/--tgt-field): "
            "name two different fields"
        )


def _check_lang(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise UsageError(
            f"{name}={value!r} (--{name.replace('_', '-')}): must be a language code such as "
            '"en", or None'
        )
    return value.strip() or None


class _LineParser:
    """Turns one decoded line into a Pair; raises PairsError naming the field."""

    def __init__(
        self,
        path: Path,
        fmt: str,
        *,
        src_field: str = "src",
        tgt_field: str = "tgt",
        src_lang: str | None = None,
        tgt_lang: str | None = None,
    ) -> None:
        self.path = path
        self.fmt = fmt
        self.stem = Path(path.name.removesuffix(".gz")).stem
        self.tsv_columns: list[str] | None = None  # from the header, when there is one
        self.first_content_line = True
        self.src_field = src_field
        self.tgt_field = tgt_field
        self.default_lang = {"src_lang": src_lang, "tgt_lang": tgt_lang}
        self.core = (*_META_FIELDS, src_field, tgt_field)
        # a TSV header's names, lower-cased, that mean one of the core fields
        self.core_by_lower = {name.lower(): name for name in self.core}

    def error(self, line: int, field_name: str, reason: str, hint: str) -> PairsError:
        return PairsError(str(self.path), line, field_name, reason, hint)

    def parse(self, line_no: int, text: str) -> Pair | None:
        """Return a Pair, or None for a header line."""
        first = self.first_content_line
        self.first_content_line = False
        if self.fmt == "jsonl":
            return self._from_record(line_no, self._json_record(line_no, text, first))
        cells = text.split("\t")
        head = [c.strip().lower() for c in cells[:2]]
        if first and len(cells) >= 2 and head == [self.src_field.lower(), self.tgt_field.lower()]:
            names = [c.strip() for c in cells]
            self._set_header(line_no, [self.core_by_lower.get(n.lower(), n) for n in names])
            return None
        return self._from_record(line_no, self._tsv_record(line_no, cells))

    def _json_record(self, line_no: int, text: str, first: bool) -> dict[str, Any]:
        if first and text.lstrip().startswith("["):
            raise self.error(
                line_no,
                LINE_FIELD,
                "this looks like a JSON array, not JSON Lines",
                "write one object per line, e.g. `jq -c '.[]' in.json > in.jsonl`",
            )
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise self.error(
                line_no,
                LINE_FIELD,
                f"malformed JSON ({e.msg} at column {e.colno})",
                "fix the line so that it is one complete JSON object",
            ) from None
        if not isinstance(obj, dict):
            raise self.error(
                line_no,
                LINE_FIELD,
                f"expected a JSON object, got {type(obj).__name__}",
                f'write {{"{self.src_field}": ..., "{self.tgt_field}": ...}} on each line',
            )
        return obj

    def _set_header(self, line_no: int, names: list[str]) -> None:
        seen: set[str] = set()
        for name in names:
            if not name or name in seen:
                raise self.error(
                    line_no,
                    LINE_FIELD,
                    f"header column {name!r} is empty or repeated",
                    "give every header column a distinct name",
                )
            seen.add(name)
        self.tsv_columns = names

    def _tsv_record(self, line_no: int, cells: list[str]) -> dict[str, Any]:
        if self.tsv_columns is not None:
            if len(cells) != len(self.tsv_columns):
                raise self.error(
                    line_no,
                    LINE_FIELD,
                    f"{len(cells)} tab-separated columns, the header has {len(self.tsv_columns)}",
                    "give every line as many columns as the header (tabs inside text are "
                    "not allowed in TSV)",
                )
            return dict(zip(self.tsv_columns, cells, strict=True))
        if len(cells) < 2:
            raise self.error(
                line_no,
                self.tgt_field,
                "missing (no tab on this line)",
                "write src<TAB>tgt[<TAB>id]",
            )
        if len(cells) > 3:
            raise self.error(
                line_no,
                LINE_FIELD,
                f"{len(cells)} tab-separated columns, expected 2 or 3",
                "write src<TAB>tgt[<TAB>id], or add a header line naming the columns",
            )
        rec: dict[str, Any] = {self.src_field: cells[0], self.tgt_field: cells[1]}
        if len(cells) == 3 and cells[2] != "":
            rec["id"] = cells[2]
        return rec

    def _from_record(self, line_no: int, rec: dict[str, Any]) -> Pair:
        texts = {}
        for name, flag in ((self.src_field, "--src-field"), (self.tgt_field, "--tgt-field")):
            value = rec.get(name)
            if name not in rec:
                raise self.error(
                    line_no,
                    name,
                    "missing",
                    f"fields found: {_field_list(rec)}; give every line a '{name}' string, "
                    f"or pass {flag} to read the text from another field",
                )
            if not isinstance(value, str):
                raise self.error(
                    line_no,
                    name,
                    f"expected a string, got {type(value).__name__}",
                    f"make '{name}' a JSON string",
                )
            if not value.strip():
                raise self.error(
                    line_no, name, "empty", f"drop the line or fill in its '{name}' text"
                )
            texts[name] = value
        langs = {}
        for name in ("src_lang", "tgt_lang"):
            value = rec.get(name)
            if value is not None and not isinstance(value, str):
                raise self.error(
                    line_no,
                    name,
                    f"expected a string, got {type(value).__name__}",
                    f"make '{name}' a language code string such as \"en\", or leave it out",
                )
            langs[name] = value or self.default_lang[name]  # the record's own code wins
        return Pair(
            id=self._id(line_no, rec.get("id")),
            src=texts[self.src_field],
            tgt=texts[self.tgt_field],
            src_lang=langs["src_lang"],
            tgt_lang=langs["tgt_lang"],
            extra={k: v for k, v in rec.items() if k not in self.core},
            src_field=self.src_field,
            tgt_field=self.tgt_field,
        )

    def _id(self, line_no: int, value: Any) -> str:
        if value is None:
            return f"{self.stem}-{line_no}"
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and value.strip():
            return value
        raise self.error(
            line_no,
            "id",
            f"expected a non-empty string or integer, got {value!r}",
            "fix the id or leave it out (then the id is <file stem>-<line>)",
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
