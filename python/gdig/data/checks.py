"""Checks of input pairs that a run makes before any model pass: :func:`compare_seeds_pool`
warns about seeds that do not fit the pool. (The ``--label-field`` noise labels are
:mod:`gdig.data.labels`'.)

Pure functions: they raise :class:`~gdig.io.errors.UsageError` or return messages, and
print nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from gdig.data.pairs import Pair

__all__ = ["compare_seeds_pool"]

_MAX_IDS = 5


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
    * When pool pairs name no target language, one message: the prompt then asks for
      English (a TSV pool without --tgt-lang, say).
    * When seeds also occur in the pool (same src and same tgt after stripping
      whitespace at both ends), one message with their number and up to 5 ids.

    One pass over the pool, holding only the seeds' texts (the pool may be millions).
    """
    warnings: list[str] = []
    seed_keys = {_key(s) for s in seeds}
    pool_langs: Counter = Counter()
    pool_id: dict[tuple[str, str], str] = {}  # first pool pair with a seed's texts
    n_pool = no_target = 0
    for p in pool:
        n_pool += 1
        no_target += not p.tgt_lang
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
    if no_target:  # the prompt then names no language: "into English" by default
        warnings.append(
            f"{no_target} of {n_pool} pool pairs name no target language (tgt_lang): their "
            "prompt asks for a translation into English; pass --tgt-lang (and --src-lang), "
            "or add the fields, if that is wrong"
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
