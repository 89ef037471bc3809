"""Splits and the noisy pool of the quality experiment, from the real pairs in shared/data.

    python benchmarks/quality/data.py --data-dir ../shared/data --out ../quality-data

Deterministic: the same files and :class:`SplitConfig` give byte-identical outputs.

In-domain text is Tatoeba (zh-en) or Ding (de-en); the other domain is gettext software
strings of the same direction. Five disjoint sets (disjoint in id, source text and target
text):

* ``seeds``: clean in-domain pairs of moderate length (the trusted seed set of gdig);
* ``pool``: in-domain pairs, ``noise_frac`` of them made noisy (below);
* ``dev``: clean in-domain pairs, for choices such as tau or the scoring (never the tests);
* ``test_in``: clean in-domain pairs, the in-domain test set;
* ``test_other``: clean gettext pairs, the other-domain test set (none of them in the pool).

Noise kinds injected into the pool, split as evenly as possible (``noise`` field of every
pool record: ``clean`` or the kind):

* ``misaligned``: the target of another, unrelated in-domain pair;
* ``untranslated``: the target is a copy of the source;
* ``truncated``: the target cut to its first 30-50% of words (of characters for targets
  without spaces), always visibly shorter;
* ``wrong_language``: zh-en: a German sentence from Ding as the target; de-en: the
  German source of another Ding pair (the source language) as the target;
* ``other_domain``: a whole gettext pair (a correct translation, but software strings)
  in place of an in-domain pair.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "python") not in sys.path:
    sys.path.append(str(ROOT / "python"))

from gdig.data.pairs import Pair, read_pairs, write_jsonl  # noqa: E402

NOISE_KINDS = ("misaligned", "untranslated", "truncated", "wrong_language", "other_domain")
CLEAN = "clean"
SPLITS = ("seeds", "pool", "dev", "test_in", "test_other")
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data"

# direction -> (in-domain file, other-domain file, wrong-language donor file and field)
SOURCES = {
    "zh-en": ("tatoeba.zh-en.jsonl", "gettext.zh-en.jsonl", ("ding.de-en.jsonl", "src")),
    "de-en": ("ding.de-en.jsonl", "gettext.de-en.jsonl", ("ding.de-en.jsonl", "src")),
}

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


@dataclass(frozen=True)
class SplitConfig:
    direction: str = field(default="zh-en", metadata={"help": "zh-en or de-en"})
    n_seeds: int = field(default=32, metadata={"help": "trusted seed pairs (clean)"})
    n_pool: int = field(default=600, metadata={"help": "pool pairs (noisy)"})
    n_dev: int = field(default=200, metadata={"help": "dev pairs (clean, in-domain)"})
    n_test: int = field(default=300, metadata={"help": "in-domain test pairs"})
    n_test_other: int = field(default=300, metadata={"help": "other-domain (gettext) test pairs"})
    noise_frac: float = field(default=0.3, metadata={"help": "noisy fraction of the pool"})
    seed: int = field(default=20240520, metadata={"help": "random seed of the splits"})
    min_tgt_words: int = field(default=3, metadata={"help": "shortest in-domain target"})
    max_tgt_words: int = field(default=20, metadata={"help": "longest in-domain target"})
    max_src_chars: int = field(default=100, metadata={"help": "longest source (chars)"})


class DataError(ValueError):
    """The source files cannot give the requested splits."""


def noise_plan_counts(n_pool: int, noise_frac: float) -> dict[str, int]:
    """The documented number of pool lines of each kind (``clean`` included)."""
    n_noisy = round(n_pool * noise_frac)
    counts = {k: n_noisy // len(NOISE_KINDS) for k in NOISE_KINDS}
    for k in NOISE_KINDS[: n_noisy % len(NOISE_KINDS)]:
        counts[k] += 1
    return {CLEAN: n_pool - n_noisy, **counts}


def _invisible(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cf", "Cc") for c in text)


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _unique(pairs: list[Pair]) -> list[Pair]:
    """Pairs whose source and target text each occur once in the file."""
    src_n = Counter(_norm(p.src) for p in pairs)
    tgt_n = Counter(_norm(p.tgt) for p in pairs)
    return [p for p in pairs if src_n[_norm(p.src)] == 1 and tgt_n[_norm(p.tgt)] == 1]


def _in_domain_ok(p: Pair, cfg: SplitConfig) -> bool:
    n = len(p.tgt.split())
    return (
        not _invisible(p.src + p.tgt)
        and 2 <= len(p.src) <= cfg.max_src_chars
        and (cfg.direction != "zh-en" or _CJK.search(p.src) is not None)
        and _CJK.search(p.tgt) is None
        and p.tgt[:1].isupper()
        and p.tgt.rstrip()[-1:] in (".", "!", "?")
        and cfg.min_tgt_words <= n <= cfg.max_tgt_words
    )


def _other_domain_ok(p: Pair, cfg: SplitConfig) -> bool:
    return (
        not _invisible(p.src + p.tgt)
        and len(p.src) <= cfg.max_src_chars
        and 2 <= len(p.tgt.split()) <= cfg.max_tgt_words
        and not p.tgt.lstrip().startswith("-")  # command-line option help
        and _CJK.search(p.tgt) is None
        and _norm(p.src) != _norm(p.tgt)
    )


def _renamed(p: Pair, prefix: str, **extra) -> Pair:
    return Pair(f"{prefix}:{p.id}", p.src, p.tgt, p.src_lang, p.tgt_lang, extra=dict(extra))


_READ: dict[tuple[str, int, int], list[Pair]] = {}  # (path, size, mtime) -> unique pairs


def _load(path: Path, prefix: str, ok, cfg: SplitConfig) -> list[Pair]:
    """The file's pairs with unique texts that ``ok`` accepts, as new Pairs (ids prefixed)."""
    if not path.is_file():
        raise DataError(f"{path}: not found; pass --data-dir (the folder of the shared pairs)")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _READ:
        _READ[key] = _unique(read_pairs(path))
    return [_renamed(p, prefix) for p in _READ[key] if ok(p, cfg)]


