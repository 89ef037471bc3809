"""Checks of option values shared by every config dataclass.

They raise :class:`OptionError` with the dataclass field's name; the CLI turns the field
into the flag or config key the user wrote (``--budget``, ``my.yaml: budget``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from gdig.io.errors import UsageError

log = logging.getLogger("gdig")


class OptionError(UsageError):
    """An option with a bad value; ``name`` is the dataclass field."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"--{name.replace('_', '-')}: {detail}")
        self.name = name
        self.detail = detail

    def with_message(self, where: str) -> OptionError:
        """The same error, its field named as the user wrote it (``--budget``)."""
        self.args = (f"{where}: {self.detail}",)
        return self


def read_saved(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Saved option values (a manifest's config, a selection file) for dataclass ``cls``.

    A value under a field's old name (its metadata ``was``) is read as the field's, with
    a deprecation note; names that are no field of ``cls`` are dropped.
    """
    out = {}
    for f in dataclasses.fields(cls):
        old = f.metadata.get("was")
        if f.name in values:
            out[f.name] = values[f.name]
        elif old is not None and old in values:
            log.warning("%s: '%s' is the old name of '%s'; read as it", where, old, f.name)
            out[f.name] = values[old]
    return out


def one_of(name: str, value: Any, allowed: tuple[str, ...], none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if value not in allowed:
        extra = " or none" if none_ok else ""
        hint = closest(str(value), allowed)
        hint = f" (did you mean {hint!r}?)" if hint else ""
        raise OptionError(name, f"use one of {', '.join(allowed)}{extra}; got {value!r}{hint}")


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``word`` (leading dashes aside), or None if none is close:
    the "did you mean" of every option and field name a user can mistype."""
    import difflib

    bare = {c.lstrip("-"): c for c in candidates}
    close = difflib.get_close_matches(word.lstrip("-"), list(bare), n=1, cutoff=0.6)
    return bare[close[0]] if close else None


def at_least(obj: Any, low: float, *names: str) -> None:
    """Each ``obj.name`` (None allowed) must be >= ``low``."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < low:
            raise OptionError(name, f"must be >= {low:g}; got {value}")


def count_or_fraction(text: str) -> int | float:
    """A flag's ``40`` (a count), ``0.15`` (a fraction) or ``15%`` (a percentage, read as
    the fraction 0.15): an int is a count, a float a fraction (``1.0`` = all)."""
    import argparse

    raw = str(text).strip()
    try:
        if raw.endswith("%"):
            return float(raw[:-1]) / 100
        return int(raw) if raw.lstrip("+-").isdigit() else float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of pairs (40), a fraction (0.15) or a percentage (15%); "
            f"got {text!r}"
        ) from None


def check_count_or_fraction(name: str, value: int | float) -> None:
    """A count must be >= 1, a fraction in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptionError(name, f"expected a count or a fraction, got {value!r}")
    if isinstance(value, int) and value < 1:
        raise OptionError(name, f"must be >= 1 (or a fraction such as 0.15); got {value}")
    if isinstance(value, float) and not 0.0 < value <= 1.0:
        raise OptionError(
            name, f"a fraction must be in (0, 1] (a count is a whole number); got {value:g}"
        )


def check_budget(budget: int | float, n: int, what: str) -> None:
    """A budget given as a count must fit in the pool (``what``: "the pool (p.jsonl: 250
    pairs)"); a fraction always does."""
    if isinstance(budget, int) and not isinstance(budget, bool) and budget > n:
        raise UsageError(
            f"--budget {budget} is larger than {what}; lower --budget, or give a share of "
            "the pool: --budget 0.15 or 15%"
        )


def folder_name(name: str, value: str | None) -> None:
    """A name that becomes one folder (``selections/NAME``): letters, digits, ``._-``."""
    import re

    if value is not None and (not re.fullmatch(r"[A-Za-z0-9._-]+", value) or value in (".", "..")):
        raise OptionError(name, f"use letters, digits, '.', '_' and '-' only; got {value!r}")


def parse_device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` (``cuda:01`` -> ``cuda:1``): the one check of a device
    string, needing no GPU (:func:`gdig.model.check_device_available` checks it exists)."""
    if isinstance(text, str):
        if text in ("cpu", "cuda"):
            return text
        head, _, index = text.partition(":")
        if head == "cuda" and index.isdigit() and index.isascii():
            return f"cuda:{int(index)}"
    raise OptionError("device", f"use cpu, cuda or cuda:N; got {text!r}")
