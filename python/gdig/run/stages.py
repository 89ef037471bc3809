"""The four stages over one run folder: fit -> score -> select -> report.

``fit`` and ``score`` make the model passes; ``select`` and ``report`` work from the
gradient store alone (its ids and non-finite list) and the pool's records, and never load
the model or tokenizer.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gdig.data.pool import PoolIndex
from gdig.engine.faults import fault_point
from gdig.io.errors import GdigError, UsageError
from gdig.io.integrity import file_digests
from gdig.io.validate import check_budget
from gdig.run import inputs
from gdig.run.config import RunOptions
from gdig.run.fingerprint import STAGES
from gdig.run.folder import (
    FACTORS_FILE,
    FINETUNED_DIR,
    NONFINITE_FILE,
    SEEDS_FILE,
    SELECT_OUTPUTS,
    SELECTION_FILE,
    STORE_DIR,
    RunState,
    begin,
    check_out_folder,
    check_outputs,
    keep_saved_options,
    load_manifest,
    open_run,
    record,
    stage_done,
    warn,
)
from gdig.run.poolrows import PairTexts, label_values, pool_rows


def say(message: str) -> None:
    """One line of progress on stderr (what a log keeps when bars are off); under
    torchrun, rank 0's only."""
    from gdig.engine.distributed import from_env

    if not from_env().main:
        return
    print(f"gdig: {message}", file=sys.stderr, flush=True)


def stage_fit(state: RunState) -> None:
    from gdig.engine import fit_factors

    begin(state, "fit")
    t = time.perf_counter()
    pool = inputs.pairs(state, "pool")
    tuned = None
    if state.opts.inputs.finetune_first:
        tuned = _finetune_on_pool(state, pool)
    model, tok = inputs.model(state)
    factors = fit_factors(
        model, tok, pool, state.opts.engine, progress=state.opts.run.progress, dist=state.dist
    )
    if not state.dist.main:  # rank 0 saves and records what every rank computed
        return
    factors.save(state.out / FACTORS_FILE)
    fault_point("fit:saved")
    bad = _note_nonfinite(state, "fit", factors.stats.get("nonfinite_ids", []))
    record(
        state,
        "fit",
        time.perf_counter() - t,
        finetune=tuned,
        examples=factors.stats.get("examples"),
        nonfinite=bad,
        sha256=file_digests(state.out, [FACTORS_FILE]),
    )
    say(f"fit: factors of {factors.stats.get('examples')} examples")


def _finetune_on_pool(state: RunState, pool: list) -> dict[str, Any]:
    """The paper's first step: fine-tune the base model on the raw pool (resumable: the
    trainer keeps a checkpoint in RUN_DIR/finetuned and skips a finished model)."""
    import json

    from gdig.train.finetune import finetune

    opts = state.opts
    out = state.out / FINETUNED_DIR
    base = inputs.model_path(opts.inputs.model, bool(opts.run.progress))
    t = time.perf_counter()
    finetune(
        base, pool, out, opts.finetune, template=opts.factors.template,
        max_length=opts.factors.max_length, device=opts.run.device,
        progress=bool(opts.run.progress),
    )  # fmt: skip
    state.model = state.tokenizer = None  # score with the fine-tuned model from here on
    info = json.loads((out / "gdig_finetune.json").read_text())
    losses = info.get("losses") or [None]
    say(f"fit: fine-tuned on {len(pool)} pool pairs (final loss {losses[-1]})")
    return {"seconds": round(time.perf_counter() - t, 3), "steps": len(losses),
            "first_loss": losses[0], "final_loss": losses[-1]}  # fmt: skip