def _seed_like(p: Pair) -> bool:
    """A trusted seed's moderate length: 5-14 target words."""
    return 5 <= len(p.tgt.split()) <= 14


def _donor_ok(p: Pair, cfg: SplitConfig) -> bool:
    """A wrong-language donor: a plain sentence of 3 words or more."""
    return not _invisible(p.src + p.tgt) and 3 <= len(p.src.split()) <= cfg.max_tgt_words


def truncate(tgt: str, rng: random.Random) -> str:
    """The first 30-50% of the words (characters when there is one word), always shorter."""
    words = tgt.split()
    if len(words) >= 3:
        keep = min(len(words) - 1, max(1, round(len(words) * rng.uniform(0.3, 0.5))))
        return " ".join(words[:keep]).rstrip(",;:-")
    keep = min(len(tgt) - 1, max(1, round(len(tgt) * rng.uniform(0.3, 0.5))))
    return tgt[:keep]


def build_splits(data_dir: str | Path, cfg: SplitConfig | None = None) -> dict[str, list[Pair]]:
    """Every split as a list of Pairs (pool records carry ``noise`` and ``origin``)."""
    cfg = cfg or SplitConfig()
    if cfg.direction not in SOURCES:
        raise DataError(f"direction {cfg.direction!r}: use one of {sorted(SOURCES)}")
    if not 0.0 <= cfg.noise_frac <= 1.0:
        raise DataError(f"noise_frac={cfg.noise_frac}: must be in [0, 1]")
    data_dir = Path(data_dir)
    in_file, other_file, (wrong_file, wrong_field) = SOURCES[cfg.direction]
    rng = random.Random(cfg.seed)
    ind = _load(data_dir / in_file, in_file.split(".")[0], _in_domain_ok, cfg)
    oth = _load(data_dir / other_file, other_file.split(".")[0], _other_domain_ok, cfg)
    rng.shuffle(ind)
    rng.shuffle(oth)
    counts = noise_plan_counts(cfg.n_pool, cfg.noise_frac)

    # in-domain: seeds (moderate length), dev, test, pool base, then donors
    seeds = [p for p in ind if _seed_like(p)][: cfg.n_seeds]
    taken = {p.id for p in seeds}
    rest = [p for p in ind if p.id not in taken]
    n_base = cfg.n_pool - counts["other_domain"]
    n_donors = counts["misaligned"]
    need = cfg.n_dev + cfg.n_test + n_base + n_donors
    need += counts["wrong_language"] if cfg.direction == "de-en" else 0
    if len(seeds) < cfg.n_seeds or len(rest) < need:
        raise DataError(
            f"{in_file}: {len(ind)} usable pairs, need {cfg.n_seeds} seeds + {need} more"
        )
    dev, rest = rest[: cfg.n_dev], rest[cfg.n_dev :]
    test_in, rest = rest[: cfg.n_test], rest[cfg.n_test :]
    base, rest = rest[:n_base], rest[n_base:]
    donors = iter(rest[:n_donors])
    if len(oth) < cfg.n_test_other + counts["other_domain"]:
        raise DataError(f"{other_file}: {len(oth)} usable pairs, too few")
    test_other = oth[: cfg.n_test_other]
    other_in_pool = oth[cfg.n_test_other : cfg.n_test_other + counts["other_domain"]]

    # wrong-language donors: zh-en: Ding's German sentences; de-en: German sources of
    # in-domain pairs that are in no split (the source language as the target)
    if cfg.direction == "de-en":
        wrong = rest[n_donors : n_donors + counts["wrong_language"]]
    else:
        wrong = _load(data_dir / wrong_file, wrong_file.split(".")[0], _donor_ok, cfg)
        rng.shuffle(wrong)
    if len(wrong) < counts["wrong_language"]:
        raise DataError(f"{wrong_file}: too few wrong-language donors")
    wrong_donors = iter(wrong)

    kinds = [k for k in NOISE_KINDS if k != "other_domain" for _ in range(counts[k])]
    kinds += [CLEAN] * (n_base - len(kinds))
    rng.shuffle(kinds)
    pool: list[Pair] = []
    for p, kind in zip(base, kinds, strict=True):
        if kind == CLEAN:
            tgt = p.tgt
        elif kind == "misaligned":
            tgt = next(donors).tgt
        elif kind == "untranslated":
            tgt = p.src
        elif kind == "truncated":
            tgt = truncate(p.tgt, rng)
        else:  # wrong_language
            tgt = getattr(next(wrong_donors), wrong_field)
        pool.append(Pair(p.id, p.src, tgt, p.src_lang, p.tgt_lang, {"noise": kind}))
    for p in other_in_pool:
        pool.append(Pair(p.id, p.src, p.tgt, p.src_lang, p.tgt_lang, {"noise": "other_domain"}))
    rng.shuffle(pool)
    for p in pool:
        p.extra["origin"] = p.id.split(":", 1)[0]
    return {
        "seeds": seeds,
        "pool": pool,
        "dev": dev,
        "test_in": test_in,
        "test_other": test_other,
    }


