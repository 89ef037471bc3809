"""Aggregation, significance, chart and RESULTS.md of the quality experiment."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

TEST_NAMES = {"test_in": "in-domain test", "test_other": "other-domain test"}
METRICS = ("chrf", "bleu")
METRIC_NAMES = {"chrf": "chrF", "bleu": "BLEU"}
ORDER = ("gdig", "quality", "diversity", "random", "all")
NOISE_DOC = {
    "misaligned": "the target of another, unrelated in-domain pair",
    "untranslated": "the target is a copy of the source",
    "truncated": "the target cut to its first 30-50% of words",
    "wrong_language": "a German sentence (Ding) as the target (de-en: another pair's German "
    "source)",
    "other_domain": "a whole gettext pair (software strings) in place of a Tatoeba pair",
}


def read_hyps(run_dir: Path, splits) -> dict[str, list[str]]:
    """The hypotheses ``evaluate`` wrote (``hyps_{split}.jsonl``), in test-set order."""
    out = {}
    for split in splits:
        path = run_dir / f"hyps_{split}.jsonl"
        if not path.is_file():
            continue
        hyps = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            hyps.append(rec["hyp"] if isinstance(rec, dict) else str(rec))
        out[split] = hyps
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def _group(r: dict[str, Any]) -> tuple[str, str]:
    spec = r["spec"]
    budget = "pool" if spec["budget"] is None else str(spec["budget"])
    return spec["selector"], budget


def build(
    *,
    results: list[dict[str, Any]],
    refs: dict[str, list[str]],
    hyps: dict[str, dict[str, list[str]]],
    budgets: list[int],
    selectors: list[str],
    seeds: list[int],
    compare: list[str],
    bootstrap_n: int,
    tgt_lang: str | None = None,
) -> dict[str, Any]:
    """Mean +- std per (selector, budget, test set, metric), noise rates, bootstrap tests."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(_group(r), []).append(r)
    table = []
    for (selector, budget), runs in groups.items():
        row: dict[str, Any] = {
            "selector": selector,
            "budget": budget,
            "n_runs": len(runs),
            "n_pairs": runs[0]["subset"]["n"],
        }
        row["noise_rate"], row["noise_rate_std"] = mean_std(
            [r["subset"]["noise_rate"] for r in runs]
        )
        kinds = runs[0]["subset"]["kinds"]
        row["noise_kinds_mean"] = {
            k: sum(r["subset"]["kinds"][k] for r in runs) / len(runs) for k in kinds
        }
        row["train_s"] = mean_std([r["train_s"] for r in runs])[0]
        row["train_cpu_s"] = mean_std([r.get("train_cpu_s") for r in runs])[0]
        row["loadavg"] = mean_std([r.get("loadavg_1min_at_start") for r in runs])[0]
        for split in refs:
            for metric in METRICS:
                vals = [r["eval"][split][metric] for r in runs if split in r["eval"]]
                m, s = mean_std(vals)
                row[f"{split}.{metric}"] = {"mean": m, "std": s, "values": vals}
            row[f"{split}.eval_s"] = mean_std([r["eval"][split]["eval_s"] for r in runs])[0]
            row[f"{split}.eval_cpu_s"] = mean_std(
                [r["eval"][split].get("eval_cpu_s") for r in runs]
            )[0]
            row[f"{split}.n_runaway"] = mean_std([r["eval"][split].get("n_runaway") for r in runs])[
                0
            ]
            row[f"{split}.n_empty"] = mean_std([r["eval"][split].get("n_empty") for r in runs])[0]
        table.append(row)
    rank = {s: i for i, s in enumerate(ORDER)}
    table.sort(key=lambda r: (r["budget"] == "pool", r["budget"].zfill(9), rank.get(r["selector"])))
    return {
        "table": table,
        "significance": significance(
            results, refs, hyps, budgets, seeds, compare, bootstrap_n, tgt_lang
        ),
    }


