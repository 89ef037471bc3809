"""Rule-based cleaning of translation pairs, the way MT engineers clean a corpus today.

``--selector rules`` (rule failures out, then a random budget) and ``--prefilter rules``
(rule failures out of the pool before any model pass) both use :func:`apply_rules`.
The rules are OpusFilter's filters (the ``opusfilter`` package, ``pip install
'gdig[rules]'``): a maintained library that MT pipelines already use, rather than rules
of our own; its language identifier is lingua, whose models ship inside its wheel, so
nothing is downloaded at run time. Each rule's threshold is an option
(:class:`RulesConfig`); the defaults are OpusFilter's own where it has one, and were
checked on clean Tatoeba, Ding and gettext pairs (``../shared/data``) to fail few of
them (language identification: 1.5% of clean Tatoeba targets; see METHOD.md §5.4).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from gdig.io.errors import UsageError
from gdig.io.validate import OptionError, one_of

log = logging.getLogger("gdig")

# name -> what a failure means (the report and the manifest count each rule's failures)
RULES: dict[str, str] = {
    "length": "empty, or longer than --rule-max-length (words; characters for zh/ja/ko)",
    "length_ratio": "one side more than --rule-max-ratio times as long as the other",
    "copy": "target a near copy of the source (character similarity > --rule-max-similarity)",
    "language": "a side not identified as its language (lingua confidence < --rule-min-language)",
    "charset": "a side with fewer than --rule-min-script of its letters in its language's script",
    "alphabet": "a side with fewer than --rule-min-alpha of its characters letters "
    "(e.g. a target of '...')",
}
PREFILTERS = ("none", "rules")
LANGUAGE_MODES = ("high", "low")
# Lengths count characters for languages written without spaces.
CHAR_LANGUAGES = frozenset({"zh", "ja", "ko", "th"})
# The script of each language's letters (OpusFilter's CharacterScoreFilter names).
SCRIPTS = {
    "zh": "Han",
    "ja": "Han",
    "ko": "Hangul",
    "ru": "Cyrillic",
    "uk": "Cyrillic",
    "ar": "Arabic",
    "el": "Greek",
    "he": "Hebrew",
    "th": "Thai",
    **{
        lang: "Latin"
        for lang in "en de fr es it pt nl pl sv tr cs da fi hu ro no et lt lv sk sl".split()
    },
}
# Languages lingua chooses among besides the pair's own: without other candidates, a
# German target in a zh-en pool would be called English (the closer of the two).
LANGUAGE_CANDIDATES = ("en", "de", "fr", "es", "it", "pt", "nl", "ru", "zh", "ja", "ko", "ar")


@dataclass
class RulesConfig:
    """Rule-based cleaning (OpusFilter filters) for --selector rules and --prefilter rules."""

    prefilter: str = field(
        default="none",
        metadata={
            "choices": PREFILTERS,
            "help": "rules: drop the pairs that fail a rule before any model pass (they are "
            "never scored; the manifest and report count each rule's drops); none: keep all.",
        },
    )
    rules: str = field(
        default=",".join(RULES),
        metadata={"help": "comma-separated rules to apply, of " + ", ".join(RULES)},
    )
    rule_max_length: int = field(
        default=200,
        metadata={"help": "length rule: most words a side may have (characters for zh/ja/ko/th)"},
    )
    rule_max_ratio: float = field(
        default=3.0, metadata={"help": "length_ratio rule: longest/shortest side allowed"}
    )
    rule_max_similarity: float = field(
        default=0.9,
        metadata={"help": "copy rule: highest source-target character similarity allowed"},
    )
    rule_min_language: float = field(
        default=0.1,
        metadata={"help": "language rule: lowest lingua confidence in a side's language"},
    )
    rule_language_mode: str = field(
        default="high",
        metadata={
            "choices": LANGUAGE_MODES,
            "help": "lingua's accuracy mode (high: ~4 ms a pair, 1.5%% of clean short "
            "targets fail; low: ~0.5 ms, 8%% fail)",
        },
    )
    rule_min_script: float = field(
        default=0.5,
        metadata={"help": "charset rule: lowest share of a side's letters in its script"},
    )
    rule_min_alpha: float = field(
        default=0.5,
        metadata={
            "help": "alphabet rule: lowest share of a side's non-space characters that are letters"
        },
    )

    def __post_init__(self) -> None:
        one_of("prefilter", self.prefilter, PREFILTERS)
        one_of("rule_language_mode", self.rule_language_mode, LANGUAGE_MODES)
        bad = [r for r in self.enabled if r not in RULES]
        if bad:
            raise OptionError("rules", f"unknown rule(s) {bad}; expected some of {list(RULES)}")
        if self.rule_max_length < 1:
            raise OptionError("rule_max_length", f"must be >= 1; got {self.rule_max_length}")
        if self.rule_max_ratio < 1:
            raise OptionError("rule_max_ratio", f"must be >= 1; got {self.rule_max_ratio}")
        for name in (
            "rule_max_similarity",
            "rule_min_language",
            "rule_min_script",
            "rule_min_alpha",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise OptionError(name, f"must be in [0, 1]; got {value}")

    @property
    def enabled(self) -> list[str]:
        return [r.strip() for r in self.rules.split(",") if r.strip()]


@dataclass
class RuleFlags:
    """Which pairs fail which rule: ``failed[rule]`` is a boolean array over the pairs."""

    failed: dict[str, np.ndarray]
    n: int
    skipped: dict[str, int]  # rule -> pairs it could not judge (no language given)

    @property
    def ok(self) -> np.ndarray:
        """Pairs that fail no rule."""
        bad = np.zeros(self.n, dtype=bool)
        for f in self.failed.values():
            bad |= f
        return ~bad

    def counts(self) -> dict[str, int]:
        """Pairs failing each rule (a pair failing two rules counts in both), and the
        pairs removed in all (``removed``)."""
        out = {rule: int(f.sum()) for rule, f in self.failed.items()}
        out["removed"] = int((~self.ok).sum())
        return out

    def take(self, rows: np.ndarray) -> RuleFlags:
        """The flags of these pairs, in this order."""
        rows = np.asarray(rows, dtype=np.int64)
        failed = {rule: f[rows] for rule, f in self.failed.items()}
        return RuleFlags(failed=failed, n=len(rows), skipped=dict(self.skipped))

    def summary(self) -> str:
        c = self.counts()
        each = ", ".join(f"{rule} {c[rule]}" for rule in self.failed)
        return f"{c['removed']} of {self.n} pairs fail a rule ({each})"


def _opusfilter():
    try:
        from opusfilter import filters
    except ImportError as exc:
        raise UsageError(
            "rule-based cleaning needs OpusFilter: pip install 'gdig[rules]' (or pip install "
            f"opusfilter); import failed: {exc}"
        ) from None
    return filters


def _filters(cfg: RulesConfig, src_lang: str | None, tgt_lang: str | None) -> dict:
    """rule -> an OpusFilter filter for one language direction (None: cannot judge)."""
    f = _opusfilter()
    langs = (src_lang, tgt_lang)
    units = ["char" if lang in CHAR_LANGUAGES else "word" for lang in langs]
    known = all(langs)
    out = {}
    for rule in cfg.enabled:
        if rule == "length":
            out[rule] = f.LengthFilter(min_length=1, max_length=cfg.rule_max_length, unit=units)
        elif rule == "length_ratio":
            out[rule] = f.LengthRatioFilter(threshold=cfg.rule_max_ratio, unit=units)
        elif rule == "copy":
            out[rule] = f.SimilarityFilter(threshold=cfg.rule_max_similarity, lowercase=True)
        elif rule == "language":
            cands = sorted({*LANGUAGE_CANDIDATES, *langs}) if known else None
            out[rule] = (
                f.LinguaFilter(
                    languages=list(langs),
                    thresholds=[cfg.rule_min_language] * 2,
                    langid_languages=cands,
                    lingua_mode=cfg.rule_language_mode,
                )
                if known
                else None
            )
        elif rule == "charset":
            scripts = [SCRIPTS.get(lang or "") for lang in langs]
            out[rule] = (
                f.CharacterScoreFilter(scripts=scripts, thresholds=[cfg.rule_min_script] * 2)
                if all(scripts)
                else None
            )
        elif rule == "alphabet":
            out[rule] = f.AlphabetRatioFilter(threshold=cfg.rule_min_alpha, exclude_whitespace=True)
    return out


def apply_rules(
    pairs: Iterable[tuple[str, str, str | None, str | None]],
    n: int,
    cfg: RulesConfig,
    chunk: int = 4096,
) -> RuleFlags:
    """Judge ``n`` pairs given as ``(src, tgt, src_lang, tgt_lang)``, streamed a chunk at a
    time (memory: one boolean a pair and rule). Pairs without languages cannot be judged
    by the language and charset rules: they pass those, and :attr:`RuleFlags.skipped`
    counts them."""
    failed = {rule: np.zeros(n, dtype=bool) for rule in cfg.enabled}
    skipped = dict.fromkeys(cfg.enabled, 0)
    cache: dict[tuple, dict] = {}
    buf: list[tuple] = []
    start = 0

    def flush() -> None:
        nonlocal start
        by_dir: dict[tuple, list[int]] = {}
        for j, p in enumerate(buf):
            by_dir.setdefault((p[2], p[3]), []).append(j)
        for direction, idx in by_dir.items():
            if direction not in cache:
                cache[direction] = _filters(cfg, *direction)
            texts = [(buf[j][0], buf[j][1]) for j in idx]
            rows = start + np.asarray(idx, dtype=np.int64)
            for rule, filt in cache[direction].items():
                if filt is None:
                    skipped[rule] += len(idx)
                    continue
                keep = np.fromiter(
                    (bool(filt.accept(s)) for s in filt.score(texts)), bool, len(texts)
                )
                failed[rule][rows] = ~keep
        start += len(buf)
        buf.clear()

    for p in pairs:
        buf.append(p)
        if len(buf) >= chunk:
            flush()
    if buf:
        flush()
    if start != n:
        raise ValueError(f"apply_rules: expected {n} pairs, got {start}")
    for rule, k in skipped.items():
        if k:
            log.warning("rule %s: %d pair(s) without a known language were not judged", rule, k)
    return RuleFlags(failed=failed, n=n, skipped=skipped)


def pair_tuples(pairs: Sequence) -> Iterable[tuple[str, str, str | None, str | None]]:
    """``(src, tgt, src_lang, tgt_lang)`` of each pair (``gdig.data.pair.Pair``-like)."""
    for p in pairs:
        yield p.src, p.tgt, p.src_lang, p.tgt_lang