def stage_score(state: RunState) -> None:
    from gdig.engine import Factors, prepare_seeds, score_candidates
    from gdig.engine.seeds import load_seeds, save_seeds, share_seeds

    if not (state.out / FACTORS_FILE).exists():
        raise UsageError(f"{state.out / FACTORS_FILE} is missing: run `gdig fit` first")
    begin(state, "score")
    t = time.perf_counter()
    seeds = inputs.pairs(state, "seeds")
    pool = inputs.pairs(state, "pool")
    model, tok = inputs.model(state)
    eng = state.opts.engine
    kept = _scored_already(state.out / STORE_DIR)
    if kept:
        say(f"score: resuming: {kept}/{len(pool)} candidates already scored")
    progress = state.opts.run.progress
    device = next(model.parameters()).device
    seed_grads = None
    if state.dist.main:  # seeds are prepared once; the other ranks get them from rank 0
        key = state.manifest["fingerprints"]["score"]  # factors, seeds and options
        seed_grads = load_seeds(state.out / SEEDS_FILE, key, device)
        if seed_grads is None:
            factors = Factors.load(state.out / FACTORS_FILE, model, eng.factors)
            seed_grads = prepare_seeds(model, tok, seeds, factors, eng, progress=progress)
            save_seeds(seed_grads, state.out / SEEDS_FILE, key)
        else:
            say(f"score: {seed_grads.n} seeds prepared by an earlier run, reused")
    seed_grads = share_seeds(state.dist, seed_grads, device)
    store = score_candidates(
        model, tok, pool, seed_grads, eng, state.out / STORE_DIR, progress=progress,
        verify=state.opts.run.verify, dist=state.dist,
    )  # fmt: skip
    if not state.dist.main:
        return
    bad = _note_nonfinite(state, "score", store.nonfinite_ids)
    record(
        state,
        "score",
        time.perf_counter() - t,
        candidates=store.n,
        seeds=store.n_seeds,
        nonfinite=bad,
    )
    say(f"score: {store.n} candidates against {store.n_seeds} seeds")


def _scored_already(store: Path) -> int:
    """Candidates in the shards an interrupted scoring pass left (before verification),
    torchrun ranks' part manifests included."""
    import json

    from gdig.engine.store import manifest_files

    shards: dict = {}
    for file in manifest_files(store):
        try:
            shards.update(json.loads(file.read_text())["shards"])
        except (OSError, ValueError, KeyError):
            continue
    return sum(v["stop"] - v["start"] for v in shards.values())


def _note_nonfinite(state: RunState, stage: str, ids: list[str]) -> int:
    """List a stage's non-finite pool examples in RUN_DIR/nonfinite.jsonl (and warn)."""
    file = state.out / NONFINITE_FILE
    records = []
    if ids:
        pool = inputs.pairs(state, "pool")
        lines = [int(pool.lines[r]) if r >= 0 else None for r in pool.rows_of(ids).tolist()]
        path = str(state.opts.inputs.pool)
        records = [
            {"id": i, "stage": stage, "file": path, "line": line}
            for i, line in zip(ids, lines, strict=True)
        ]
        what = "left out of the factors" if stage == "fit" else "left out of selection"
        warn(
            state,
            f"{len(ids)} pool pair(s) have a NaN/Inf loss or gradient and are {what}: "
            f"{', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}; listed in {file}",
        )
    inputs.replace_entries(file, "stage", stage, records)  # rank 0 only: see the stages
    return len(ids)


def _open_store(state: RunState):
    from gdig.engine import GradStore

    if not (state.out / STORE_DIR).exists():
        raise UsageError(f"{state.out / STORE_DIR} is missing: run `gdig score` first")
    return GradStore.open(state.out / STORE_DIR)


def _pool_rows(state: RunState, ids: list[str]) -> tuple[PoolIndex, np.ndarray]:
    """The pool (read without any tokenizer) and the pool row of each candidate id."""
    if state.records is None:  # select and report in one process read the pool once
        state.records = inputs.read_input(state, "pool")[0]
    return state.records, pool_rows(state.records, ids, str(state.out / STORE_DIR))


def stage_select(state: RunState) -> None:
    from gdig.select import ShortfallError, select
    from gdig.select.writers import write_scores, write_selected

    begin(state, "select")
    t = time.perf_counter()
    store = _open_store(state)
    out = state.sel_out
    out.mkdir(parents=True, exist_ok=True)
    check_budget(state.opts.select.budget, store.n, f"the scored pool ({store.n} pairs)")
    try:
        sel = select(store, state.opts.select, device=state.opts.run.device)
    except ShortfallError as exc:
        if exc.selection is not None:  # the scores still help to choose --tau
            top = store.top_seeds(exc.selection.ids)
            write_scores(out / "scores.csv", exc.selection, top)
            raise ShortfallError(
                f"{exc}; per-candidate scores are in {out / 'scores.csv'}",
                available=exc.available,
                budget=exc.budget,
                pool_size=exc.pool_size,
            ) from None
        raise
    top = store.top_seeds(sel.ids)
    write_scores(out / "scores.csv", sel, top)
    fault_point("select:scores")
    pool, rows = _pool_rows(state, sel.ids)
    # Read by seeking, a chunk at a time: every field kept, the budget never held whole.
    write_selected(out / "selected.jsonl", sel, lambda r: pool.take(rows[r]), top)
    sel.save(out / SELECTION_FILE)
    fault_point("select:saved")
    for note in sel.notes:
        state.manifest.setdefault("warnings", []).append(note)
    record(
        state,
        "select",
        time.perf_counter() - t,
        sha256=file_digests(out, SELECT_OUTPUTS),
        **sel.summary(),
    )
    say(f"select: {int(sel.selected.sum())} of {sel.n} candidates ({sel.config.selector})")


