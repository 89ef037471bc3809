"""How close gdig's default mode comes to exact EK-FAC influence, and what closer costs.

    python benchmarks/accuracy.py [--seeds 64] [--candidates 128] [--ranks 16,32,64,128,0]
        [--k 16,32,64] [--out benchmarks/RESULTS.md]

SmolLM2-135M-Instruct, gdig's default tracked layers (10 MLP down-projections, 576x1536),
S seeds and the next N candidates of Tatoeba zh-en (``--data-dir``), EK-FAC factors fitted
on the N candidates (the peers' set-up). Two exact references:

* gdig's exact mode (``exact=True``: no rank compression, identity projections, float64
  seed work): the same factors, nothing approximated after them;
* kronfluence's exact EK-FAC (no low-rank query; ``benchmarks/peers.py``'s
  kronfluence-exact, run in a child; needs `make peers`): an independent implementation.

Each row is gdig's default mode with one setting changed: the seed rank r (``--ranks``;
0 = no compression, scored through the seeds' dense gradients, which give the same numbers
as the low-rank order to rounding) or the projection size k = k_in = k_out (``--k``, at
r = 32), which changes no benefit, only the features that clustering and ``rescore`` use.
Against each reference: Spearman over all N x S pairs, sign agreement, overlap of the top
10 % of candidates by mean benefit, agreement of n_pos (the quality filter's count: the
share of candidates with the same count, and with the same pass/fail at tau = 0.9), the
overlap of the gdig selection (budget N/4, tau 0.9, fill) made from these benefits with the
one made from the reference's (same features, so only the benefits differ), and, for the
k rows, the Spearman of the benefits re-scored from the stored features (``rescore``'s
route). Cost, timed in this process after the references have finished (they run first, in
children, so that nothing shares the cores with a timed row): seconds per seed and
candidates/s of scoring, each the median of ``--repeats`` rounds (rank order rotated, after
the untimed first pass that gives the benefits) with its min-max; the prepared seeds'
memory; and fit + seeds + score against r = 32's (one fit serves every rank).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from harness import (
    ROOT,
    Machine,
    add_common_args,
    child_main,
    command,
    real_pairs,
    rotated,
    spread,
    write_section,
)

DATA_FILE = "tatoeba.zh-en.jsonl"
TAU = 0.9


@dataclass
class Row:
    """One setting of gdig's default mode: its benefits, features and costs."""

    label: str
    benefit: np.ndarray  # [N, S]
    rescored: np.ndarray | None  # [N, S] from the projected features (k rows)
    features: np.ndarray  # [N, D] for the selection's clustering
    fit_s: float
    seeds_s: list[float]  # one per timed round (the first pass alone without --repeats)
    score_s: list[float]
    seed_mib: float
    extra: dict = field(default_factory=dict)

    @property
    def seeds_med(self) -> float:
        return float(np.median(self.seeds_s))

    @property
    def score_med(self) -> float:
        return float(np.median(self.score_s))


def n_pos(b: np.ndarray) -> np.ndarray:
    return (b > 0).sum(1)


