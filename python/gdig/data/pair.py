"""A translation pair and the error naming a bad input line (file:line:field)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gdig.io.errors import UsageError

LINE_FIELD = "<line>"  # field name for problems of a whole line (bad JSON, too long, ...)
FILE_FIELD = "<file>"  # field name for problems of the whole file (no pairs at all)

META_FIELDS = ("id", "src_lang", "tgt_lang")  # the fields besides the two texts
BAD_LINE_POLICIES = ("error", "skip")


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