def noise_kinds(values: list[Any], labels: np.ndarray, sel) -> dict[str, dict[str, int]]:
    """Per label value (the noise kind; booleans as clean/noise): how many pairs the pool
    has, how many passed quality, how many were selected."""
    kinds: dict[str, dict[str, int]] = {}
    for i, (value, noisy) in enumerate(zip(values, labels, strict=True)):
        kind = str(value).strip() if isinstance(value, str) else ("noise" if noisy else "clean")
        row = kinds.setdefault(kind, {"pool": 0, "passed quality": 0, "selected": 0})
        row["pool"] += 1
        row["passed quality"] += int(sel.passed_quality[i])
        row["selected"] += int(sel.selected[i])
    return dict(sorted(kinds.items()))


def stage_report(state: RunState) -> None:
    from gdig.report import sample_map_rows, write_report
    from gdig.select import Selection
    from gdig.select.metrics import noise_summary
    from gdig.select.selectors import finite_source

    t = time.perf_counter()
    out = state.sel_out
    if not (out / SELECTION_FILE).exists():
        raise UsageError(f"{out / SELECTION_FILE} is missing: run `gdig select` first")
    sel = Selection.load(out / SELECTION_FILE)
    store = _open_store(state)
    source = finite_source(store)
    pool, pool_row = _pool_rows(state, sel.ids)
    rows = sample_map_rows(sel)
    # Counts (pool, passed quality, clusters, selected) come from Selection.summary() in the
    # report itself; only what the selection does not know is added here.
    summary: dict[str, Any] = {
        "seeds": store.n_seeds,
        "stage seconds": {s: rec.get("seconds") for s, rec in state.manifest["stages"].items()},
    }
    noise, values = None, None
    field_name = state.opts.report.label_field
    if field_name:
        from gdig.data.checks import check_label_field, is_noise

        path = state.opts.inputs.pool
        values = label_values(pool, pool_row, field_name)
        lines = pool.lines[pool_row]
        labels = np.empty(len(values), dtype=bool)
        for i, value in enumerate(values):
            if value is None:  # a pair without the field: the error lists the fields it has
                check_label_field(pool.take(pool_row[i : i + 1]), field_name, str(path))
            labels[i] = is_noise(value, f"{path}:{lines[i]}")
        noise = noise_summary(source, sel, labels)
        noise["kinds"] = noise_kinds(values, labels, sel)
        summary["noise detection"] = {k: v for k, v in noise.items() if k != "kinds"}
    write_report(
        out,
        sel,
        PairTexts(pool, pool_row),
        source.feature_rows(rows),
        summary,
        map_rows=rows,
        noise_kinds=noise["kinds"] if noise else None,
        labels=values if field_name else None,
        label_name=field_name,
    )
    record(state, "report", time.perf_counter() - t, noise=noise)
    say(f"report: {out / 'report.html'}")


STAGE_FUNCS: dict[str, Callable[[RunState], Any]] = {
    "fit": stage_fit,
    "score": stage_score,
    "select": stage_select,
    "report": stage_report,
}


def run_stages(opts: RunOptions, stages: tuple[str, ...] = STAGES) -> RunState:
    """Run ``stages`` in the run folder, resuming what an earlier run left there.

    Under ``torchrun`` (``gdig.engine.distributed``) every rank runs this: rank 0 holds the
    folder's lock, checks and records it; all ranks share fit and score; rank 0 alone
    selects and reports.
    """
    from gdig.engine import distributed

    if distributed.from_env().active and opts.inputs.finetune_first:
        raise UsageError(
            "--finetune-first runs in one process: run `gdig finetune` first (or without "
            "torchrun) and pass its folder as --model"
        )
    dist = distributed.start(opts.run.device)
    if dist.active:
        opts.run.device = distributed.rank_device(dist, opts.run.device)
        if not dist.main:
            opts.run.progress = False  # one set of bars: rank 0's
    try:
        return _run_stages(opts, stages, dist)
    finally:
        distributed.stop(dist)


