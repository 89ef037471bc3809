"""Aggregation, significance, plain-words summary, chart and RESULTS.md of the quality
experiment. Everything here reads the runs' results and hypotheses; nothing is typed in."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

TEST_NAMES = {"test_in": "in-domain test", "test_other": "other-domain test"}
METRICS = ("chrf", "bleu")
METRIC_NAMES = {"chrf": "chrF", "bleu": "BLEU"}
# The arms the summary names gdig's difference to, by selector (the question:
# random, the cleaning rules, the loss filter, LESS, and gdig's own halves; then coverage,
# ours). A gdig+VARIANT arm is named too; the whole pool is not (it is no selection).
SUMMARY_SELECTORS = ("random", "rules", "loss", "less", "quality", "diversity", "coverage")
NOISE_DOC = {
    "misaligned": "the target of another, unrelated in-domain pair",
    "untranslated": "the target is a copy of the source",
    "truncated": "the target cut to its first 30-50% of words",
    "wrong_language": "a German sentence (Ding) as the target (de-en: another pair's German "
    "source)",
    "other_domain": "a whole gettext pair (software strings) in place of an in-domain pair",
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
            if line.strip():
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


def _mean(values) -> float:
    return mean_std(list(values))[0]


# --------------------------------------------------------------------------- tables


def build(
    *,
    runs: list[dict[str, Any]],
    refs: dict[str, list[str]],
    run_dir: Path,
    arms: list[str],
    reference: str,
    budgets: list[int],
    bootstrap_n: int,
    tgt_lang: str | None,
    cache: dict,
    cache_prefix: str,
) -> dict[str, Any]:
    """Mean +- std per (arm, budget, test set, metric), noise, and the two-level bootstrap
    of ``reference`` against every other arm. ``cache`` keeps sentence statistics and
    finished comparisons across calls (a run's hypotheses do not change in one process)."""
    groups: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["arm"], r["budget"]), []).append(r)
    table = [_row(arm, budget, rs, refs) for (arm, budget), rs in groups.items()]
    order = {a: i for i, a in enumerate(arms)}
    rank = {b: i for i, b in enumerate(budgets)}
    table.sort(key=lambda r: (rank.get(r["budget"], len(rank)), order.get(r["arm"], 99)))
    sig = significance(
        groups, refs, run_dir, arms, reference, budgets, bootstrap_n, tgt_lang, cache, cache_prefix
    )
    return {"table": table, "significance": sig}


def _row(arm: str, budget: int | None, runs: list[dict[str, Any]], refs) -> dict[str, Any]:
    row: dict[str, Any] = {
        "arm": arm,
        "budget": budget,
        "n_runs": len(runs),
        "seeds": [r["train_seed"] for r in runs],
        "n_pairs": runs[0]["subset"]["n"],
        "selection": runs[0].get("selection"),
    }
    row["noise_rate"], row["noise_rate_std"] = mean_std([r["subset"]["noise_rate"] for r in runs])
    kinds = runs[0]["subset"]["kinds"]
    row["noise_kinds_mean"] = {k: _mean(r["subset"]["kinds"][k] for r in runs) for k in kinds}
    row["train_s"] = _mean(r["train_s"] for r in runs)
    row["train_cpu_s"] = _mean(r.get("train_cpu_s") for r in runs)
    row["seconds_per_example"] = _mean(r["finetune"].get("seconds_per_example") for r in runs)
    row["precision"] = sorted(
        {str((r["finetune"].get("precision") or {}).get("name", "?")) for r in runs}
    )
    row["loadavg"] = _mean(r.get("loadavg_1min_at_start") for r in runs)
    row["reused"] = sum(bool(r.get("same_as")) for r in runs)
    for split in refs:
        for metric in METRICS:
            vals = [r["eval"][split][metric] for r in runs if split in r["eval"]]
            m, s = mean_std(vals)
            row[f"{split}.{metric}"] = {"mean": m, "std": s, "values": vals}
        ev = [r["eval"][split] for r in runs if split in r["eval"]]
        row[f"{split}.eval_s"] = _mean(e["eval_s"] for e in ev)
        row[f"{split}.eval_cpu_s"] = _mean(e.get("eval_cpu_s") for e in ev)
        row[f"{split}.seconds_per_sentence"] = _mean(e.get("seconds_per_sentence") for e in ev)
        row[f"{split}.n_runaway"] = _mean(e.get("n_runaway") for e in ev)
        row[f"{split}.n_format_failures"] = _mean(e.get("n_format_failures") for e in ev)
    return row


