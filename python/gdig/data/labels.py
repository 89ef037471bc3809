"""Noise labels (``--label-field``), in one place: what a label value means, the check
that every pool pair has one, reading them for the scored candidates, and the counts per
kind of noise. The metrics over them (AUC, precision, recall) are
:mod:`gdig.select.metrics`'s."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gdig.data.pair import Pair
from gdig.data.pool import PoolIndex
from gdig.io.errors import UsageError

_CLEAN = "clean"
_TRUE_STRINGS = ("true", "1")
_FALSE_STRINGS = ("false", "0")
_LABEL_HINT = (
    "a noise label is 'clean' (not noise) or the kind of noise as a string (e.g. "
    "'misaligned'), true/false, or 1/0"
)


def is_noise(value: Any, where: str) -> bool:
    """Whether a ``--label-field`` value marks noise; ``where`` names the pair in errors.

    * a string: ``"clean"`` is not noise; ``"true"``/``"1"`` is, ``"false"``/``"0"`` is
      not; any other non-empty string is the kind of noise (``"misaligned"``). These
      words are matched ignoring case and surrounding whitespace.
    * a boolean, or the number 0 or 1: true/1 is noise, false/0 is not.

    Anything else (None, an empty string, other numbers, lists, objects) raises
    UsageError naming ``where`` and the value.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
        if value in (0, 1):
            return value == 1
    elif isinstance(value, str) and value.strip():
        word = value.strip().lower()
        if word in _TRUE_STRINGS:
            return True
        return not (word == _CLEAN or word in _FALSE_STRINGS)
    raise UsageError(f"{where}: noise label {value!r} is not usable; {_LABEL_HINT}")


def _where(pair: Pair, path: str) -> str:
    return f"{path}:{pair.line}" if pair.line is not None else f"{path}: pair {pair.id!r}"


def check_label_field(pairs: Sequence[Pair], field: str, path: str) -> list[bool]:
    """Check that every pair has a usable noise label in ``field``; return the labels.

    ``field`` may be any input field (usually one kept in ``Pair.extra``). The first
    pair that lacks it or holds a bad value raises UsageError naming ``path``:line (or
    the pair's id when its line is unknown), the field, and the fields that pair has.
    Returns :func:`is_noise` of every pair, in order.
    """
    if not isinstance(field, str) or not field:
        raise UsageError(f"--label-field {field!r}: give the name of the pool's label field")
    labels = []
    for pair in pairs:
        value = pair.extra[field] if field in pair.extra else pair.to_record().get(field)
        where = f"{_where(pair, path)}: field '{field}'"
        if value is None:
            rec = pair.to_record()  # leaves out unknown languages: src_lang=None is missing
            raise UsageError(
                f"{where}: {'null' if field in rec else 'missing'}; fields found: "
                f"{', '.join(rec)}; give every pool pair a label, or pass --label-field "
                "with the field that holds them"
            )
        try:
            labels.append(is_noise(value, where))
        except UsageError as err:
            raise UsageError(f"{err} (fields found: {', '.join(pair.to_record())})") from None
    return labels


def label_values(pool: PoolIndex, rows: np.ndarray, field: str) -> list[Any]:
    """The ``field`` value of each candidate's pair, in candidate order: one pass over the
    pool in file order, keeping one shared object per distinct value."""
    order = np.argsort(rows, kind="stable")
    out: list[Any] = [None] * len(rows)
    shared: dict[Any, Any] = {}
    for start in range(0, len(order), 4096):
        part = order[start : start + 4096]
        for k, pair in zip(part.tolist(), pool.take(rows[part]), strict=True):
            value = pair.extra[field] if field in pair.extra else pair.to_record().get(field)
            try:
                value = shared.setdefault(value, value)
            except TypeError:  # unhashable (a list): kept as it is; is_noise rejects it
                pass
            out[k] = value
    return out


def pool_labels(
    pool: PoolIndex, rows: np.ndarray, field: str, path: str
) -> tuple[list[Any], np.ndarray]:
    """``(values, is_noise)`` of the ``field`` label of the pool pairs at ``rows`` (in
    ``rows`` order); a pair without a usable label raises, naming its line and fields."""
    values = label_values(pool, rows, field)
    lines = pool.lines[rows]
    labels = np.empty(len(values), dtype=bool)
    for i, value in enumerate(values):
        if value is None:  # a pair without the field: the error lists the fields it has
            check_label_field(pool.take(rows[i : i + 1]), field, path)
        labels[i] = is_noise(value, f"{path}:{lines[i]}")
    return values, labels


def noise_kinds(
    values: list[Any], labels: np.ndarray, passed: np.ndarray, selected: np.ndarray
) -> dict[str, dict[str, int]]:
    """Per label value (the noise kind; booleans as clean/noise): how many pairs the pool
    has, how many passed quality, how many were selected."""
    kinds: dict[str, dict[str, int]] = {}
    for i, (value, noisy) in enumerate(zip(values, labels, strict=True)):
        kind = str(value).strip() if isinstance(value, str) else ("noise" if noisy else "clean")
        row = kinds.setdefault(kind, {"pool": 0, "passed quality": 0, "selected": 0})
        row["pool"] += 1
        row["passed quality"] += int(passed[i])
        row["selected"] += int(selected[i])
    return dict(sorted(kinds.items()))