def more_seeds(
    data_dir: str | Path, cfg: SplitConfig, splits: dict[str, list[Pair]], n: int
) -> list[Pair]:
    """``n`` seeds: the split's own seeds, then clean in-domain pairs of the same moderate
    length that no split uses, in id or in either text (so the pool, dev and test sets are
    unchanged; a donor whose target became a misaligned pool target is out too).

    For the dev study's "more seeds" variant (``study.py``): changing ``cfg.n_seeds``
    instead would move every split."""
    seeds = list(splits["seeds"])
    if n <= len(seeds):
        return seeds[:n]
    used = {p.id for pairs in splits.values() for p in pairs}
    texts = {_norm(t) for pairs in splits.values() for p in pairs for t in (p.src, p.tgt)}
    in_file = SOURCES[cfg.direction][0]
    fresh = [
        p
        for p in _load(Path(data_dir) / in_file, in_file.split(".")[0], _in_domain_ok, cfg)
        if _seed_like(p)
        and p.id not in used
        and _norm(p.src) not in texts
        and _norm(p.tgt) not in texts
    ]
    random.Random(cfg.seed + 1).shuffle(fresh)
    if len(fresh) < n - len(seeds):
        raise DataError(f"{in_file}: {len(fresh)} unused seed-like pairs, need {n - len(seeds)}")
    return seeds + fresh[: n - len(seeds)]


def summarize(splits: dict[str, list[Pair]], cfg: SplitConfig) -> dict:
    in_file, other_file, (wrong_file, _) = SOURCES[cfg.direction]
    noise = Counter(p.extra["noise"] for p in splits["pool"])
    return {
        "config": asdict(cfg),
        "files": {"in_domain": in_file, "other_domain": other_file, "wrong_language": wrong_file},
        "sizes": {k: len(v) for k, v in splits.items()},
        "noise_counts": {k: noise.get(k, 0) for k in (CLEAN, *NOISE_KINDS)},
        "noise_rate": round(1.0 - noise.get(CLEAN, 0) / max(1, len(splits["pool"])), 4),
    }


def write_splits(splits: dict[str, list[Pair]], cfg: SplitConfig, out: str | Path) -> dict:
    """``out/{split}.jsonl`` for every split and ``out/data.json`` (the summary)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, pairs in splits.items():
        write_jsonl(out / f"{name}.jsonl", pairs)
    summary = summarize(splits, cfg)
    (out / "data.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="folder of the pairs")
    ap.add_argument("--out", required=True, help="folder for the split files")
    for f in SplitConfig.__dataclass_fields__.values():
        ap.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(f.default),
            default=f.default,
            help=f"{f.metadata['help']} (default: {f.default})",
        )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    data_dir, out = args.pop("data_dir"), args.pop("out")
    cfg = SplitConfig(**args)
    summary = write_splits(build_splits(data_dir, cfg), cfg, out)
    print(json.dumps({k: summary[k] for k in ("sizes", "noise_counts")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