def _run_stages(opts: RunOptions, stages: tuple[str, ...], dist) -> RunState:
    from gdig.run.lock import run_lock

    out = check_out_folder(opts.run.out)
    if opts.run.progress is None:
        opts.run.progress = sys.stderr.isatty()
    if not dist.main:  # rank 0 checks the folder and fixes the batch size: wait for it
        manifest, todo = dist.share(None)
        state = RunState(opts, out, manifest, stages, dist=dist)
        _fixed_batch_tokens(state)
        _model_stages(state, todo)
        return state
    old = load_manifest(out) if out.is_dir() else {}
    if not old and stages[0] != "fit":
        raise UsageError(f"--out {out}: no gdig run there; run `gdig run` (or `gdig fit`) first")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    state = None
    try:
        with run_lock(out):
            ids = inputs.identities(opts, stages, old.get("inputs", {}))
            named = opts.run.name
            # A named selection leaves the run's own selection and saved options as they are.
            state = open_run(_with_saved_selection(opts, old) if named else opts, out, stages, ids)
            state.opts, state.selection, state.dist = opts, named, dist
            try:
                _run_todo(state, stages)
            except (GdigError, KeyboardInterrupt):
                if not named:  # a failed command leaves the saved options as they were
                    keep_saved_options(state, old)
                raise
    except (GdigError, KeyboardInterrupt):
        if created and (state is None or not state.manifest["stages"]):
            shutil.rmtree(out, ignore_errors=True)  # a first attempt that made nothing
        raise
    return state


def _run_todo(state: RunState, stages: tuple[str, ...]) -> None:
    """Rank 0's part in the locked folder: check, preflight, then the stages not done."""
    check_outputs(state)
    if state.selection:  # a named selection is made afresh from finished scores
        if not stage_done(state, "score"):
            raise UsageError(
                f"--name {state.selection}: {state.out} has no finished scores yet; run "
                "`gdig run` (or `gdig score`) first"
            )
        todo = list(stages)
    else:
        todo = [s for s in stages if not stage_done(state, s)]
    state.reused = [s for s in stages if s not in todo]
    if any(s in todo for s in ("fit", "score")):
        inputs.preflight(state)
    state.dist.share((state.manifest, todo))
    if not todo:
        say(f"nothing to do: every stage is already done in {state.out}")
        return
    _model_stages(state, todo)
    for stage in todo:
        if stage not in ("fit", "score"):
            _start_line(state, stage)
            STAGE_FUNCS[stage](state)


def _with_saved_selection(opts: RunOptions, old: dict[str, Any]) -> RunOptions:
    """``opts`` with the run folder's saved select and report options."""
    import dataclasses

    saved = old.get("config", {})
    kept = {}
    for section in ("select", "report"):
        cls = type(getattr(opts, section))
        names = {f.name for f in dataclasses.fields(cls)}
        if section in saved:
            kept[section] = cls(**{k: v for k, v in saved[section].items() if k in names})
    return dataclasses.replace(opts, **kept)


def _start_line(state: RunState, stage: str) -> None:
    """What a stage is about to do, when no progress bar shows it (stderr not a terminal)."""
    if state.opts.run.progress:
        return
    opts = state.opts
    what = {
        "fit": f"loading {opts.inputs.model}, then fitting the factors on up to "
        f"{opts.factors.factor_samples} pool pairs",
        "score": "preparing the seeds, then scoring the pool against them",
        "select": f"{opts.select.selector} selector, budget {opts.select.budget}",
        "report": f"writing {state.sel_out / 'report.html'}",
    }[stage]
    say(f"{stage}: {what}")


def _model_stages(state: RunState, todo: list[str]) -> None:
    """fit and score, on every rank (each waits for the others at the end of each)."""
    for stage in ("fit", "score"):
        if stage in todo:
            _start_line(state, stage)
            STAGE_FUNCS[stage](state)
            state.dist.barrier()


def _fixed_batch_tokens(state: RunState) -> None:
    """The batch size rank 0's preflight fixed in the manifest (a shard's numbers depend
    on its batches: every rank must use the same)."""
    exe = state.opts.execution
    if exe.batch_size is None and exe.max_batch_tokens is None:
        fixed = state.manifest.get("execution", {}).get("max_batch_tokens")
        exe.max_batch_tokens = int(fixed) if fixed is not None else None
