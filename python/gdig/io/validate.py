"""Checks of option values shared by every config dataclass.

They raise :class:`OptionError` with the dataclass field's name; the CLI turns the field
into the flag or config key the user wrote (``--budget``, ``my.yaml: budget``).
"""

from __future__ import annotations

from typing import Any

from gdig.io.errors import UsageError


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


def one_of(name: str, value: Any, allowed: tuple[str, ...], none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if value not in allowed:
        extra = " or none" if none_ok else ""
        raise OptionError(name, f"use one of {', '.join(allowed)}{extra}; got {value!r}")


def at_least(obj: Any, low: float, *names: str) -> None:
    """Each ``obj.name`` (None allowed) must be >= ``low``."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < low:
            raise OptionError(name, f"must be >= {low:g}; got {value}")


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