def significance(
    groups, refs, run_dir, arms, reference, budgets, bootstrap_n, tgt_lang, cache, prefix
) -> list[dict[str, Any]]:
    """Two-level bootstrap (training seeds, then sentences; paired by seed and sentence) of
    ``reference`` at each budget against every other arm at that budget and the whole pool,
    over the training seeds both have, per test set and metric; with the per-seed
    differences (corpus metric of each seed's hypotheses)."""
    from gdig.train.metrics import sentence_stats, two_level_bootstrap

    def stats(key: str, split: str, metric: str):
        ck = ("stats", prefix, key, split, metric)
        if ck not in cache:
            hyps = read_hyps(run_dir / key, [split])[split]
            cache[ck] = sentence_stats(refs[split], hyps, metric, tgt_lang=tgt_lang)
        return cache[ck]

    whole = {arm for (arm, budget) in groups if budget is None}
    out = []
    for budget in budgets:
        ref_runs = {r["train_seed"]: r for r in groups.get((reference, budget), [])}
        for arm in arms:
            if arm == reference:
                continue
            other = groups.get((arm, None if arm in whole else budget), [])
            pairs = [(ref_runs[r["train_seed"]], r) for r in other if r["train_seed"] in ref_runs]
            pairs.sort(key=lambda ab: ab[0]["train_seed"])
            for split in refs:
                if not pairs or not all(split in x["eval"] for ab in pairs for x in ab):
                    continue
                for metric in METRICS:
                    keys = tuple((a["key"], b["key"]) for a, b in pairs)
                    ck = ("boot", prefix, keys, split, metric, bootstrap_n)
                    if ck not in cache:
                        cache[ck] = two_level_bootstrap(
                            [stats(a, split, metric) for a, _ in keys],
                            [stats(b, split, metric) for _, b in keys],
                            metric,
                            n=bootstrap_n,
                            seed=0,
                            tgt_lang=tgt_lang,
                        )
                    out.append(
                        {
                            "budget": budget,
                            "a": reference,
                            "b": arm,
                            "b_budget": None if arm in whole else budget,
                            "test": split,
                            "seeds": [a["train_seed"] for a, _ in pairs],
                            **cache[ck],
                        }
                    )
    return out


# --------------------------------------------------------------------------- plain words


def interval(s: dict[str, Any]) -> str:
    return f"{s['delta']:+.2f} [{s['ci_low']:+.2f}, {s['ci_high']:+.2f}]"


def cell(row: dict[str, Any], split: str, metric: str) -> str:
    c = row.get(f"{split}.{metric}")
    if not c or not math.isfinite(c["mean"]):
        return "-"
    return f"{c['mean']:.2f} ± {c['std']:.2f}"


