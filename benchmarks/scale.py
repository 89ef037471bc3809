"""Scale benchmark (issue 11): the pipeline after scoring, and rescore, at growing pool sizes.

    python benchmarks/scale.py [--sizes 10000,100000,1000000] [--rescore-sizes 100000,1000000]
        [--out WORK_DIR] [--data-dir ../shared/data] [--feature-dtype float32]
        [--keep-stores] [--md benchmarks/RESULTS.md] [--no-write] [--smoke]

Each measurement runs in a fresh child process (this script with ``--child``), so
its peak resident memory (VmHWM, see :func:`harness.peak_mib`) belongs to it alone:

* ``pipeline`` at N pairs: a pool of N real pairs cycled from --data-dir (ids ``p0000000``,
  a ``noise`` field: ~70 % ``clean``, the rest misaligned / untranslated / truncated) is
  read and validated, its token lengths measured with the SmolLM2 tokenizer, a synthetic
  gradient store written with the engine's StoreWriter (S=32, D=64: timed, not a stage),
  then ``select`` (budget N/10), scores.csv + selected.jsonl + selection.npz, report.html.
* ``rescore`` at N candidates: a synthetic store at the default feature size D (SmolLM2's
  tracked layers x k_in x k_out) is built in one child, its pages dropped from the page
  cache (cold read), and ``gdig.engine.score.rescore`` against 256 new seeds timed in another.

Writes --out/results.jsonl (a JSON line per measurement) and, unless --no-write, the scale
section of benchmarks/RESULTS.md (between its markers) and benchmarks/scale.png beside it.
The default sizes need ~46 GB free under --out (the 1M x D=10240 float32 rescore store is
41 GB, removed after use unless --keep-stores; float16 halves it) and ~20-30 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from harness import (
    RESULTS,
    AnonPeak,
    Machine,
    add_common_args,
    child_main,
    command,
    data_dir,
    peak_mib,
    run_child,
    write_section,
)

PHASES = ("read_validate", "lengths", "store_synth", "select", "writers", "report")
NOT_A_STAGE = "store_synth"  # stands in for the model pass, which bench_engine.py times
NOISE = {"clean": 0.70, "misaligned": 0.10, "untranslated": 0.10, "truncated": 0.10}
PIPE_SEEDS, PIPE_DIM, RESCORE_SEEDS, STORE_SEEDS, TOP_K = 32, 64, 256, 32, 5
LENGTH_CHUNK = 10_000
MARGIN = 5 * 10**9  # disk that must stay free beside a rescore store


def _pid(i: int) -> str:
    return f"p{i:07d}"


def ensure_pool(n: int, data_dir: Path, out: Path) -> Path:
    """``out/pool-N.jsonl``, written once per N and reused (its sidecar says from what)."""
    path, meta_path = out / f"pool-{n}.jsonl", out / f"pool-{n}.json"
    files = sorted(data_dir.glob("*.jsonl"))
    if not files:
        raise SystemExit(f"scale: no *.jsonl pairs in {data_dir}; pass --data-dir")
    meta = json.dumps({"n": n, "files": {f.name: f.stat().st_size for f in files}, "v": NOISE})
    if path.is_file() and meta_path.is_file() and meta_path.read_text() == meta:
        return path
    base = []
    for file in files:
        with open(file, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                base.append((r.get("src_lang"), r.get("tgt_lang"), r["src"], r["tgt"]))
    random.Random(0).shuffle(base)  # mix the files' directions and domains
    rng = random.Random(0)  # one draw per pair: the pools of all N share their prefix
    with open(path.with_suffix(".tmp"), "w", encoding="utf-8") as f:
        for i in range(n):
            src_lang, tgt_lang, src, tgt = base[i % len(base)]
            kind = rng.choices(list(NOISE), weights=list(NOISE.values()))[0]
            if kind == "misaligned":  # another pair's target
                tgt = base[(i * 7919 + 1) % len(base)][3]
            elif kind == "untranslated":
                tgt = src
            elif kind == "truncated":  # the targets are English: cut at a word
                tgt = " ".join(tgt.split()[: max(1, len(tgt.split()) // 2)])
            rec = {"id": _pid(i), "src_lang": src_lang, "tgt_lang": tgt_lang, "src": src}
            rec.update(tgt=tgt or "…", noise=kind)
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(path.with_suffix(".tmp"), path)
    meta_path.write_text(meta)
    return path


# ------------------------------------------------------------------ child side


def synth_store(root: Path, n: int, noisy: Any, n_seeds: int, dim: int, dtype: str) -> Any:
    """A real-format store of n candidates, shard by shard: random features; benefits of
    clean rows centred on +1 and of noisy ones on -0.5, so about a third pass tau=1."""
    import numpy as np
    import torch

    from gdig.engine.config import ExecutionConfig
    from gdig.engine.score import batch_stats
    from gdig.engine.store import GradStore, StoreWriter

    seed_feats = np.random.default_rng(0).standard_normal((n_seeds, dim), dtype=np.float32)
    size = ExecutionConfig().shard_size
    writer = StoreWriter(
        root, run_key={"synthetic": "benchmarks/scale.py", "n": n, "dim": dim}, n=n,
        shard_size=size, seed_ids=[f"s{j:03d}" for j in range(n_seeds)],
        seed_features=seed_feats, seed_norm=np.linalg.norm(seed_feats, axis=1),
        layers=[{"name": "synthetic", "d_out": dim, "d_in": 1}], top_k=TOP_K, feature_dtype=dtype,
    )  # fmt: skip
    n_shards = -(-n // size)
    for index in range(n_shards):
        start, stop = index * size, min(n, (index + 1) * size)
        ids = [_pid(i) for i in range(start, stop)]
        if writer.shard_done(index, ids):  # a kept store (--keep-stores) resumes
            continue
        r, m = np.random.default_rng([0, index]), stop - start
        feats = r.standard_normal((m, dim), dtype=np.float32)
        bad = np.zeros(m, bool) if noisy is None else np.asarray(noisy[start:stop], bool)
        q = np.where(bad, -0.5, 1.0) + 0.3 * r.standard_normal(m)
        benefit = (q[:, None] + 0.5 * r.standard_normal((m, n_seeds))).astype(np.float32)
        stats = {k: v.numpy() for k, v in batch_stats(torch.from_numpy(benefit), TOP_K).items()}
        norm = np.linalg.norm(feats, axis=1)
        writer.write_shard(
            index, start, ids, {"benefit": benefit, "features": feats, "cand_norm": norm, **stats}
        )
    writer.finish(n_shards)
    return GradStore.open(root)


def child_pipeline(spec: dict[str, Any]) -> dict[str, Any]:
    with AnonPeak() as anon:  # per-phase peaks of anonymous memory
        return _pipeline(spec, anon)


def _pipeline(spec: dict[str, Any], anon: AnonPeak) -> dict[str, Any]:
    import numpy as np
    from transformers import AutoTokenizer

    from gdig.data.labels import check_label_field, label_values, noise_kinds
    from gdig.data.pool import open_pool
    from gdig.engine.config import FactorConfig
    from gdig.model import resolve_model
    from gdig.pipeline.lengths import token_lengths
    from gdig.pipeline.poolrows import PairTexts, pool_rows
    from gdig.report import sample_map_rows, write_report
    from gdig.select import SelectConfig, Selection, select
    from gdig.select.metrics import noise_summary
    from gdig.select.selectors import finite_source
    from gdig.select.writers import write_scores, write_selected

    n, path, out = spec["n"], Path(spec["pool"]), Path(spec["dir"])
    shutil.rmtree(out, ignore_errors=True)  # a left store would resume: time a fresh one
    out.mkdir(parents=True)
    res: dict[str, Any] = {"start_mib": peak_mib(), "phases": {}, "peak_after_mib": {}}
    res["anon_start_mib"], res["anon_peak_mib"] = AnonPeak.now_kib() / 1024, {}
    clock = time.perf_counter()

    def done(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        res["phases"][phase], clock = now - clock, now
        res["peak_after_mib"][phase] = peak_mib()
        res["anon_peak_mib"][phase] = anon.take_mib()

    pool = open_pool(path)
    noisy = np.array(check_label_field(pool, "noise", str(path)), dtype=bool)
    if len(pool) != n or pool.id(n - 1) != _pid(n - 1):
        raise SystemExit(f"scale: {path} does not hold the {n} expected pairs")
    done("read_validate")
    folder = resolve_model("smollm2", progress=False)
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    lengths, limit = np.empty(n, dtype=np.int32), FactorConfig().max_length
    for start in range(0, n, LENGTH_CHUNK):  # chunks: the texts of all N are never held
        chunk = pool.take(range(start, min(n, start + LENGTH_CHUNK)))
        # As a run measures them: exact above the limit, a bound below it (never tokenised).
        lengths[start : start + len(chunk)] = token_lengths(chunk, tok, "paper", limit=limit)
    res.update(too_long=int((lengths > limit).sum()))
    done("lengths")
    store = synth_store(out / "store", n, noisy, PIPE_SEEDS, PIPE_DIM, "float32")
    done("store_synth")
    sel = select(store, SelectConfig(budget=max(1, n // 10)))
    done("select")
    # what stage_select does (run/stages.py), on the synthetic store
    where = str(out / "store")
    prow, top = pool_rows(pool, sel.ids, where), store.top_seeds(sel.ids)
    write_scores(out / "scores.csv", sel, top)
    write_selected(out / "selected.jsonl", sel, lambda r: pool.take(prow[r]), top)
    sel.save(out / "selection.npz")
    done("writers")
    # stage_report runs on its own: nothing of the select stage is kept, the selection is
    # read back from its file.
    del top, prow, sel
    sel = Selection.load(out / "selection.npz")
    source, rows = finite_source(store), sample_map_rows(sel)
    prow = pool_rows(pool, sel.ids, where)  # stage_report maps the ids again
    texts, values = PairTexts(pool, prow), label_values(pool, prow, "noise")
    summary = {"seeds": store.n_seeds, "noise": noise_summary(source, sel, noisy)}
    feats = source.feature_rows(rows)
    kinds = noise_kinds(values, noisy, sel.passed_quality, sel.selected)
    write_report(out, sel, texts, feats, summary, map_rows=rows, noise_kinds=kinds)
    done("report")
    res.update(selected=int(sel.selected.sum()), passed_quality=int(sel.passed_quality.sum()))
    return res


def child_store(spec: dict[str, Any]) -> dict[str, Any]:
    t, root = time.perf_counter(), Path(spec["store"])
    synth_store(root, spec["n"], None, STORE_SEEDS, spec["dim"], spec["dtype"])
    return {"seconds": time.perf_counter() - t}


def child_rescore(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from gdig.engine import GradStore, rescore

    store = GradStore.open(spec["store"])
    for file in store.root.glob("shard-*/*"):  # a cold read: drop the store's cached pages
        fd = os.open(file, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    seeds = np.random.default_rng(1).standard_normal((RESCORE_SEEDS, store.dim), dtype=np.float32)
    start_mib, anon_start = peak_mib(), AnonPeak.now_kib() / 1024
    t = time.perf_counter()
    with AnonPeak() as anon:
        got = rescore(store, seeds)
    seconds = time.perf_counter() - t
    if len(got["mean"]) != store.n:
        raise SystemExit(f"scale: rescore gave {len(got['mean'])} rows for {store.n}")
    return {
        "seconds": seconds, "cand_per_s": store.n / seconds, "start_mib": start_mib,
        "anon_start_mib": anon_start, "anon_peak_mib": anon.mib,
    }  # fmt: skip


def child(spec: dict[str, Any]) -> dict[str, Any]:
    fn = {"pipeline": child_pipeline, "store": child_store, "rescore": child_rescore}
    res = fn[spec["what"]](spec)
    # ru_maxrss only to show how far off it is (see harness.peak_mib)
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**res, "peak_mib": peak_mib(), "ru_maxrss_mib": ru}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    res = run_child(__file__, spec)
    if "failed" in res:
        raise SystemExit(f"scale: child {spec['what']} failed: {res['failed']}")
    return {**spec, **res}


# ------------------------------------------------------------------ parent side


def default_dim() -> tuple[int, str]:
    """D of the default FactorConfig on SmolLM2-135M, from its tracked layers (meta model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from gdig.engine.config import FactorConfig
    from gdig.engine.layers import select_layers, tracked_layers
    from gdig.model import resolve_model

    cfg, folder = FactorConfig(), resolve_model("smollm2", progress=False)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    with torch.device("meta"):  # module names and shapes only, no weights
        model = AutoModelForCausalLM.from_config(config)
    layers = tracked_layers(model, select_layers(model, cfg.layers, cfg.layer_stride))
    dim = len(layers) * cfg.k_in * cfg.k_out
    return dim, (
        f"SmolLM2-135M has {config.num_hidden_layers} blocks; layer_stride {cfg.layer_stride} "
        f"tracks {len(layers)} MLP down-projections ({layers[0].name} ... {layers[-1].name}, "
        f"{layers[0].d_out}x{layers[0].d_in}); D = {len(layers)} x k_in {cfg.k_in} x k_out "
        f"{cfg.k_out} = {dim}"
    )


def rescore_store(n: int, dim: int, dtype: str, out: Path) -> tuple[Path, dict[str, Any] | None]:
    """The store's folder, built in a child unless a complete one is there already."""
    from gdig.engine.store import bytes_per_candidate

    root = out / f"rescore-{n}-D{dim}-{dtype}"
    try:
        m = json.loads((root / "manifest.json").read_text())
        if m["complete"] and (m["n"], m["dim"], m["feature_dtype"]) == (n, dim, dtype):
            return root, None
    except (OSError, ValueError, KeyError):
        pass
    need = n * bytes_per_candidate(STORE_SEEDS, dim, TOP_K, dtype)
    free = shutil.disk_usage(out).free
    if need + MARGIN > free:
        raise SystemExit(
            f"scale: a rescore store of {n} x D={dim} ({dtype}) needs {need / 1e9:.1f} GB and "
            f"5 GB must stay free, but {out} has {free / 1e9:.1f} GB free; use --out on a "
            "bigger disk, --feature-dtype float16 or smaller --rescore-sizes"
        )
    spec = {"what": "store", "n": n, "dim": dim, "dtype": dtype, "store": str(root)}
    return root, {"kind": "rescore_store", **measure(spec), "bytes": need}


def _growth(rows: list[dict[str, Any]], key: str = "peak_mib") -> tuple[float, int, int] | None:
    """Growth of ``key`` (MiB) in bytes per pair between the smallest and largest N measured."""
    if len(rows) < 2:
        return None
    a, b = min(rows, key=lambda r: r["n"]), max(rows, key=lambda r: r["n"])
    return (b[key] - a[key]) * 2**20 / (b["n"] - a["n"]), a["n"], b["n"]


def render(pipe: list[dict], resc: list[dict], how: str, machine: str) -> str:
    lines = [
        "## Scale: the pipeline after scoring, and rescore (benchmarks/scale.py)", "",
        f"`{command('scale.py')}`", "", machine, "",
        "Each row is one fresh process; peak = its VmHWM, imports included (start = after "
        "the imports). Pool: pairs cycled from shared/data, 30 % labelled noise; store: "
        f"synthetic in the real format (S={PIPE_SEEDS}, D={PIPE_DIM}); budget N/10, selector "
        "gdig. Seconds per phase; `store` (writing that store) stands in for the model pass "
        "and is left out of the total.", "",
        "Anon: the largest anonymous resident memory (RssAnon, sampled every 20 ms) in the "
        "whole run and, after it, the phase where it was reached (VmHWM also counts the "
        "pages of memory-mapped files).", "",
        "| N | read+validate | lengths | store | select | writers | report | total s "
        "| s per 1k pairs | start MiB | peak MiB | anon start MiB | anon peak MiB (phase) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for r in pipe:
        phase, top = max(r["anon_peak_mib"].items(), key=lambda kv: kv[1])
        lines.append(
            f"| {r['n']:,} | "
            + " | ".join(f"{r['phases'][p]:.2f}" for p in PHASES)
            + f" | {r['total_s']:.1f} | {1000 * r['total_s'] / r['n']:.3f} "
            f"| {r['start_mib']:.0f} | {r['peak_mib']:.0f} "
            f"| {r['anon_start_mib']:.0f} | {top:.0f} ({phase}) |"
        )
    if g := _growth(pipe):
        lines += ["", f"Pipeline peak grows {g[0]:.0f} bytes per pair from N={g[1]:,} to {g[2]:,}."]
        for r in pipe:
            r["anon_top_mib"] = max(r["anon_peak_mib"].values())
        if ga := _growth(pipe, "anon_top_mib"):
            lines[-1] += f" Its anonymous memory grows {ga[0]:.0f} bytes per pair."
    lines += [
        "", f"Rescore: {RESCORE_SEEDS} new seeds against a synthetic store (its pages dropped "
        f"from the page cache first: a cold read). D from the defaults: {how}.", "",
        "Peak = VmHWM (it counts the store's memory-mapped pages the pass touched); anon = "
        "the largest anonymous resident memory (RssAnon) sampled every 20 ms during the "
        "rescore: what the process itself holds.", "",
        "| N | S | D | features | seconds | candidates/s | start MiB | peak MiB "
        "| anon start MiB | anon peak MiB | store GB |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in resc:
        lines.append(
            f"| {r['n']:,} | {RESCORE_SEEDS} | {r['dim']} | {r['dtype']} | {r['seconds']:.2f} "
            f"| {r['cand_per_s']:,.0f} | {r['start_mib']:.0f} | {r['peak_mib']:.0f} "
            f"| {r['anon_start_mib']:.0f} | {r['anon_peak_mib']:.0f} "
            f"| {r['store_bytes'] / 1e9:.2f} |"
        )
    if (g := _growth(resc)) and (ga := _growth(resc, "anon_peak_mib")):
        per = resc[0]["store_bytes"] / resc[0]["n"]
        outputs = 8 + 4 + 4 + TOP_K * (4 + 8)  # n_pos, mean, min, top-k values and indices
        lines += [
            "", f"From N={g[1]:,} to {g[2]:,} the rescore peak grows {g[0]:.0f} bytes per "
            f"candidate (VmHWM) and its anonymous memory {ga[0]:.0f} bytes, against "
            f"{per:,.0f} bytes per candidate in the store and {outputs} bytes of outputs "
            f"(n_pos, mean, min, top-{TOP_K}).",
        ]  # fmt: skip
    return "\n".join(lines + ["", "![time and peak memory against N](scale.png)", ""])


def plot(pipe: list[dict], resc: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (t_ax, m_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for rows, label, key in ((pipe, "pipeline (total)", "total_s"), (resc, "rescore", "seconds")):
        if rows:
            ns = [r["n"] for r in rows]
            t_ax.plot(ns, [r[key] for r in rows], "o-", label=label)
            m_ax.plot(ns, [r["peak_mib"] for r in rows], "o-", label=label)
    for ax, what in ((t_ax, "wall seconds"), (m_ax, "peak RSS (MiB)")):
        ax.set(xscale="log", yscale="log", xlabel="N (pairs / candidates)", ylabel=what)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _sizes(text: str) -> list[int]:
    return [int(s.replace("_", "")) for s in text.split(",") if s.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=_sizes, default=[10_000, 100_000, 1_000_000])
    p.add_argument("--rescore-sizes", type=_sizes, default=[100_000, 1_000_000])
    p.add_argument(
        "--out", type=Path, default=None, help="work folder (default: gdig-scale in the temp dir)"
    )
    p.add_argument("--feature-dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--keep-stores", action="store_true", help="keep rescore stores for reuse")
    p.add_argument("--md", type=Path, default=RESULTS)
    p.add_argument("--no-write", action="store_true", help="skip the --md section and the PNG")
    p.add_argument("--smoke", action="store_true", help="N=2000 only, nothing written")
    add_common_args(p)
    ns = p.parse_args(argv)
    ns.data_dir = data_dir(ns.data_dir)
    if ns.smoke:
        ns.sizes, ns.rescore_sizes, ns.no_write = [2000], [2000], True
        ns.out = ns.out or Path(tempfile.mkdtemp(prefix="gdig-scale-"))
    ns.out = ns.out or Path(tempfile.gettempdir()) / "gdig-scale"
    return ns


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if child_main(argv, child):
        return
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = Machine(os.cpu_count() or 1, strict=args.strict_load)
    print(f"# out {args.out}", flush=True)
    results = open(args.out / "results.jsonl", "w")  # a line per measurement, as it comes

    def emit(row: dict[str, Any]) -> dict[str, Any]:
        results.write(json.dumps(row) + "\n")
        results.flush()
        print(json.dumps(row), flush=True)
        return row

    pipe, resc = [], []
    for n in args.sizes:
        pool, folder = ensure_pool(n, args.data_dir, args.out), args.out / f"pipeline-{n}"
        r = measure({"what": "pipeline", "n": n, "pool": str(pool), "dir": str(folder)})
        r["total_s"] = sum(s for p, s in r["phases"].items() if p != NOT_A_STAGE)
        pipe.append(emit({"kind": "pipeline", **r}))
    dim, how = default_dim() if args.rescore_sizes else (0, "")
    print(f"# rescore D: {how}", flush=True)
    for n in args.rescore_sizes:
        root, built = rescore_store(n, dim, args.feature_dtype, args.out)
        if built:
            emit(built)
        spec = {"what": "rescore", "n": n, "dim": dim, "dtype": args.feature_dtype}
        r = measure({**spec, "store": str(root)})
        r["store_bytes"] = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        resc.append(emit({"kind": "rescore", "reused_store": built is None, **r}))
        if not args.keep_stores:
            shutil.rmtree(root)
    results.close()
    section = render(pipe, resc, how, f"{machine.line()} numpy {version('numpy')}.")
    print("\n" + section)
    if not args.no_write:
        write_section(args.md, "scale", "scale.py", section)
        plot(pipe, resc, args.md.with_name("scale.png"))
        print(f"wrote {args.md} and {args.md.with_name('scale.png')}")


if __name__ == "__main__":
    main()
