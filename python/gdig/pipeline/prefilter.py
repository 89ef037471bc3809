"""The cleaning rules over a run's pool: ``--prefilter rules`` (drop failures before any
model pass) and ``--selector rules`` (draw only from the pairs that pass).

Judging a pool of millions with a language identifier takes minutes, and a run's stages
may run in separate processes (``gdig fit`` then ``gdig score``, or a resume), so the
flags are computed once and kept in the run folder (``rules.npz``), keyed by the pool's
content and the rules' options: a changed pool or threshold computes them again.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from gdig.data.pool import PoolIndex
from gdig.data.rules import RuleFlags, RulesConfig, apply_rules
from gdig.io.atomic import atomic_open
from gdig.io.integrity import sha256_json

log = logging.getLogger("gdig")

RULES_FILE = "rules.npz"


def rules_key(pool_sha256: str, cfg: RulesConfig, reading: dict) -> str:
    """What the flags depend on: the pool's bytes, how it was read (``reading``: the read
    options and the pairs kept) and every rule option (not ``prefilter``, which only says
    where they are used)."""
    opts = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "prefilter"}
    return sha256_json({"pool": pool_sha256, "reading": reading, "rules": opts})


def pool_rule_flags(pool: PoolIndex, cfg: RulesConfig, folder: Path, key: str) -> RuleFlags:
    """Flags of every pair of ``pool`` (in its order), from ``folder/rules.npz`` when it was
    made under ``key``, else computed (a chunk of pairs at a time) and kept there."""
    path = folder / RULES_FILE
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["key"]) == key and int(data["n"]) == len(pool):
                    failed = {r: data[f"failed_{r}"] for r in cfg.enabled}
                    skipped = {r: int(data[f"skipped_{r}"]) for r in cfg.enabled}
                    return RuleFlags(failed=failed, n=len(pool), skipped=skipped)
        except (OSError, KeyError, ValueError):
            log.warning("%s: unreadable; judging the pool again", path)
    pairs = ((p.src, p.tgt, p.src_lang, p.tgt_lang) for p in pool)
    flags = apply_rules(pairs, len(pool), cfg)
    arrays = {f"failed_{r}": f for r, f in flags.failed.items()}
    arrays.update({f"skipped_{r}": np.int64(k) for r, k in flags.skipped.items()})
    with atomic_open(path) as fh:
        np.savez(fh, key=np.str_(key), n=np.int64(len(pool)), **arrays)
    return flags
