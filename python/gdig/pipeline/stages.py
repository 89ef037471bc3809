"""The four stages over one run folder: fit -> score -> select -> report.

``fit`` and ``score`` make the model passes; ``select`` and ``report`` work from the
gradient store alone (its ids and non-finite list) and the pool's records, and never load
the model or tokenizer. Each stage is ``stage_X(folder, inputs, opts, plan)``: the run
folder (its records), the run's inputs (read lazily), the options, and the execution
plan (device, progress, batch size, torchrun rank).
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gdig.data.pool import PoolIndex
from gdig.engine.faults import fault_point
from gdig.io.errors import GdigError, UsageError
from gdig.io.validate import check_budget, read_saved
from gdig.pipeline.config import RunOptions
from gdig.pipeline.fingerprint import STAGES
from gdig.pipeline.folder import (
    FACTORS_FILE,
    FINETUNED_DIR,
    NONFINITE_FILE,
    REPORT_FILE,
    SCORES_FILE,
    SEEDS_FILE,
    SELECT_OUTPUTS,
    SELECTED_FILE,
    SELECTION_FILE,
    STORE_DIR,
    Manifest,
    RunFolder,
    check_out_folder,
)
from gdig.pipeline.inputs import ExecutionPlan, RunInputs, identities, model_path, preflight
from gdig.pipeline.inputs import replace_entries as replace_jsonl_entries
from gdig.pipeline.poolrows import PairTexts, pool_rows
from gdig.select.config import SelectConfig

Stage = Callable[[RunFolder, RunInputs, RunOptions, ExecutionPlan], None]


@dataclass
class RunOutcome:
    """What a command did in its run folder."""

    folder: RunFolder
    opts: RunOptions
    stages: tuple[str, ...]  # the stages the command runs
    reused: list[str] = field(default_factory=list)  # of those, the ones found done

    @property
    def out(self) -> Path:
        return self.folder.path


def say(message: str) -> None:
    """One line of progress on stderr (what a log keeps when bars are off); under
    torchrun, rank 0's only."""
    from gdig.engine.distributed import from_env

    if not from_env().main:
        return
    print(f"gdig: {message}", file=sys.stderr, flush=True)


def stage_fit(folder: RunFolder, inputs: RunInputs, opts: RunOptions, plan: ExecutionPlan) -> None:
    import torch

    from gdig.engine import fit_factors

    folder.begin("fit")
    t = time.perf_counter()
    pool = inputs.pool
    tuned = _finetune_on_pool(folder, inputs, opts, plan) if opts.inputs.finetune_first else None
    model, tok = inputs.model()
    factors = fit_factors(
        model, tok, pool, plan.engine(opts), progress=plan.progress, dist=plan.dist
    )
    if not folder.main:  # rank 0 saves and records what every rank computed
        return
    # Kept at the precision scoring uses: float64 only in exact mode or for a float64 model.
    wide = opts.factors.exact or next(model.parameters()).dtype == torch.float64
    factors.save(folder.path / FACTORS_FILE, dtype=torch.float64 if wide else torch.float32)
    fault_point("fit:saved")
    bad = _note_nonfinite(folder, inputs, opts, "fit", factors.stats.get("nonfinite_ids", []))
    folder.record(
        "fit",
        time.perf_counter() - t,
        finetune=tuned,
        examples=factors.stats.get("examples"),
        nonfinite=bad,
        sha256=folder.digests([FACTORS_FILE]),
    )
    say(f"fit: factors of {factors.stats.get('examples')} examples")