def significance(
    results, refs, hyps, budgets, seeds, compare, bootstrap_n, tgt_lang=None
) -> list[dict]:
    """Paired bootstrap of gdig against each baseline in ``compare``, per budget, test set
    and metric. The seeds are pooled: seed k's gdig hypotheses are paired with seed k's
    baseline hypotheses on the same sentence, the units (sentence, seed) are concatenated
    and resampled together (the whole pool baseline: its run of the same seed)."""
    from gdig.train.metrics import paired_bootstrap

    by = {(r["spec"]["selector"], r["spec"]["budget"], r["spec"]["train_seed"]): r for r in results}
    out = []
    for budget in budgets:
        for base in compare:
            pairs = []
            for seed in seeds:
                a = by.get(("gdig", budget, seed))
                b = by.get((base, None if base == "all" else budget, seed))
                if a and b:
                    pairs.append((a["key"], b["key"]))
            if not pairs:
                continue
            for split, ref in refs.items():
                if not all(split in hyps[k] for ab in pairs for k in ab):
                    continue
                r_all = [x for _ in pairs for x in ref]
                h_a = [x for ka, _ in pairs for x in hyps[ka][split]]
                h_b = [x for _, kb in pairs for x in hyps[kb][split]]
                for metric in METRICS:
                    res = paired_bootstrap(
                        r_all, h_a, h_b, metric=metric, n=bootstrap_n, seed=0, tgt_lang=tgt_lang
                    )
                    out.append(
                        {
                            "budget": budget,
                            "a": "gdig",
                            "b": base,
                            "test": split,
                            "metric": metric,
                            "seeds": [int(k.rsplit("-s", 1)[1]) for k, _ in pairs],
                            "n_units": len(r_all),
                            **{k: v for k, v in res.items() if k not in ("samples", "diffs")},
                        }
                    )
    return out


def _fmt(cell: dict[str, Any] | None) -> str:
    if not cell or not math.isfinite(cell["mean"]):
        return "-"
    return f"{cell['mean']:.2f} ± {cell['std']:.2f}"


