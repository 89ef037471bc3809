"""What the cleaning rules (``--selector rules``, ``--prefilter rules``) remove: the share of
clean human-translated pairs each rule fails (false failures), the share of each injected
noise kind of the quality experiment's pool it catches, and its time per pair.

    python benchmarks/rules_check.py            # writes its section of benchmarks/RESULTS.md
    python benchmarks/rules_check.py --n 100 --out ../rules.md   # quick look

The clean samples are random (seeded) lines of the shared data files; the noisy pool is
``benchmarks/quality/data.py``'s zh-en pool (the same split seed as the experiment).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import harness
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "quality"))

CLEAN_FILES = (
    "tatoeba.zh-en.jsonl",
    "ding.de-en.jsonl",
    "gettext.zh-en.jsonl",
    "gettext.de-en.jsonl",
)


def sample(path: Path, n: int, seed: int) -> list[tuple[str, str, str, str]]:
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    random.Random(seed).shuffle(rows)
    return [(r["src"], r["tgt"], r["src_lang"], r["tgt_lang"]) for r in rows[:n]]


def judge(pairs, cfg) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    from gdig.data.rules import apply_rules

    apply_rules(pairs[:8], min(8, len(pairs)), cfg)  # warm-up: lingua loads its models
    t = time.perf_counter()
    flags = apply_rules(pairs, len(pairs), cfg)
    return flags.failed, ~flags.ok, (time.perf_counter() - t) / max(1, len(pairs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    harness.add_common_args(ap)
    ap.add_argument("--n", type=int, default=400, help="clean pairs sampled per file")
    ap.add_argument("--n-pool", type=int, default=3000, help="size of the noisy zh-en pool")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(harness.RESULTS))
    args = ap.parse_args(argv)

    import data as qdata

    from gdig.data.rules import RULES, RulesConfig

    cfg = RulesConfig()
    machine = harness.Machine(threads=1, strict=args.strict_load)
    where = harness.data_dir(args.data_dir)
    rules = list(RULES)
    head = "| pairs | n | " + " | ".join(rules) + " | any rule | ms a pair |"
    sep = "| --- | ---: | " + " | ".join("---:" for _ in rules) + " | ---: | ---: |"
    lines = ["Clean pairs (every failure is a false one):", "", head, sep]
    for name in CLEAN_FILES:
        failed, bad, per = judge(sample(where / name, args.n, args.seed), cfg)
        cells = " | ".join(f"{failed[r].mean():.1%}" for r in rules)
        lines.append(f"| {name} | {len(bad)} | {cells} | {bad.mean():.1%} | {per * 1e3:.1f} |")

    split_cfg = qdata.SplitConfig(direction="zh-en", n_pool=args.n_pool)
    pool = qdata.build_splits(where, split_cfg)["pool"]
    pairs = [(p.src, p.tgt, p.src_lang, p.tgt_lang) for p in pool]
    failed, bad, per = judge(pairs, cfg)
    kinds = np.array([p.extra["noise"] for p in pool])
    lines += [
        "",
        f"The quality experiment's zh-en pool ({len(pool)} pairs, split seed "
        f"{split_cfg.seed}): the share of each kind that the rules remove (for `clean`, a "
        "false failure):",
        "",
        "| kind | pairs | " + " | ".join(rules) + " | any rule |",
        "| --- | ---: | " + " | ".join("---:" for _ in rules) + " | ---: |",
    ]
    for kind in ("clean", *qdata.NOISE_KINDS):
        m = kinds == kind
        cells = " | ".join(f"{failed[r][m].mean():.1%}" for r in rules)
        lines.append(f"| {kind} | {int(m.sum())} | {cells} | {bad[m].mean():.1%} |")
    body = "\n".join(
        [
            "## Cleaning rules: what they remove",
            "",
            "```",
            harness.command("rules_check.py", argv),
            "```",
            "",
            machine.line(),
            f"Default thresholds (`gdig.data.rules.RulesConfig`); lingua in "
            f"{cfg.rule_language_mode} mode; one process.",
            "",
            *lines,
        ]
    )
    harness.write_section(args.out, "rules", "rules_check.py", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