def _finetune_on_pool(
    folder: RunFolder, inputs: RunInputs, opts: RunOptions, plan: ExecutionPlan
) -> dict[str, Any]:
    """The paper's first step: fine-tune the base model on the raw pool (resumable: the
    trainer keeps a checkpoint in RUN_DIR/finetuned and skips a finished model)."""
    import json

    from gdig.train.finetune import finetune

    out = folder.path / FINETUNED_DIR
    base = model_path(opts.inputs.model, plan.progress)
    pool = inputs.pool
    t = time.perf_counter()
    finetune(
        base, pool, out, opts.finetune, template=opts.factors.template,
        max_length=opts.factors.max_length, device=plan.device, progress=plan.progress,
    )  # fmt: skip
    inputs.forget_model()  # score with the fine-tuned model from here on
    info = json.loads((out / "gdig_finetune.json").read_text())
    losses = info.get("losses") or [None]
    say(f"fit: fine-tuned on {len(pool)} pool pairs (final loss {losses[-1]})")
    return {"seconds": round(time.perf_counter() - t, 3), "steps": len(losses),
            "first_loss": losses[0], "final_loss": losses[-1]}  # fmt: skip


def stage_score(
    folder: RunFolder, inputs: RunInputs, opts: RunOptions, plan: ExecutionPlan
) -> None:
    from gdig.engine import Factors, prepare_seeds, score_candidates
    from gdig.engine.seeds import load_seeds, save_seeds, share_seeds

    if not (folder.path / FACTORS_FILE).exists():
        raise UsageError(f"{folder.path / FACTORS_FILE} is missing: run `gdig fit` first")
    folder.begin("score")
    t = time.perf_counter()
    seeds, pool = inputs.seeds, inputs.pool
    model, tok = inputs.model()
    eng = plan.engine(opts)
    kept = _scored_already(folder.path / STORE_DIR)
    if kept:
        say(f"score: resuming: {kept}/{len(pool)} candidates already scored")
    device = next(model.parameters()).device
    seed_grads = None
    if folder.main:  # seeds are prepared once; the other ranks get them from rank 0
        key = folder.fingerprint("score")  # factors, seeds and options
        seed_grads = load_seeds(folder.path / SEEDS_FILE, key, device)
        if seed_grads is None:
            factors = Factors.load(folder.path / FACTORS_FILE, model, eng.factors)
            seed_grads = prepare_seeds(model, tok, seeds, factors, eng, progress=plan.progress)
            save_seeds(seed_grads, folder.path / SEEDS_FILE, key)
        else:
            say(f"score: {seed_grads.n} seeds prepared by an earlier run, reused")
    seed_grads = share_seeds(plan.dist, seed_grads, device)
    store = score_candidates(
        model, tok, pool, seed_grads, eng, folder.path / STORE_DIR, progress=plan.progress,
        verify=opts.run.verify, dist=plan.dist,
    )  # fmt: skip
    if not folder.main:
        return
    bad = _note_nonfinite(folder, inputs, opts, "score", store.nonfinite_ids)
    folder.record(
        "score", time.perf_counter() - t, candidates=store.n, seeds=store.n_seeds, nonfinite=bad
    )
    # The prepared seeds serve an unfinished scoring pass only: a finished one keeps no copy.
    (folder.path / SEEDS_FILE).unlink(missing_ok=True)
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


def _note_nonfinite(
    folder: RunFolder, inputs: RunInputs, opts: RunOptions, stage: str, ids: list[str]
) -> int:
    """List a stage's non-finite pool examples in RUN_DIR/nonfinite.jsonl (and warn)."""
    file = folder.path / NONFINITE_FILE
    records = []
    if ids:
        pool = inputs.pool
        lines = [int(pool.lines[r]) if r >= 0 else None for r in pool.rows_of(ids).tolist()]
        path = str(opts.inputs.pool)
        records = [
            {"id": i, "stage": stage, "file": path, "line": line}
            for i, line in zip(ids, lines, strict=True)
        ]
        what = "left out of the factors" if stage == "fit" else "left out of selection"
        folder.warn(
            f"{len(ids)} pool pair(s) have a NaN/Inf loss or gradient and are {what}: "
            f"{', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}; listed in {file}"
        )
    replace_jsonl_entries(file, "stage", stage, records)  # rank 0 only: see the stages
    return len(ids)


def _open_store(folder: RunFolder):
    from gdig.engine import GradStore

    if not (folder.path / STORE_DIR).exists():
        raise UsageError(f"{folder.path / STORE_DIR} is missing: run `gdig score` first")
    return GradStore.open(folder.path / STORE_DIR)


