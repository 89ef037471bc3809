"""Checks of input pairs that a run makes before any model pass.

* :func:`is_noise` / :func:`check_label_field`: the ``--label-field`` noise labels.
* :func:`compare_seeds_pool`: warnings about seeds that do not fit the pool.

Pure functions: they raise :class:`~gdig.io.errors.UsageError` or return messages, and
print nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from gdig.data.pairs import Pair
from gdig.io.errors import UsageError

__all__ = ["check_label_field", "compare_seeds_pool", "is_noise"]

_CLEAN = "clean"
_TRUE_STRINGS = ("true", "1")
_FALSE_STRINGS = ("false", "0")
_LABEL_HINT = (
    "a noise label is 'clean' (not noise) or the kind of noise as a string (e.g. "
    "'misaligned'), true/false, or 1/0"
)
_MAX_IDS = 5


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


def _direction(counts: Counter) -> tuple[tuple[str, str], int, int] | None:
    """The most common (src_lang, tgt_lang) of ``counts`` (of the pairs that have both),
    its count and the number of such pairs; None when no pair has both."""
    if not counts:
        return None
    # most common; among ties the alphabetically first, so the message is stable
    (best, n) = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return best, n, sum(counts.values())  # type: ignore[return-value]


def _key(pair: Pair) -> tuple[str, str]:
    return pair.src.strip(), pair.tgt.strip()


def compare_seeds_pool(seeds: Sequence[Pair], pool: Iterable[Pair]) -> list[str]:
    """Warnings about the seeds as a yardstick for the pool (empty when all is well).

    * When seeds and pool both carry languages and the seeds' most common direction
      (src_lang->tgt_lang) differs from the pool's, one message naming both.
    * When seeds also occur in the pool (same src and same tgt after stripping
      whitespace at both ends), one message with their number and up to 5 ids.

    One pass over the pool, holding only the seeds' texts (the pool may be millions).
    """
    warnings: list[str] = []
    seed_keys = {_key(s) for s in seeds}
    pool_langs: Counter = Counter()
    pool_id: dict[tuple[str, str], str] = {}  # first pool pair with a seed's texts
    for p in pool:
        if p.src_lang and p.tgt_lang:
            pool_langs[(p.src_lang, p.tgt_lang)] += 1
        if (key := _key(p)) in seed_keys:
            pool_id.setdefault(key, p.id)
    seed_langs = Counter((s.src_lang, s.tgt_lang) for s in seeds if s.src_lang and s.tgt_lang)
    seed_dir, pool_dir = _direction(seed_langs), _direction(pool_langs)
    if seed_dir is not None and pool_dir is not None and seed_dir[0] != pool_dir[0]:
        (s_src, s_tgt), s_n, s_all = seed_dir
        (p_src, p_tgt), p_n, p_all = pool_dir
        warnings.append(
            f"the seeds translate {s_src}->{s_tgt} ({s_n} of {s_all} with languages) but "
            f"the pool translates {p_src}->{p_tgt} ({p_n} of {p_all}); the gradients of one "
            "direction say little about the other: check that seeds and pool match (swap "
            "src/tgt or fix --src-lang/--tgt-lang)"
        )
    shared = [(s.id, pool_id[key]) for s in seeds if (key := _key(s)) in pool_id]
    if shared:
        shown = ", ".join(
            f"{sid!r}" if sid == pid else f"{sid!r} (pool {pid!r})"
            for sid, pid in shared[:_MAX_IDS]
        )
        more = f" and {len(shared) - _MAX_IDS} more" if len(shared) > _MAX_IDS else ""
        warnings.append(
            f"{len(shared)} of {len(seeds)} seed pairs also occur in the pool (same src and "
            f"tgt): {shown}{more}; they will look like the best pool pairs only because they "
            "are seeds: drop them from the pool or the seeds"
        )
    return warnings
