"""Turning one JSONL or TSV line into a :class:`~gdig.data.pair.Pair`, with errors that
name the file, line and field (and the fields found)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gdig.data.pair import LINE_FIELD, META_FIELDS, Pair, PairsError
from gdig.io.errors import UsageError


def _field_list(rec: dict[str, Any]) -> str:
    return ", ".join(str(k) for k in rec) if rec else "none"


def check_field_names(src_field: Any, tgt_field: Any) -> None:
    for flag, value in (("src_field", src_field), ("tgt_field", tgt_field)):
        if not isinstance(value, str) or not value.strip():
            raise UsageError(
                f"{flag}={value!r} (--{flag.replace('_', '-')}): must be a non-empty field name"
            )
        if value in META_FIELDS:
            raise UsageError(
                f"{flag}={value!r} (--{flag.replace('_', '-')}): {value!r} is a reserved "
                f"field ({', '.join(META_FIELDS)}); name the field that holds the text"
            )
    if src_field == tgt_field:
        raise UsageError(
            f"src_field and tgt_field are both {src_field!r} (--src-field/--tgt-field): "
            "name two different fields"
        )


def check_lang(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise UsageError(
            f"{name}={value!r} (--{name.replace('_', '-')}): must be a language code such as "
            '"en", or None'
        )
    return value.strip() or None


class LineParser:
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
        self.core = (*META_FIELDS, src_field, tgt_field)
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

    def parse_record(self, line_no: int, rec: dict[str, Any]) -> Pair:
        """A Pair from an already decoded record (a Parquet row)."""
        self.first_content_line = False
        return self._from_record(line_no, rec)

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