def _pool_rows(
    folder: RunFolder, inputs: RunInputs, ids: list[str]
) -> tuple[PoolIndex, np.ndarray]:
    """The pool (read without any tokenizer) and the pool row of each candidate id."""
    return inputs.records, pool_rows(inputs.records, ids, str(folder.path / STORE_DIR))


def _rule_verdict(
    folder: RunFolder, inputs: RunInputs, opts: RunOptions, store
) -> tuple[np.ndarray | None, dict[str, int]]:
    """For a selector that draws from the pairs passing the cleaning rules: which store rows
    pass, and how many candidates each rule removed (else ``(None, {})``)."""
    from gdig.select.choosers import needs_rules

    if not needs_rules(opts.select.selector):
        return None, {}
    pool, rows = _pool_rows(folder, inputs, list(store.ids))
    flags = inputs.rule_flags(pool).take(rows)
    say(f"select: cleaning rules: {flags.summary()}")
    return flags.ok, flags.counts()


def stage_select(
    folder: RunFolder, inputs: RunInputs, opts: RunOptions, plan: ExecutionPlan
) -> None:
    from gdig.select import ShortfallError, select
    from gdig.select.writers import write_scores, write_selected

    folder.begin("select")
    t = time.perf_counter()
    store = _open_store(folder)
    out = folder.out
    out.mkdir(parents=True, exist_ok=True)
    check_budget(opts.select.budget, store.n, f"the scored pool ({store.n} pairs)")
    rule_ok, rule_counts = _rule_verdict(folder, inputs, opts, store)
    try:
        sel = select(store, opts.select, device=plan.device, rule_ok=rule_ok)
    except ShortfallError as exc:
        if exc.selection is not None:  # the scores still help to choose --tau
            top = store.top_seeds(exc.selection.ids)
            write_scores(out / SCORES_FILE, exc.selection, top)
            raise ShortfallError(
                f"{exc}; per-candidate scores are in {out / SCORES_FILE}",
                available=exc.available,
                budget=exc.budget,
                pool_size=exc.pool_size,
            ) from None
        raise
    top = store.top_seeds(sel.ids)
    write_scores(out / SCORES_FILE, sel, top)
    fault_point("select:scores")
    pool, rows = _pool_rows(folder, inputs, sel.ids)
    # Read by seeking, a chunk at a time: every field kept, the budget never held whole.
    write_selected(out / SELECTED_FILE, sel, lambda r: pool.take(rows[r]), top)
    sel.save(out / SELECTION_FILE)
    fault_point("select:saved")
    for note in sel.notes:
        folder.note(note)
    folder.record(
        "select",
        time.perf_counter() - t,
        sha256=folder.digests(SELECT_OUTPUTS),
        **sel.summary(),
        **({"rules": rule_counts} if rule_counts else {}),
    )
    say(f"select: {int(sel.selected.sum())} of {sel.n} candidates ({sel.config.selector})")


def stage_report(
    folder: RunFolder, inputs: RunInputs, opts: RunOptions, plan: ExecutionPlan
) -> None:
    from gdig.report import sample_map_rows, write_report
    from gdig.select import Selection
    from gdig.select.metrics import noise_summary
    from gdig.select.selectors import finite_source

    t = time.perf_counter()
    out = folder.out
    if not (out / SELECTION_FILE).exists():
        raise UsageError(f"{out / SELECTION_FILE} is missing: run `gdig select` first")
    sel = Selection.load(out / SELECTION_FILE)
    store = _open_store(folder)
    source = finite_source(store)
    pool, pool_row = _pool_rows(folder, inputs, sel.ids)
    rows = sample_map_rows(sel)
    # Counts (pool, passed quality, clusters, selected) come from Selection.summary() in the
    # report itself; only what the selection does not know is added here.
    summary: dict[str, Any] = {"seeds": store.n_seeds, "stage seconds": folder.stage_seconds()}
    prefilter = folder.check("prefilter")
    if prefilter:
        summary["prefilter: pool pairs failing each rule (never scored)"] = prefilter
    rules = folder.stage_record("select").get("rules")
    if rules:
        summary["cleaning rules: candidates failing each rule"] = rules
    noise, values = None, None
    field_name = opts.report.label_field
    if field_name:
        from gdig.data.labels import noise_kinds, pool_labels

        values, labels = pool_labels(pool, pool_row, field_name, str(opts.inputs.pool))
        noise = noise_summary(source, sel, labels)
        noise["kinds"] = noise_kinds(values, labels, sel.passed_quality, sel.selected)
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
    folder.record("report", time.perf_counter() - t, noise=noise)
    say(f"report: {out / REPORT_FILE}")


