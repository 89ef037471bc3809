"""The dev study of issue 18: what changes gdig's subset for the better, judged on dev only.

    python benchmarks/quality/run_quality.py --study                    # every variant below
    python benchmarks/quality/run_quality.py --study --study-variants gdig,rank0 --study-seeds 0,1

Each variant changes one thing of gdig as the experiment runs it (tau and scoring as chosen
on dev, the base model as the scorer, 32 seeds, the default clusters), selects at the study
budget (default: the smallest budget), fine-tunes (each ``--study-seeds`` training seed) and
decodes the dev pairs. The test sets never enter: a variant that wins here becomes a default
only if the test confirms it in a later run of the experiment, where it is an arm of its own
(``--arms gdig,...,gdig+VARIANT``: the same subsets at every budget and training seed,
tested against gdig like every other arm).

``VARIANTS`` is the table of variants: one row each, what it changes in words, and how:

* ``select``: extra ``gdig select`` options on the experiment's own scores (no model pass);
* ``run``: extra ``gdig run`` options, scored again in the variant's own run folder;
* ``scorer``: ``pool-finetuned`` scores with the base model fine-tuned on the raw pool (the
  paper's flow; the experiment's whole-pool run of training seed 0 leaves that model behind);
* ``n_seeds``: more trusted seeds (the split's own, then unused in-domain pairs of the same
  length, ``data.more_seeds``), scored again in the variant's own run folder.

Variant runs reuse any finished run with the same subset and settings (the ``gdig`` variant
is the dev choice's own trial, the ``zscore`` and ``tau0.8`` ones may be too; ``cosine``
always is gdig's own: the sign count ignores scale and gdig draws at random in clusters).
This module holds the table and the report; ``run_quality.Direction.run_study`` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from summary import cell, interval

REFERENCE = "gdig"


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    select: tuple[str, ...] = ()  # extra `gdig select` options
    run: tuple[str, ...] = ()  # extra `gdig run` options (scored again)
    scorer: str = "base"  # "base" or "pool-finetuned"
    n_seeds: int | None = None  # more trusted seeds (scored again)

    @property
    def rescored(self) -> bool:
        return bool(self.run) or self.scorer != "base" or self.n_seeds is not None

    def how(self) -> str:
        parts = []
        if self.select:
            parts.append("gdig select " + " ".join(self.select))
        if self.run:
            parts.append("gdig run " + " ".join(self.run))
        if self.scorer != "base":
            parts.append(f"scorer {self.scorer}")
        if self.n_seeds is not None:
            parts.append(f"{self.n_seeds} seeds")
        return "; ".join(parts) or "as the experiment runs it"


# Issue 18, must 4: zscore, tau, the number of clusters, best-benefit-first inside
# clusters, the seed rank, more seeds, scoring the pool-finetuned model, and the coverage
# selector. The cheap ones (no model pass) first; the pool-finetuned scorer last, since it
# fine-tunes on the whole pool when the experiment has not left that model behind.
VARIANTS: tuple[Variant, ...] = (
    Variant(REFERENCE, "gdig as the experiment runs it (the reference)"),
    Variant("zscore", "benefits z-scored per seed", select=("--scoring", "zscore")),
    Variant("cosine", "cosine benefits", select=("--scoring", "cosine")),
    Variant("tau0.8", "a looser quality filter", select=("--tau", "0.8")),
    Variant("tau1.0", "only pairs that help every seed group", select=("--tau", "1.0")),
    Variant("clusters4", "4 gradient clusters (default sqrt(budget))", select=("--clusters", "4")),
    Variant("clusters48", "48 gradient clusters", select=("--clusters", "48")),
    Variant(
        "best-first",
        "each cluster gives its highest-benefit pairs first, not random ones",
        select=("--within-cluster", "best"),
    ),
    Variant(
        "best-first-cosine",
        "best-first inside clusters, on cosine benefits",
        select=("--within-cluster", "best", "--scoring", "cosine"),
    ),
    Variant(
        "coverage",
        "coverage selector: greedy facility location on positive benefits",
        select=("--selector", "coverage"),
    ),
    Variant(
        "coverage-cosine",
        "coverage selector on cosine benefits",
        select=("--selector", "coverage", "--scoring", "cosine"),
    ),
    Variant("rank0", "exact seed gradients (no rank compression; default 64)", run=("--rank", "0")),
    Variant(
        "seeds128", "128 trusted seeds: the split's own, then unused in-domain pairs", n_seeds=128
    ),
    Variant(
        "pool-finetuned",
        "scored with the base model fine-tuned on the raw pool (the paper's flow)",
        scorer="pool-finetuned",
    ),
)
BY_NAME = {v.name: v for v in VARIANTS}


def parse_variants(text: str) -> list[Variant]:
    """Comma-separated names of ``VARIANTS`` (empty: all); the reference always comes first."""
    names = [x.strip() for x in text.split(",") if x.strip()] or list(BY_NAME)
    bad = [n for n in names if n not in BY_NAME]
    if bad:
        raise ValueError(f"--study-variants {','.join(bad)}: use names of {', '.join(BY_NAME)}")
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    return [BY_NAME[n] for n in dict.fromkeys(names)]


# --------------------------------------------------------------------------- report


def variant_minus_gdig(s: dict[str, Any]) -> str:
    """A significance row holds gdig minus the variant (``a`` is the reference, as in the
    experiment's tables); the study reads better the other way: above 0 = the variant wins."""
    flip = {"delta": -s["delta"], "ci_low": -s["ci_high"], "ci_high": -s["ci_low"]}
    return interval({k: v + 0.0 for k, v in flip.items()})  # + 0.0: no "-0.00"


def verdict(study: dict[str, Any]) -> list[str]:
    """The table in words: which variants beat gdig on dev (interval above 0), which lose
    (below 0), which tie, and the best tie by its mean; nothing typed in by hand."""
    sig = [s for s in study["significance"] if s["metric"] == "chrf"]
    if not sig:
        return []
    wins = [s["b"] for s in sig if s["ci_high"] < 0]  # gdig minus the variant below 0
    losses = [s["b"] for s in sig if s["ci_low"] > 0]
    # the same translations as gdig's (e.g. cosine, whose subset is gdig's): no bootstrap moves
    same = [s["b"] for s in sig if s["ci_low"] == s["ci_high"] == 0]
    ties = [s for s in sig if s["ci_low"] <= 0 <= s["ci_high"] and s["b"] not in same]
    text = "**In words (dev chrF, the two-level interval of each variant minus gdig):** "
    if same:
        text += f"gdig's very translations: {', '.join(same)}; "
    text += f"beat gdig: {', '.join(wins)}; " if wins else "no variant beats gdig; "
    text += f"lose to it: {', '.join(losses)}; " if losses else "none loses to it; "
    text += f"tie with it: {', '.join(s['b'] for s in ties)}" if ties else "none ties"
    if ties:
        best = min(ties, key=lambda s: s["delta"])
        text += f" (the best of them by its mean: {best['b']}, {variant_minus_gdig(best)})"
    return [text + ".", ""]


def markdown(study: dict[str, Any]) -> str:
    """STUDY.md from ``study.json``'s content; every number comes from it."""
    seeds = study["seeds"]
    lines = [
        "# Quality experiment: the dev study (why gdig wins or loses)",
        "",
        f"**{study['status']['done']} of {study['status']['planned']} runs**"
        + (" (partial: rerunning the command resumes it)." if study["status"]["partial"] else "."),
        "",
        "Produced by `benchmarks/quality/run_quality.py --study` (see `study.py`); every number "
        "below comes from `study.json` beside this file. Dev only: the test sets choose nothing.",
        "",
        "```",
        study["command"],
        "```",
        "",
        f"Commit {study['commit']['commit']}"
        + (" (with uncommitted changes)" if study["commit"].get("dirty") else "")
        + f"; {study['machine']}; written {study['written']}.",
        "",
        f"Direction {study['direction']}, budget {study['budget']} pairs, training seeds "
        f"{', '.join(map(str, seeds))}, {study['n_dev']} dev pairs; gdig as the experiment runs "
        f"it: tau {study['tau']}, scoring {study['scoring']}, the base model as the scorer.",
        "",
        *verdict(study),
        "| variant | what changes | how | noise of subset | dev chrF | dev BLEU | "
        "variant's chrF minus gdig's [95% interval] | reused |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    sig = {s["b"]: s for s in study["significance"] if s["metric"] == "chrf"}
    rows = {r["arm"]: r for r in study["table"]}
    for v in study["variants"]:
        r = rows.get(v["name"])
        if r is None:
            lines.append(f"| {v['name']} | {v['what']} | {v['how']} | - | - | - | - | - |")
            continue
        s = sig.get(v["name"])
        delta = variant_minus_gdig(s) if s else ("-" if v["name"] != REFERENCE else "0")
        lines.append(
            f"| {v['name']} | {v['what']} | {v['how']} | {100 * r['noise_rate']:.1f}% | "
            f"{cell(r, 'dev', 'chrf')} | {cell(r, 'dev', 'bleu')} | {delta} | "
            f"{r['reused']} of {r['n_runs']} |"
        )
    chosen = study.get("chosen_at")
    if chosen and chosen["seed"] in seeds and chosen["budget"] == study["budget"]:
        lines += [
            "",
            f"**Selection bias at training seed {chosen['seed']}:** the dev choice kept gdig's "
            "tau and scoring as the best of its trials on these very dev pairs, at this budget "
            "and training seed, so gdig's score there is favoured against every variant; the "
            "training seeds the choice did not see are free of that bias.",
        ]
    lines += [
        "",
        "The interval is a two-level bootstrap (training seeds, then dev sentences, paired) of "
        "each variant's corpus chrF minus gdig's; with one training seed it holds only the "
        "sentence-level uncertainty. A variant whose interval lies above 0 is a candidate "
        "default, to be confirmed on the test sets; 'reused' counts runs whose subset and "
        "settings equal an earlier run's (the same training, not trained twice).",
        "",
        "## Scorings the variants added",
        "",
    ]
    for name, info in study["scorings"].items():
        auc = info.get("noise_auc") or {}
        auc_text = ", ".join(f"{k} {v:.3f}" for k, v in auc.items() if v is not None)
        secs = sum(x for x in (info.get("stage_seconds") or {}).values() if x)
        lines.append(
            f"- {name}: `gdig run` stages {secs:.0f} s; noise AUC of the negative mean "
            f"benefit: {auc_text or '-'}"
        )
    if not study["scorings"]:
        lines.append("- none yet")
    return "\n".join(lines) + "\n"