def plain_words(report: dict[str, Any]) -> list[str]:
    """Per direction and budget, in words, from the tables: the best arm in domain (chrF),
    gdig's difference to it and to the usual alternatives with its two-level interval, and
    where gdig loses. Nothing here is typed in by hand."""
    ref = report["reference"]
    arms = [a["name"] for a in report["arms"]]
    selector_of = {
        a["name"]: "variant" if a.get("variant") else a["selector"] for a in report["arms"]
    }
    lines = []
    for exp in report["experiments"]:
        d = exp["direction"]
        if not exp["table"]:
            lines.append(f"{d}: no run finished yet ({exp['n_planned']} planned).")
            continue
        if exp["n_done"] < exp["n_planned"]:
            lines.append(
                f"{d}: partial, {exp['n_done']} of {exp['n_planned']} runs; what follows "
                "covers the finished runs only."
            )
        for budget in exp["budgets"]:
            rows = [r for r in exp["table"] if r["budget"] == budget]
            if not rows:
                continue
            label = exp["budget_labels"][str(budget)]
            sig = {
                (s["b"], s["test"], s["metric"]): s
                for s in exp["significance"]
                if s["budget"] == budget
            }
            best = max(rows, key=lambda r: r["test_in.chrf"]["mean"])
            seeds = best["n_runs"]  # its own (a partial table's arms may differ)
            text = (
                f"{d}, budget {label}: the best in-domain chrF is {best['arm']}'s, "
                f"{cell(best, 'test_in', 'chrf')} (mean ± std over {seeds} training "
                f"seed{'s' if seeds > 1 else ''})"
            )
            gdig = next((r for r in rows if r["arm"] == ref), None)
            if gdig is None:
                lines.append(text + f"; {ref} has no finished run at this budget.")
                continue
            if best["arm"] == ref:
                text += f": {ref} itself."
            else:
                s = sig.get((best["arm"], "test_in", "chrf"))
                text += f"; {ref}: {cell(gdig, 'test_in', 'chrf')}"
                text += f", {ref} minus {best['arm']} {interval(s)}." if s else "."
            named = [
                a
                for a in arms
                if a != ref and selector_of.get(a) in (*SUMMARY_SELECTORS, "variant")
            ]  # in the order of --arms
            diffs = [
                f"{a} {interval(sig[(a, 'test_in', 'chrf')])}"
                for a in named
                if (a, "test_in", "chrf") in sig
            ]
            if diffs:
                text += (
                    f" {ref} minus each arm, in-domain chrF (two-level bootstrap 95% interval): "
                    + "; ".join(diffs)
                    + "."
                )
            losses = [
                f"{s['b']} on the {TEST_NAMES[s['test']]} ({METRIC_NAMES[s['metric']]} "
                f"{interval(s)})"
                for s in sig.values()
                if s["ci_high"] < 0
            ]
            text += (
                f" {ref} loses (an arm significantly better: the interval of {ref} minus it "
                "lies below 0) to " + "; ".join(losses) + "."
                if losses
                else f" No arm is significantly better than {ref} at this budget on either "
                "test set or metric."
            )
            lines.append(text)
    return lines


# --------------------------------------------------------------------------- chart