STAGE_FUNCS: dict[str, Stage] = {
    "fit": stage_fit,
    "score": stage_score,
    "select": stage_select,
    "report": stage_report,
}


def run_stages(opts: RunOptions, stages: tuple[str, ...] = STAGES) -> RunOutcome:
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
    progress = sys.stderr.isatty() if opts.run.progress is None else bool(opts.run.progress)
    if opts.run.dry_run:
        if distributed.from_env().active:
            raise UsageError("--dry-run runs in one process: run it without torchrun")
        return dry_run(opts, stages, ExecutionPlan(opts.run.device, progress))
    dist = distributed.start(opts.run.device)
    plan = ExecutionPlan(opts.run.device, progress, dist)
    if dist.active:  # each rank on its own device; one set of bars: rank 0's
        plan = ExecutionPlan(
            distributed.rank_device(dist, opts.run.device), progress and dist.main, dist
        )
    try:
        return _run_stages(opts, stages, plan)
    finally:
        distributed.stop(dist)


def _run_stages(opts: RunOptions, stages: tuple[str, ...], plan: ExecutionPlan) -> RunOutcome:
    from gdig.pipeline.lock import run_lock

    out = check_out_folder(opts.run.out)
    if not plan.dist.main:  # rank 0 checks the folder and fixes the batch size: wait for it
        manifest, todo = plan.dist.share(None)
        folder = RunFolder.follower(out, manifest)
        tokens = folder.fixed_value("max_batch_tokens")
        if opts.execution.batch_size is None and opts.execution.max_batch_tokens is None:
            plan = dataclasses.replace(plan, max_batch_tokens=tokens)
        _model_stages(folder, RunInputs(opts, folder, plan), opts, plan, todo)
        return RunOutcome(folder, opts, stages)
    old = Manifest.read(out) if out.is_dir() else None
    if old is None and stages[0] != "fit":
        raise UsageError(f"--out {out}: no gdig run there; run `gdig run` (or `gdig fit`) first")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    folder = None
    try:
        with run_lock(out):
            ids = identities(opts, stages, old.inputs if old else {})
            named = opts.run.name
            # A named selection leaves the run's own selection and saved options as they are.
            saved = _with_saved_selection(opts, old) if named else opts
            folder = RunFolder.open(saved, out, stages, ids, old=old, selection=named)
            if named:
                config = {"select": dataclasses.asdict(opts.select),
                          "report": dataclasses.asdict(opts.report)}  # fmt: skip
                folder.name_selection(config)
            try:
                reused = _run_todo(folder, opts, plan, stages)
            except (GdigError, KeyboardInterrupt):
                if not named:  # a failed command leaves the saved options as they were
                    folder.keep_saved_options(old)
                raise
    except (GdigError, KeyboardInterrupt):
        if created and (folder is None or not folder.has_records):
            shutil.rmtree(out, ignore_errors=True)  # a first attempt that made nothing
        raise
    return RunOutcome(folder, opts, stages, reused)