def plot(report: dict[str, Any], path: Path) -> None:
    """Bar chart: mean ± std per selector and budget, one panel per test set and metric;
    the whole pool as a dashed line with its ± std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = report["table"]
    budgets = [b for b in dict.fromkeys(r["budget"] for r in table) if b != "pool"]
    selectors = [
        s for s in ORDER if any(r["selector"] == s and r["budget"] != "pool" for r in table)
    ]
    whole = next((r for r in table if r["budget"] == "pool"), None)
    splits = [s for s in TEST_NAMES if any(f"{s}.chrf" in r for r in table)]
    fig, axes = plt.subplots(
        len(METRICS), len(splits), figsize=(5.5 * len(splits), 3.6 * len(METRICS)), squeeze=False
    )
    width = 0.8 / max(1, len(selectors))
    colors = {"gdig": "C3", "quality": "C1", "diversity": "C2", "random": "C7"}
    for i, metric in enumerate(METRICS):
        for j, split in enumerate(splits):
            ax = axes[i][j]
            for k, sel in enumerate(selectors):
                xs, ms, ss = [], [], []
                for bi, b in enumerate(budgets):
                    row = next(
                        (r for r in table if r["selector"] == sel and r["budget"] == b), None
                    )
                    if row:
                        xs.append(bi + (k - (len(selectors) - 1) / 2) * width)
                        ms.append(row[f"{split}.{metric}"]["mean"])
                        ss.append(row[f"{split}.{metric}"]["std"])
                bars = ax.bar(xs, ms, width, yerr=ss, capsize=3, label=sel, color=colors.get(sel))
                if i == 0:  # the subset's noise rate above each bar
                    noise = [
                        r["noise_rate"]
                        for b in budgets
                        for r in table
                        if r["selector"] == sel and r["budget"] == b
                    ]
                    ax.bar_label(bars, [f"{n:.0%}" for n in noise], fontsize=6, padding=2)
            if whole:
                m, s = whole[f"{split}.{metric}"]["mean"], whole[f"{split}.{metric}"]["std"]
                ax.axhline(m, color="k", ls="--", lw=1, label="whole pool")
                ax.axhspan(m - s, m + s, color="k", alpha=0.08)
            ax.set_ylim(0, max(1.0, ax.get_ylim()[1] * 1.08))
            ax.set_xticks(range(len(budgets)), [f"budget {b}" for b in budgets])
            ax.set_title(f"{TEST_NAMES[split]}: {METRIC_NAMES[metric]}")
            ax.set_ylabel(METRIC_NAMES[metric])
            if i == 0 and j == 0:
                ax.legend(fontsize=8, loc="lower right")
    n_seeds = max((r["n_runs"] for r in table), default=0)
    fig.suptitle(
        f"Fine-tuned on each subset: mean ± std over {n_seeds} training seed(s); "
        "% above the top bars: noise rate of the subset"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict[str, Any], png_name: str) -> str:
    a = report["args"]
    d = report["data"]
    t = report["timings"]
    m = report["machine"]
    g = report["gdig_run"]
    table = report["table"]
    smoke = a.get("smoke")
    lines = [
        "# Quality experiment: does a gdig-selected subset train a better translator?",
        "",
        (
            "**Smoke run** (tiny random LLaMA, tiny sizes): checks the pipeline only; the "
            "numbers mean nothing."
            if smoke
            else f"Base model `{a['model']}`, direction {a['direction']}; fine-tuned fresh from "
            "the base model on each subset, greedy decoding, sacreBLEU BLEU and chrF."
        ),
        "",
        *(
            [
                "**Not the default experiment**: these settings differ from the defaults: "
                + ", ".join(f"{k} = {v}" for k, v in report["non_default_args"].items())
                + ".",
                "",
            ]
            if report.get("non_default_args") and not smoke
            else []
        ),
        "Produced by `benchmarks/quality/run_quality.py` (`make quality` runs it with its "
        "defaults). Every number below comes from `results.json` beside this file.",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"Machine: {m['platform']}, {m['cpu']}, {m['cpus_usable']} usable CPUs "
        f"(torch {m['torch']}, {m['torch_threads']} threads, Python {m['python']}).",
        f"Wall time of this invocation: {t.get('total_wall_s', 0) / 60:.1f} min "
        f"(fine-tune + decode runs {t.get('runs_wall_s', 0) / 60:.1f} min, `gdig run` "
        f"{t.get('gdig_run_s', 0):.0f} s); runs resumed from an earlier invocation are not "
        "in the wall time but their own train/decode seconds are in the tables.",
        "",
        "## Data",
        "",
        f"From `{a['data_dir']}` ({d['files']['in_domain']} in-domain, "
        f"{d['files']['other_domain']} other-domain), split seed {d['config']['seed']}; "
        "all splits are disjoint in id, source text and target text.",
        "",
        "| split | pairs | what |",
        "| --- | ---: | --- |",
        f"| seeds | {d['sizes']['seeds']} | clean in-domain pairs, 5-14 target words "
        "(gdig's trusted seed set) |",
        f"| pool | {d['sizes']['pool']} | in-domain pairs with {d['noise_rate']:.0%} injected "
        "noise (below) |",
        f"| dev | {d['sizes']['dev']} | clean in-domain pairs (only for choices: tau, scoring) |",
        f"| test_in | {d['sizes']['test_in']} | clean in-domain pairs (never in pool/seeds/dev) |",
        f"| test_other | {d['sizes']['test_other']} | gettext software strings (none in pool) |",
        "",
        "Pool noise (`noise` field of every pool record):",
        "",
        "| noise | pairs | share | what |",
        "| --- | ---: | ---: | --- |",
    ]
    n_pool = max(1, d["sizes"]["pool"])
    for k, n in d["noise_counts"].items():
        what = NOISE_DOC.get(k, "unchanged pair")
        lines.append(f"| {k} | {n} | {n / n_pool:.1%} | {what} |")
    lines += [
        "",
        "## Settings",
        "",
        f"- gdig: scored once by `gdig run` with the {g['scorer']} (factor samples "
        f"{a['factor_samples']}, layer stride {a['layer_stride']}, autocast {a['autocast']}"
        + (f", `{a['gdig_args']}`" if a["gdig_args"] else "")
        + f"); tau {g['tau']}, scoring {g['scoring']}, `--on-short fill`; each subset from "
        "`gdig select --selector S --budget B --random-seed SEED` (SEED = the training seed).",
        f"- fine-tuning: epochs {a['epochs']}, max steps {a['max_steps']}, lr "
        f"{a['learning_rate']}, batch {a['train_batch_size']} x accum {a['grad_accum']}, "
        f"warm-up {a['warmup_ratio']}, bf16 autocast {a['bf16']}, template {a['template']}; "
        f"training seeds {a['train_seeds']}.",
        f"- decoding: greedy, max new tokens {a['max_new_tokens']}, batch {a['eval_batch_size']}.",
    ]
    if report.get("dev_choice"):
        dc = report["dev_choice"]
        lines.append(
            f"- tau and scoring chosen on dev (gdig at budget {dc['budget']}, seed 0): "
            + "; ".join(
                f"tau {r['tau']} {r['scoring']}: dev chrF {r['dev_chrf']:.2f}" for r in dc["trials"]
            )
            + f" -> tau {dc['chosen']['tau']}, {dc['chosen']['scoring']}."
        )
    else:
        lines.append("- no choice step: tau and scoring as given (the test sets chose nothing).")
    lines += ["", "## Results", ""]
    for split, name in TEST_NAMES.items():
        if not any(f"{split}.chrf" in r for r in table):
            continue
        lines += [
            f"### {name} ({d['sizes'][split]} sentences)",
            "",
            "| budget | selector | runs | noise rate of subset | BLEU | chrF | runaway | train s |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in table:
            lines.append(
                f"| {r['budget']} | {r['selector']} | {r['n_runs']} | "
                f"{r['noise_rate']:.1%} | {_fmt(r[f'{split}.bleu'])} | {_fmt(r[f'{split}.chrf'])}"
                f" | {r[f'{split}.n_runaway']:.1f} | {r['train_s']:.0f} |"
            )
        lines.append("")
    kinds = list(d["noise_counts"])
    lines += [
        "### Composition of the subsets (mean pairs of each kind over seeds)",
        "",
        "| budget | selector | " + " | ".join(kinds) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in kinds) + " |",
    ]
    for r in table:
        lines.append(
            f"| {r['budget']} | {r['selector']} | "
            + " | ".join(f"{r['noise_kinds_mean'].get(k, 0):.1f}" for k in kinds)
            + " |"
        )
    lines += [
        "",
        "### Significance: paired bootstrap, gdig vs baseline",
        "",
        f"Over test sentences, seeds pooled: for each seed, gdig's and the baseline's "
        "hypotheses of the same sentence are a pair; the pairs of all seeds are concatenated "
        f"and resampled together ({a['bootstrap_n']} resamples), giving the corpus-metric "
        "difference gdig - baseline, its 95% interval and a p-value (share of resamples "
        "where gdig is not better, ties half; one-sided). gdig/baseline: the corpus metric "
        "over all seeds' hypotheses together.",
        "",
        "| budget | vs | test | metric | gdig | baseline | diff | 95% interval | p |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for s in report["significance"]:
        lines.append(
            f"| {s['budget']} | {s['b']} | {s['test']} | {METRIC_NAMES[s['metric']]} | "
            f"{s['score_a']:.2f} | {s['score_b']:.2f} | {s['delta']:+.2f} | "
            f"[{s['ci_low']:+.2f}, {s['ci_high']:+.2f}] | {s['p_value']:.3f} |"
        )
    auc = g.get("noise_auc") or {}
    lines += [
        "",
        "## gdig on the pool",
        "",
        "Noise detection AUC (negative mean benefit vs the `noise` labels): "
        + ", ".join(f"{k} {v:.3f}" for k, v in auc.items() if v is not None)
        + ". Stage seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in (g.get("stage_seconds") or {}).items() if v)
        + ".",
        "",
        "## Time",
        "",
        f"Planned for the defaults ({report['time_budget']}).",
        "",
        "Measured here, means per run (wall seconds; CPU seconds of all threads in brackets, "
        "less sensitive to other load; 1-minute load average when the run started):",
        "",
        "| budget | selector | train s | decode s (in + other) | load |",
        "| --- | --- | ---: | ---: | ---: |",
        *(
            f"| {r['budget']} | {r['selector']} | {r['train_s']:.0f} ({r['train_cpu_s']:.0f}) | "
            + " + ".join(
                f"{r[f'{s}.eval_s']:.0f} ({r[f'{s}.eval_cpu_s']:.0f})"
                for s in TEST_NAMES
                if f"{s}.eval_s" in r
            )
            + f" | {r['loadavg']:.1f} |"
            for r in table
        ),
        "",
        f"`gdig run`: {t.get('gdig_run_s', 0):.0f} s wall ({t.get('gdig_run_cpu_s', 0):.0f} s "
        f"CPU); load average at the end {t.get('loadavg_at_end')}.",
        "",
        f"![mean ± std per selector and budget]({png_name})",
        "",
        "Resume: run the same command again; finished (budget, subset, seed) runs "
        "(`runs/<key>/result.json` under `--out`, hypotheses beside them) are skipped.",
        "",
    ]
    return "\n".join(lines)