def plot(report: dict[str, Any], path: Path) -> None:
    """Bars: mean ± std per arm and budget, one row per direction and metric, one column per
    test set; the whole pool as a dashed line with its ± std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exps = [e for e in report["experiments"] if e["table"]]
    if not exps:
        return
    splits = list(TEST_NAMES)
    n_rows = len(exps) * len(METRICS)
    fig, axes = plt.subplots(
        n_rows, len(splits), figsize=(6.5 * len(splits), 3.4 * n_rows), squeeze=False
    )
    arm_names = [a["name"] for a in report["arms"] if a["selector"] is not None]
    colors = {a: f"C{i % 10}" for i, a in enumerate(arm_names)}
    for e_i, exp in enumerate(exps):
        table = exp["table"]
        budgets = [b for b in exp["budgets"] if any(r["budget"] == b for r in table)]
        arms = [a for a in arm_names if any(r["arm"] == a for r in table)]
        whole = next((r for r in table if r["budget"] is None), None)
        width = 0.8 / max(1, len(arms))
        for m_i, metric in enumerate(METRICS):
            for j, split in enumerate(splits):
                ax = axes[e_i * len(METRICS) + m_i][j]
                for k, arm in enumerate(arms):
                    xs, ms, ss = [], [], []
                    for bi, b in enumerate(budgets):
                        row = next((r for r in table if r["arm"] == arm and r["budget"] == b), None)
                        if row:
                            xs.append(bi + (k - (len(arms) - 1) / 2) * width)
                            ms.append(row[f"{split}.{metric}"]["mean"])
                            ss.append(row[f"{split}.{metric}"]["std"])
                    ax.bar(xs, ms, width, yerr=ss, capsize=2, label=arm, color=colors[arm])
                if whole:
                    m, s = whole[f"{split}.{metric}"]["mean"], whole[f"{split}.{metric}"]["std"]
                    ax.axhline(m, color="k", ls="--", lw=1, label="whole pool")
                    ax.axhspan(m - s, m + s, color="k", alpha=0.08)
                ax.set_ylim(0, max(1.0, ax.get_ylim()[1] * 1.05))
                ax.set_xticks(range(len(budgets)), [exp["budget_labels"][str(b)] for b in budgets])
                ax.set_title(f"{exp['direction']}, {TEST_NAMES[split]}: {METRIC_NAMES[metric]}")
                if e_i == 0 and m_i == 0 and j == 0:
                    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.suptitle("Fine-tuned on each subset: mean ± std over training seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- RESULTS.md


def _machine_line(report: dict[str, Any]) -> str:
    m, g = report["machine"], report["commit"]
    dirty = (
        f", the tree dirty ({len(g['dirty_files'])} tracked files differed from it; "
        "results.json lists them)"
        if g["dirty_files"]
        else ", the tree clean"
    )
    commits = sorted(
        {r.get("commit") for e in report["experiments"] for r in e["runs"] if r.get("commit")}
    )
    ran_on = f"; the runs ran on commits {', '.join(commits)}" if len(commits) > 1 else ""
    kept = [e["direction"] for e in report["experiments"] if e.get("kept")]
    kept_note = (
        f" {', '.join(kept)}: kept from an earlier invocation, on the machine its section names."
        if kept
        else ""
    )
    return (
        f"Commit {g['commit']} at the start of this invocation{dirty}{ran_on}. "
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['cpus_usable']} usable), torch "
        f"{m['torch']} (threads: {m['torch_threads']}), Python {m['python']}, device "
        f"{m['device']}; 1-minute load {m['loadavg_at_start']} at the start, "
        f"{m['loadavg_now'][0]} when this file was written ({report['written']}; started "
        f"{report['started']}).{kept_note}"
    )


def _kept_line(exp: dict[str, Any]) -> str:
    """Where a direction kept from an earlier results.json (``--directions``) was run."""
    k = exp["kept"]
    m, p = k["machine"], k["precision"]
    return (
        f"**Kept as an earlier invocation left it** (this invocation did not run it; its "
        f"hypotheses were in that invocation's work folder): `{k['command']}` at commit "
        f"{k['commit']['commit']}, written {k['written']}, on {m['cpu']} ({m['cores']} cores, "
        f"torch {m['torch']}); precision: training {p['train']}, decoding {p['eval']} "
        f"({p['why']})."
    )


def _scoring_time(g: dict[str, Any]) -> str:
    """What the scoring cost: its stages' own seconds (kept in the run's manifest, so a
    resumed invocation that reused them still shows them), and a pool fine-tune first."""
    stages = {k: v for k, v in (g.get("stage_seconds") or {}).items() if v}
    text = " + ".join(f"{k} {v:.0f} s" for k, v in stages.items()) or f"{g.get('wall_s', 0):.0f} s"
    if (g.get("finetune_first_s") or 0) >= 1:
        text = f"fine-tuning on the pool {g['finetune_first_s']:.0f} s, then " + text
    return text


def _data_section(exp: dict[str, Any], args: dict[str, Any]) -> list[str]:
    d = exp["data"]
    lines = [
        f"From `{args['data_dir']}` ({d['files']['in_domain']} in-domain, "
        f"{d['files']['other_domain']} other-domain), split seed {d['config']['seed']}; all "
        "splits are disjoint in id, source text and target text.",
        "",
        "| split | pairs | what |",
        "| --- | ---: | --- |",
        f"| seeds | {d['sizes']['seeds']} | clean in-domain pairs, 5-14 target words (gdig's "
        "trusted seed set) |",
        f"| pool | {d['sizes']['pool']} | in-domain pairs with {d['noise_rate']:.0%} injected "
        "noise (below) |",
        f"| dev | {d['sizes']['dev']} | clean in-domain pairs (only for choices: tau, scoring) |",
        f"| test_in | {d['sizes']['test_in']} | clean in-domain pairs (never in pool/seeds/dev) |",
        f"| test_other | {d['sizes']['test_other']} | gettext software strings (none in pool) |",
        "",
        "| pool noise | pairs | share | what |",
        "| --- | ---: | ---: | --- |",
    ]
    n_pool = max(1, d["sizes"]["pool"])
    for k, n in d["noise_counts"].items():
        lines.append(f"| {k} | {n} | {n / n_pool:.1%} | {NOISE_DOC.get(k, 'unchanged pair')} |")
    return lines + [""]


def _experiment_section(exp: dict[str, Any], report: dict[str, Any]) -> list[str]:
    a, ref = report["args"], report["reference"]
    labels = exp["budget_labels"]

    def blabel(b) -> str:
        return labels[str(b)]

    lines = [
        f"## {exp['direction']}: budgets {exp['budget_text']}",
        "",
        f"Runs: {exp['n_done']} of {exp['n_planned']} planned"
        + (" (**partial**)." if exp["n_done"] < exp["n_planned"] else "."),
        "",
    ]
    if exp.get("kept"):
        lines += [_kept_line(exp), ""]
    if exp["data"] is None:
        return lines + ["Not started yet.", ""]
    lines += ["### Data", "", *_data_section(exp, a)]
    g = exp["gdig_run"] or {}
    lines += [
        "### Selection",
        "",
        f"Scored once by `gdig run` with the {g.get('scorer', '?')} (factor samples "
        f"{a['factor_samples']}, layer stride {a['layer_stride']}, autocast {a['autocast']}"
        + (f", `{a['gdig_args']}`" if a["gdig_args"] else "")
        + f"; {_scoring_time(g)}). Each subset: `gdig select --selector S --scoring C "
        f"--tau {g.get('tau')} --budget B --random-seed SEED --on-short fill` (SEED = the "
        f"training seed); arms without a scoring use {g.get('scoring')!r}.",
    ]
    auc = g.get("noise_auc") or {}
    if auc:
        lines.append(
            "Noise detection AUC of the negative mean benefit against the `noise` labels: "
            + ", ".join(f"{k} {v:.3f}" for k, v in auc.items() if v is not None)
            + "."
        )
    dc = exp.get("dev_choice")
    if dc:
        lines.append(
            f"Tau and scoring chosen on dev (gdig at budget {dc['budget']}, training seed 0, "
            f"{exp['data']['sizes']['dev']} dev pairs): "
            + "; ".join(
                f"tau {r['tau']} {r['scoring']}: dev chrF {r['dev_chrf']:.2f}"
                + (f" (the same subset as {r['same_as']})" if r.get("same_as") else "")
                for r in dc["trials"]
            )
            + f" -> tau {dc['chosen']['tau']}, {dc['chosen']['scoring']}."
        )
    else:
        lines.append("No choice step: tau and scoring as given (the test sets chose nothing).")
    lines += [""]
    table = exp["table"]
    for split, name in TEST_NAMES.items():
        lines += [
            f"### {name} ({exp['data']['sizes'][split]} sentences): mean ± std over seeds",
            "",
            "| budget | arm | runs | noise of subset | BLEU | chrF | runaway | format failures |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in table:
            lines.append(
                f"| {blabel(r['budget'])} | {r['arm']} | {r['n_runs']} | "
                f"{r['noise_rate']:.1%} | {cell(r, split, 'bleu')} | {cell(r, split, 'chrf')}"
                f" | {r[f'{split}.n_runaway']:.1f} | {r[f'{split}.n_format_failures']:.1f} |"
            )
        lines.append("")
    kinds = list(exp["data"]["noise_counts"])
    lines += [
        "### Composition of the subsets (mean pairs of each kind over seeds)",
        "",
        "| budget | arm | pairs | noise rate (± std) | " + " | ".join(kinds) + " |",
        "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in kinds) + " |",
    ]
    for r in table:
        lines.append(
            f"| {blabel(r['budget'])} | {r['arm']} | {r['n_pairs']} | {r['noise_rate']:.1%} "
            f"(± {r['noise_rate_std']:.1%}) | "
            + " | ".join(f"{r['noise_kinds_mean'].get(k, 0):.1f}" for k in kinds)
            + " |"
        )
    lines += [
        "",
        f"### Significance: {ref} against every other arm, two-level bootstrap",
        "",
        f"Each of {a['bootstrap_n']} resamples draws the training seeds with replacement, "
        "then the test sentences with replacement within each drawn seed; the same draws "
        f"serve both arms (paired by seed and sentence), and the corpus metric of each arm "
        f"on the resample gives one difference {ref} - arm. Interval: 2.5th-97.5th "
        f"percentile; p: share of resamples where {ref} is not better (one-sided). {ref} and "
        "arm columns: the corpus metric over all paired seeds' hypotheses together; per seed: "
        f"{ref} - arm on each training seed's hypotheses alone. The whole pool (`all`) is "
        "paired on the seeds it has.",
        "",
        f"| budget | vs | test | metric | seeds | {ref} | arm | {ref} - arm | 95% interval "
        "| p | per seed |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for s in exp["significance"]:
        mark = " **(loses)**" if s["ci_high"] < 0 else (" **(wins)**" if s["ci_low"] > 0 else "")
        lines.append(
            f"| {blabel(s['budget'])} | {s['b']} | {s['test']} | {METRIC_NAMES[s['metric']]} | "
            f"{','.join(map(str, s['seeds']))} | {s['score_a']:.2f} | {s['score_b']:.2f} | "
            f"{s['delta']:+.2f}{mark} | [{s['ci_low']:+.2f}, {s['ci_high']:+.2f}] | "
            f"{s['p_value']:.3f} | {', '.join(f'{x:+.2f}' for x in s['seed_deltas'])} |"
        )
    return lines + [""]


def _time_section(report: dict[str, Any]) -> list[str]:
    t = report["time"]
    lines = [
        "## Time",
        "",
        f"Planned for the defaults: {t['budget']}.",
        "",
        f"Planned for these settings: {t['plan']}.",
        "",
        "Measured, means per run (wall seconds; CPU seconds of all threads in brackets, less "
        "sensitive to other load; 1-minute load average when the run started; `reused`: runs "
        "that had the same subset and settings as another run and took its result):",
        "",
        "| direction | budget | arm | runs | reused | precision | train s | s / example "
        "| decode s (in + other) | s / sentence | load |",
        "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    spent = 0.0
    for exp in report["experiments"]:
        for r in exp["table"]:
            dec = [f"{r[f'{s}.eval_s']:.0f} ({r[f'{s}.eval_cpu_s']:.0f})" for s in TEST_NAMES]
            sps = _mean(r[f"{s}.seconds_per_sentence"] for s in TEST_NAMES)
            lines.append(
                f"| {exp['direction']} | {exp['budget_labels'][str(r['budget'])]} | {r['arm']} | "
                f"{r['n_runs']} | {r['reused']} | {'/'.join(r['precision'])} | "
                f"{r['train_s']:.0f} ({r['train_cpu_s']:.0f}) | {r['seconds_per_example']:.3f} | "
                f"{' + '.join(dec)} | {sps:.3f} | {r['loadavg']:.1f} |"
            )
        for run in exp["runs"]:
            if not run.get("same_as"):
                spent += run["train_s"] + sum(e["eval_s"] for e in run["eval"].values())
    done, planned = report["status"]["done"], report["status"]["planned"]
    lines += [
        "",
        f"Train + decode time of the {done} finished runs: {spent / 3600:.2f} h"
        + (
            f"; at their mean, the {planned - done} runs left need about "
            f"{spent / max(1, done) * (planned - done) / 3600:.1f} h more."
            if done < planned
            else "."
        )
        + f" This invocation so far: {t['this_invocation_s'] / 3600:.2f} h.",
        "",
    ]
    return lines


def markdown(report: dict[str, Any], png_name: str | None) -> str:
    a, st = report["args"], report["status"]
    smoke = a.get("smoke")
    lines = [
        "# Quality experiment: does gdig pick better fine-tuning data than the usual alternatives?",
        "",
        (
            f"**partial: {st['done']} of {st['planned']} runs** (the experiment is running or "
            "was stopped; rerunning the command resumes it)."
            if st["partial"]
            else f"Complete: {st['planned']} runs."
        ),
        "",
    ]
    if smoke:
        lines += [
            "**Smoke run** (tiny random LLaMA, tiny sizes): checks the pipeline only; the "
            "numbers mean nothing.",
            "",
        ]
    else:
        lines += [
            f"Base model `{a['model']}`; every subset fine-tunes the base model afresh, greedy "
            "decoding, sacreBLEU BLEU and chrF. Arms: "
            + ", ".join(
                f"`{x['name']}`"
                + (f" (scoring {x['scoring']})" if x["scoring"] else "")
                + (" (the whole pool)" if x["selector"] is None else "")
                + (f" (the dev study's variant {x['variant']})" if x.get("variant") else "")
                for x in report["arms"]
            )
            + ".",
            "",
        ]
        if report.get("non_default_args"):
            lines += [
                "**Not the default experiment**: "
                + ", ".join(f"{k} = {v}" for k, v in report["non_default_args"].items())
                + ".",
                "",
            ]
    lines += [
        "Produced by `benchmarks/quality/run_quality.py` (`make quality`); every number below "
        "comes from `results.json` beside this file, and so does the summary.",
        "",
        "```",
        report["command"],
        "```",
        "",
        _machine_line(report),
        "",
        "## Summary (generated from the tables below)",
        "",
        *(f"- {s}" for s in report["summary"]),
        "",
    ]
    p = report["precision"]
    lines += [
        "## Settings",
        "",
        f"- fine-tuning (gdig.train): epochs {a['epochs']}, max steps {a['max_steps']}, "
        f"learning rate {a['learning_rate']}, batch {a['train_batch_size']} x accumulation "
        f"{a['grad_accum']}, warm-up {a['warmup_ratio']}, template {a['template']}, longest "
        f"example {a['max_length']} tokens; training seeds {a['train_seeds']} (whole pool: "
        f"{a['whole_seeds']}); a fresh copy of the base model for every run.",
        f"- decoding: greedy, max new tokens {a['max_new_tokens']}, batch {a['eval_batch_size']}.",
        f"- precision: training {p['train']}, decoding {p['eval']} ({p['why']})"
        + (
            "; a kept direction names its own."
            if any(e.get("kept") for e in report["experiments"])
            else "."
        ),
        f"- choices on dev only: taus {a['dev_taus'] or a['tau']}, scorings "
        f"{a['dev_scorings'] or a['scoring']}; the test sets choose nothing.",
        "",
    ]
    for exp in report["experiments"]:
        lines += _experiment_section(exp, report)
    lines += _time_section(report)
    if png_name:
        lines += [
            f"![mean ± std per arm and budget]({png_name})",
            "",
            "(The chart is drawn when a direction's runs are all done.)",
            "",
        ]
    lines += [
        "Resume: run the same command again; finished runs (`runs/KEY/result.json` in each "
        "direction's subfolder of the work folder, hypotheses beside them) are skipped.",
        "",
    ]
    return "\n".join(lines)