def _run_todo(
    folder: RunFolder, opts: RunOptions, plan: ExecutionPlan, stages: tuple[str, ...]
) -> list[str]:
    """Rank 0's part in the locked folder: check, preflight, then the stages not done;
    returns the stages found done."""
    folder.check_outputs(opts.run.verify)
    if folder.selection:  # a named selection is made afresh from finished scores
        if not folder.done("score"):
            raise UsageError(
                f"--name {folder.selection}: {folder.path} has no finished scores yet; run "
                "`gdig run` (or `gdig score`) first"
            )
        todo = list(stages)
    else:
        todo = [s for s in stages if not folder.done(s)]
    reused = [s for s in stages if s not in todo]
    inputs = RunInputs(opts, folder, plan)
    if any(s in todo for s in ("fit", "score")):
        plan = preflight(folder, inputs, opts, plan, stages)
        inputs.plan = plan
        fresh = not any(folder.stage_record(s) for s in ("fit", "score"))
        # A new run says what it will cost; a pool of a few pairs needs no estimate.
        if "fit" in stages and "score" in stages and fresh and len(inputs.pool) >= 8:
            from gdig.pipeline import estimate

            est = estimate.measure(inputs, opts, plan, folder.path, n=4, warm_up=False)
            for line in estimate.summary(folder, inputs, opts, est, todo):
                say(f"estimate: {line}")
    plan.dist.share((folder.manifest, todo))
    if not todo:
        say(f"nothing to do: every stage is already done in {folder.path}")
        return reused
    _model_stages(folder, inputs, opts, plan, todo)
    for stage in todo:
        if stage not in ("fit", "score"):
            _start_line(folder, opts, plan, stage)
            STAGE_FUNCS[stage](folder, inputs, opts, plan)
    return reused


def dry_run(opts: RunOptions, stages: tuple[str, ...], plan: ExecutionPlan) -> RunOutcome:
    """``--dry-run``: check the inputs as a run does, time the model passes on a few pairs
    and print the estimate, all in a scratch folder beside ``--out``: nothing is written
    to ``--out``."""
    import tempfile

    from gdig.pipeline import estimate

    out = check_out_folder(opts.run.out)
    parent = next(p for p in [out.parent, *out.parent.parents] if p.is_dir())
    scratch = Path(tempfile.mkdtemp(prefix=".gdig-dry-run-", dir=parent))
    try:
        folder = RunFolder.open(opts, scratch, stages, identities(opts, stages, {}))
        inputs = RunInputs(opts, folder, plan)
        plan = preflight(folder, inputs, opts, plan, stages)
        est = estimate.measure(inputs, opts, plan, scratch, n=16)
        lines = estimate.summary(folder, inputs, opts, est, list(stages))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"gdig run --dry-run: the inputs pass every check; nothing was written to {out}")
    for line in lines:
        print("  " + line.replace(str(scratch), str(out)))
    return RunOutcome(RunFolder(out, folder.manifest), opts, stages)


def _with_saved_selection(opts: RunOptions, old: Manifest | None) -> RunOptions:
    """``opts`` with the run folder's saved select and report options."""
    from gdig.pipeline.config import ReportConfig

    saved = old.config if old else {}
    where = "the run folder's manifest"
    select = (
        SelectConfig(**read_saved(SelectConfig, saved["select"], where))
        if ("select" in saved)
        else opts.select
    )
    report = (
        ReportConfig(**read_saved(ReportConfig, saved["report"], where))
        if ("report" in saved)
        else opts.report
    )
    return dataclasses.replace(opts, select=select, report=report)


def _start_line(folder: RunFolder, opts: RunOptions, plan: ExecutionPlan, stage: str) -> None:
    """What a stage is about to do, when no progress bar shows it (stderr not a terminal)."""
    if plan.progress:
        return
    what = {
        "fit": f"loading {opts.inputs.model}, then fitting the factors on up to "
        f"{opts.factors.factor_samples} pool pairs",
        "score": "preparing the seeds, then scoring the pool against them",
        "select": f"{opts.select.selector} selector, budget {opts.select.budget}",
        "report": f"writing {folder.out / REPORT_FILE}",
    }[stage]
    say(f"{stage}: {what}")


def _model_stages(
    folder: RunFolder, inputs: RunInputs, opts: RunOptions, plan: ExecutionPlan, todo: list[str]
) -> None:
    """fit and score, on every rank (each waits for the others at the end of each)."""
    for stage in ("fit", "score"):
        if stage in todo:
            _start_line(folder, opts, plan, stage)
            STAGE_FUNCS[stage](folder, inputs, opts, plan)
            plan.dist.barrier()