def selection(benefit: np.ndarray, features: np.ndarray) -> set[int]:
    from gdig.select import SelectConfig, select
    from gdig.select.source import ArraySource

    n = benefit.shape[0]
    source = ArraySource(features, benefits=benefit.astype(np.float32))
    cfg = SelectConfig(budget=max(1, n // 4), tau=TAU, on_short="fill")
    return set(np.flatnonzero(select(source, cfg).selected).tolist())


def compare(got: np.ndarray, ref: np.ndarray, feats: np.ndarray) -> dict:
    """Agreement of ``got`` with the reference ``ref`` (both [N, S])."""
    from scipy.stats import spearmanr

    got, ref = got[:, : ref.shape[1]], ref
    k = max(1, len(ref) // 10)
    top = set(np.argsort(-got.mean(1))[:k]), set(np.argsort(-ref.mean(1))[:k])
    need = int(np.ceil(TAU * ref.shape[1]))
    sel_got, sel_ref = selection(got, feats), selection(ref, feats)
    return {
        "spearman": float(spearmanr(got.ravel(), ref.ravel()).statistic),
        "sign": float(((got > 0) == (ref > 0)).mean()),
        "top10": len(top[0] & top[1]) / k,
        "n_pos_equal": float((n_pos(got) == n_pos(ref)).mean()),
        "pass_equal": float(((n_pos(got) >= need) == (n_pos(ref) >= need)).mean()),
        "selection": len(sel_got & sel_ref) / max(1, len(sel_ref)),
    }


def run_gdig(model, tok, seeds, cands, cfg, work: Path, factors=None) -> tuple:
    """(factors, seeds, store, fit s, seeds s, score s) of one gdig configuration."""
    from gdig.engine import fit_factors, prepare_seeds, score_candidates

    t0 = time.perf_counter()
    if factors is None:
        factors = fit_factors(model, tok, cands, cfg, progress=False)
    fit_s, t0 = time.perf_counter() - t0, time.perf_counter()
    sg = prepare_seeds(model, tok, seeds, factors, cfg, progress=False)
    seeds_s, t0 = time.perf_counter() - t0, time.perf_counter()
    store = score_candidates(model, tok, cands, sg, cfg, work, progress=False)
    return factors, sg, store, fit_s, seeds_s, time.perf_counter() - t0


def benefits(store) -> np.ndarray:
    return np.concatenate([b for _, b in store.benefit_blocks()])


def seed_mib(sg) -> float:
    return sum(u.numel() * u.element_size() + v.numel() * v.element_size()
               for u, v in zip(sg.u, sg.v, strict=True)) / 2**20  # fmt: skip


def load(args: argparse.Namespace):
    """SmolLM2, the seeds, the candidates and the default config of this study."""
    import torch

    from gdig.engine.config import EngineConfig
    from gdig.model import ensure_smollm2, load_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = load_model(ensure_smollm2(), progress=False)
    seeds = real_pairs(DATA_FILE, 0, args.seeds, args.data_dir)
    cands = real_pairs(DATA_FILE, args.seeds, args.candidates, args.data_dir)
    cfg = EngineConfig.from_flat(factor_samples=0, batch_size=args.batch_size)
    return model, tok, seeds, cands, cfg


def gdig_exact_child(spec: dict) -> dict:
    """gdig's exact mode, in its own process (it holds gigabytes): benefits to an .npy.
    Small batches and shards, since a shard's full-gradient features stay in memory."""

    args = argparse.Namespace(**spec)
    model, tok, seeds, cands, base = load(args)
    cfg = base.with_options(exact=True, batch_size=4, shard_size=4)
    work = Path(spec["work"])
    *_, store, fit_s, seeds_s, score_s = run_gdig(model, tok, seeds, cands, cfg, work / "exact")
    np.save(work / "gdig-exact.npy", benefits(store))
    return {"fit_s": fit_s, "seeds_s": seeds_s, "score_s": score_s}


def start_references(args: argparse.Namespace, work: Path) -> dict[str, tuple]:
    """The exact references, each in a child process running beside the main one."""
    common = {
        "seeds": args.seeds, "candidates": args.candidates, "batch_size": args.batch_size,
        "threads": args.threads, "work": str(work), "data_dir": args.data_dir,
    }  # fmt: skip
    jobs: dict[str, tuple] = {}
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if not args.no_gdig_exact:
        cmd = [sys.executable, __file__, "--child", json.dumps(common)]
        jobs["gdig exact"] = (subprocess.Popen(cmd, env=env), work / "gdig-exact.npy")
    if not args.no_kronfluence:
        if not (ROOT / ".peers" / "kronfluence").is_dir():
            raise SystemExit("accuracy: kronfluence is not in .peers/; run `make peers` first")
        spec = {**common, "method": "kronfluence-exact", "subset": 2, "exact_seeds": args.seeds,
                "model": "smollm2", "official_bq": 1, "save_scores": True}  # fmt: skip
        cmd = [sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--child", json.dumps(spec)]
        jobs["kronfluence exact"] = (subprocess.Popen(cmd, env=env), work / "kronfluence-exact.npy")
    return jobs


def measure(args: argparse.Namespace) -> tuple[list[Row], dict[str, np.ndarray], str]:
    work = Path(tempfile.mkdtemp(prefix="gdig-accuracy-"))
    refs = finish_references(start_references(args, work))  # before any timed row
    model, tok, seeds, cands, base = load(args)
    rows: list[Row] = []
    configs = {}
    factors32 = None
    for r in args.ranks:  # the first pass: benefits and features, and a warm-up
        # r = 0: no compression; the dense order gives the same numbers, and fast
        cfg = base.with_options(rank=r, **({"dense_seeds_mb": 1 << 16} if r == 0 else {}))
        factors32, sg, store, fit_s, seeds_s, score_s = run_gdig(
            model, tok, seeds, cands, cfg, work / f"r{r}", factors32
        )
        fit_s = fit_s if not rows else rows[0].fit_s  # one fit serves every rank
        label = f"r = {r}" if r else "r = none (no compression)"
        feats = store.feature_rows(np.arange(store.n))
        rows.append(Row(label, benefits(store), None, feats, fit_s, [seeds_s], [score_s],
                        seed_mib(sg)))  # fmt: skip
        configs[label] = cfg
        print(label, f"fit {fit_s:.1f} seeds {seeds_s:.1f} score {score_s:.1f}", flush=True)
    if args.repeats:
        by_label = {row.label: row for row in rows}
        for row in rows:
            row.seeds_s, row.score_s = [], []
        for i in range(args.repeats):  # timed rounds, rank order rotated
            for label in rotated(list(by_label), i):
                *_, seeds_s, score_s = run_gdig(
                    model, tok, seeds, cands, configs[label], work / "timed", factors32
                )
                by_label[label].seeds_s.append(seeds_s)
                by_label[label].score_s.append(score_s)
                shutil.rmtree(work / "timed")
            print(f"timed round {i + 1} of {args.repeats} done", flush=True)
    for k in args.k:
        cfg = base.with_options(k_in=k, k_out=k)
        _, sg, store, fit_s, seeds_s, score_s = run_gdig(
            model, tok, seeds, cands, cfg, work / f"k{k}"
        )
        feats = store.feature_rows(np.arange(store.n))
        rescored = feats @ sg.features.T
        rows.append(Row(f"k = {k} (r = 32)", benefits(store), rescored, feats, fit_s, [seeds_s],
                        [score_s], seed_mib(sg), {"dim": feats.shape[1]}))  # fmt: skip
        print(f"k = {k}", f"fit {fit_s:.1f} seeds {seeds_s:.1f} score {score_s:.1f}", flush=True)
    return rows, refs, str(work)


def finish_references(jobs: dict[str, tuple]) -> dict[str, np.ndarray]:
    """Wait for the reference children; a failed one is left out, and said so."""
    refs: dict[str, np.ndarray] = {}
    for name, (proc, path) in jobs.items():
        if proc.wait() != 0 or not path.is_file():  # killed (out of memory?) or failed
            print(f"accuracy: {name} failed (exit {proc.returncode}); left out", file=sys.stderr)
            continue
        refs[name] = np.load(path)
    return refs


def render(rows: list[Row], refs: dict[str, np.ndarray], args, machine: str) -> str:
    base = next(r for r in rows if r.label == "r = 32")
    base_e2e = base.fit_s + base.seeds_med + base.score_med
    feats32 = base.features
    lines = [
        "## Accuracy of the default mode against exact EK-FAC (benchmarks/accuracy.py)"
        if refs
        else f"## What the seed rank costs at S = {args.seeds} (benchmarks/accuracy.py, no "
        "exact reference)",
        "",
        f"`{command('accuracy.py', getattr(args, 'argv', None))}`",
        "",
        machine,
        "",
        f"SmolLM2-135M-Instruct, 10 down_proj layers (576x1536), S = {args.seeds} Tatoeba "
        f"zh-en seeds, N = {args.candidates} candidates (the next {args.candidates} pairs), "
        "EK-FAC fitted on the N candidates, damping 0.1 x mean eigenvalue. Each row: the "
        "default mode at r = 32, k = 32, float32 (r = 32 was the default until this table "
        "chose 64) with one setting changed. Against each exact "
        "reference: Spearman over all pairs / sign agreement / top-10 % overlap (by mean "
        "benefit) / n_pos equal (share of candidates) / pass at tau 0.9 equal / gdig "
        f"selection overlap (budget N/4, tau {TAU}, fill; the r = 32 features for every row, "
        "so only the benefits differ). k rows: the same seeds and benefits as r = 32; "
        "`rescore` = Spearman of the benefits re-scored from the stored features. Cost, timed "
        "with nothing else running (the references finished first): s per seed and scoring "
        "candidates/s as the median (min-max) of the timed rounds (rank order rotated; k rows: "
        "one pass), prepared seeds' memory, scoring time against r = 32's (what dominates a "
        "large pool), and fit + seeds + score against r = 32's (medians; one fit for all).",
        "",
        "| setting | "
        + " | ".join(f"vs {name}" for name in refs)
        + " | rescore vs "
        + next(iter(refs), "-")
        + " | s/seed | score cand/s | score time x r=32 | seeds MiB | end to end x r=32 |",
        "|---|" + "---|" * len(refs) + "---:|" * 6,
    ]
    for row in rows:
        cells = [row.label]
        for ref in refs.values():
            a = compare(row.benefit, ref, feats32)
            close = [f"{a[k]:.3f}" for k in ("spearman", "sign")]
            shares = [f"{a[k]:.2f}" for k in ("top10", "n_pos_equal", "pass_equal", "selection")]
            cells.append(" / ".join(close + shares))
        rescore = ""
        if row.rescored is not None and refs:
            from scipy.stats import spearmanr

            ref = next(iter(refs.values()))
            rescore = f"{spearmanr(row.rescored.ravel(), ref.ravel()).statistic:.3f}"
            rescore += f" (D = {row.extra['dim']})"
        e2e = (row.fit_s + row.seeds_med + row.score_med) / base_e2e
        per_seed = [t / args.seeds for t in row.seeds_s]
        rate = [args.candidates / t for t in row.score_s]
        cells += [
            rescore, spread(per_seed, ".3f"), spread(rate, ".2f"),
            f"{row.score_med / base.score_med:.2f}", f"{row.seed_mib:.0f}", f"{e2e:.2f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    if len(refs) == 2:
        from scipy.stats import spearmanr

        a, b = refs.values()
        s = min(a.shape[1], b.shape[1])
        a, b = a[:, :s], b[:, :s]
        rho = spearmanr(a.ravel(), b.ravel()).statistic
        sign = ((a > 0) == (b > 0)).mean()
        lines += ["", f"The two exact references against each other: Spearman {rho:.4f}, "
                      f"signs {sign:.4f}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=64)
    ap.add_argument("--candidates", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--ranks", default="16,32,64,128,0", help="seed ranks (0 = none); 32 needed")
    ap.add_argument("--k", default="16,64", help="projection sizes k_in = k_out, at r = 32")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--repeats", type=int, default=3, help="timed rounds of the rank rows (0: first pass only)"
    )
    ap.add_argument("--no-gdig-exact", action="store_true", help="skip gdig's exact mode")
    ap.add_argument("--no-kronfluence", action="store_true", help="skip kronfluence-exact")
    ap.add_argument("--out", default=None, help="write the section into this RESULTS.md")
    ap.add_argument("--redraw", default=None, help="a finished run's folder: draw its table again")
    add_common_args(ap)
    argv = sys.argv[1:] if argv is None else argv
    if child_main(argv, gdig_exact_child):
        return
    args = ap.parse_args(argv)
    args.ranks = [int(x) for x in args.ranks.split(",") if x.strip()]
    args.k = [int(x) for x in args.k.split(",") if x.strip()]
    if 32 not in args.ranks:
        ap.error("--ranks must include 32 (the default every cost is compared with)")
    if args.redraw:  # the table again from a finished run's folder, no model pass
        work = Path(args.redraw)
        saved = json.loads((work / "rows.json").read_text())
        rows, refs = redraw_rows(work, saved["rows"]), load_refs(work)
        text = render(rows, refs, argparse.Namespace(**saved["args"]), saved["machine"])
    else:
        machine = Machine(args.threads, strict=args.strict_load)
        rows, refs, work = measure(args)
        line = machine.line()
        text = render(rows, refs, args, line)
        keep = [{k: getattr(r, k) for k in ("label", "fit_s", "seeds_s", "score_s", "seed_mib",
                 "extra")} for r in rows]  # fmt: skip
        run_args = {"seeds": args.seeds, "candidates": args.candidates, "argv": argv}
        (Path(work) / "rows.json").write_text(
            json.dumps({"rows": keep, "args": run_args, "machine": line}, indent=1)
        )
        print(f"stores, scores and rows.json kept in {work} (--redraw {work})", file=sys.stderr)
    print(text)
    if args.out:  # a cost-only run (no reference) has a section of its own per seed count
        costs_only = args.no_gdig_exact and args.no_kronfluence
        key = f"rank-cost-s{args.seeds}" if costs_only else "accuracy"
        write_section(args.out, key, "accuracy.py", text)


def store_dir(label: str) -> str:
    """The store folder measure() wrote a row's scores to."""
    if label.startswith("k = "):
        return "k" + label.split()[2]
    r = label.split()[2]
    return "r0" if r == "none" else f"r{r}"


def redraw_rows(work: Path, saved: list[dict]) -> list[Row]:
    from gdig.engine import GradStore

    rows = []
    for s in saved:
        store = GradStore.open(work / store_dir(s["label"]))
        feats = store.feature_rows(np.arange(store.n))
        seed_feats = store.seed_features if s["label"].startswith("k = ") else None
        rescored = feats @ seed_feats.T if seed_feats is not None else None
        rows.append(Row(s["label"], benefits(store), rescored, feats, s["fit_s"], s["seeds_s"],
                        s["score_s"], s["seed_mib"], s.get("extra", {})))  # fmt: skip
    return rows


def load_refs(work: Path) -> dict[str, np.ndarray]:
    names = {"gdig exact": "gdig-exact.npy", "kronfluence exact": "kronfluence-exact.npy"}
    return {k: np.load(work / f) for k, f in names.items() if (work / f).is_file()}


if __name__ == "__main__":
    main()
