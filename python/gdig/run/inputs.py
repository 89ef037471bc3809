"""A run's inputs: identities, the pairs (after the bad-line and too-long policies), the
model, and the checks made before any model pass (preflight)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gdig.data.pairs import Pair, write_jsonl
from gdig.data.pool import PoolIndex, open_pool
from gdig.io.errors import UsageError
from gdig.io.validate import check_budget
from gdig.run.diskspace import (
    SpaceEstimate,
    check_free_space,
    factor_bytes,
    folder_bytes,
    store_bytes,
)
from gdig.run.fingerprint import file_identity, model_identity
from gdig.run.folder import (
    FACTORS_FILE,
    FINETUNED_DIR,
    SKIPPED_FILE,
    STORE_DIR,
    RunState,
    save_manifest,
    warn,
)
from gdig.run.lengths import model_context, token_lengths, too_long_records

# The input files each stage reads (the pool's records are also what select writes out).
READS = {"fit": ("model", "pool"), "score": ("model", "pool", "seeds"), "select": ("pool",)}
READS["report"] = READS["select"]


def identities(opts, stages: tuple[str, ...], old: dict[str, Any]) -> dict[str, Any]:
    """Identity of every input the stages read; the others are the run folder's."""
    ids = dict(old)
    wanted = {what for s in stages for what in READS[s]}
    inputs = opts.inputs
    for what in ("model", "pool", "seeds"):
        if what not in wanted:
            continue
        spec = opts.seeds.seeds if what == "seeds" else getattr(inputs, what)
        if what == "model":
            path = model_path(spec, bool(opts.run.progress))
            ids["model"] = {
                "name": spec,
                "path": str(path),
                **model_identity(path),
            }
        else:
            ids[what] = file_identity(spec, what)
    return ids


def model_path(spec: str | None, progress: bool = True) -> Path:
    if spec is None:
        raise UsageError(
            "no model given: pass --model DIR (a local Hugging Face folder), a hub id in the "
            "local Hugging Face cache, or 'smollm2'"
        )
    from gdig.model.load import resolve_model

    return resolve_model(spec, progress)


def replace_entries(file: Path, key: str, value: str, records: list[dict]) -> None:
    """Replace the entries of JSONL ``file`` whose ``key`` is ``value`` by ``records``
    (one file serves every input or stage; the file is only written when it changes)."""
    old = []
    if file.exists():
        old = [json.loads(x) for x in file.read_text(encoding="utf-8").splitlines() if x]
    keep = [r for r in old if r.get(key) != value]
    if records or len(keep) != len(old):
        write_jsonl(file, keep + records)


def read_input(state: RunState, which: str) -> tuple[PoolIndex, list[dict]]:
    """``(pairs, skip records)`` of the seed or pool file under the bad-line policy. The
    pairs stay in the file: the index holds a few numbers a pair (``gdig.data.pool``)."""
    read = state.opts.read
    path = state.opts.seeds.seeds if which == "seeds" else state.opts.inputs.pool
    skipped: list[dict] = []
    pairs = open_pool(
        path,
        progress=bool(state.opts.run.progress) and which == "pool",
        bad_lines=read.bad_lines,
        skipped=skipped,
        src_field=read.src_field,
        tgt_field=read.tgt_field,
        src_lang=read.src_lang,
        tgt_lang=read.tgt_lang,
    )
    return pairs, skipped


def pairs(state: RunState, which: str) -> PoolIndex:
    """The seed or pool pairs after the bad-line and too-long policies (cached)."""
    cached = getattr(state, which)
    if cached is not None:
        return cached
    read = state.opts.read
    path = state.opts.seeds.seeds if which == "seeds" else state.opts.inputs.pool
    got, skipped = read_input(state, which)
    checks = state.manifest.setdefault("input_checks", {})
    checks.setdefault("skipped_lines", {})[which] = len(skipped)
    if skipped:
        warn(
            state,
            f"{path}: skipped {len(skipped)} bad line(s) (--bad-lines skip), first at line "
            f"{skipped[0]['line']} field '{skipped[0]['field']}': {skipped[0]['reason']}; "
            f"all are listed in {state.out / SKIPPED_FILE}",
        )
    if read.too_long == "skip":
        _, tok = model(state)
        limit = state.opts.factors.max_length
        lengths = token_lengths(
            got,
            tok,
            state.opts.factors.template,
            progress=bool(state.opts.run.progress),
            limit=limit,
        )
        keep, long = too_long_records(got, lengths, limit, str(path))
        if long:
            got = got.subset(keep)
            warn(
                state,
                f"{path}: skipped {len(long)} pair(s) longer than --max-length {limit} tokens "
                f"(--too-long skip), first {long[0]['id']!r} at line {long[0]['line']}; "
                f"listed in {state.out / SKIPPED_FILE}",
            )
            skipped += long
        state.long_skipped[which] = len(long)
        if not len(got):
            raise UsageError(
                f"{path}: every pair is longer than --max-length {limit} tokens; raise "
                "--max-length or use --too-long truncate"
            )
    if state.dist.main:  # under torchrun, rank 0 writes the run folder's files
        replace_entries(state.out / SKIPPED_FILE, "file", str(path), skipped)
    setattr(state, which, got)
    return got


def model(state: RunState):
    if state.model is None:
        from gdig.model import check_device_available, load_model

        check_device_available(state.opts.run.device)
        path = model_path(state.opts.inputs.model, bool(state.opts.run.progress))
        tuned = state.out / FINETUNED_DIR
        if state.opts.inputs.finetune_first and (tuned / "config.json").is_file():
            path = tuned  # fine-tuned on the pool by the fit stage
        state.model, state.tokenizer = load_model(
            path,
            device=state.opts.run.device,
            dtype=state.opts.read.dtype,
            progress=bool(state.opts.run.progress),
        )
    return state.model, state.tokenizer


def preflight(state: RunState) -> None:
    """Before the model passes: the inputs' sizes and lengths, the budget, the model's
    context, free disk space, and a batch size that stays the same when the run resumes."""
    from gdig.engine.layers import select_layers, tracked_layers

    opts = state.opts
    inputs, read, fac, exe = opts.inputs, opts.read, opts.factors, opts.execution
    pool = pairs(state, "pool")
    seeds: list[Pair] | PoolIndex = []
    if "score" in state.stages:  # fit alone needs no seeds
        seeds = pairs(state, "seeds")
        if not len(seeds):
            raise UsageError(f"--seeds {opts.seeds.seeds}: the seed set is empty")
        if len(seeds) > len(pool):
            warn(
                state,
                f"the seed set ({opts.seeds.seeds}, {len(seeds)} pairs) is larger than the pool "
                f"({inputs.pool}, {len(pool)} pairs); check that --seeds and --pool are not "
                "swapped",
            )
        _compare_seeds_pool(state, seeds, pool)
    if "select" in state.stages:
        check_budget(opts.select.budget, len(pool), f"the pool ({inputs.pool}: {len(pool)} pairs)")
    if opts.report.label_field and "report" in state.stages:
        from gdig.data.checks import check_label_field

        check_label_field(pool, opts.report.label_field, str(inputs.pool))

    mdl, tok = model(state)
    context = model_context(mdl)
    if context is not None and fac.max_length > context:
        raise UsageError(
            f"--max-length {fac.max_length} exceeds the model's context of {context} tokens "
            f"({inputs.model}); pass --max-length {context} or less"
        )
    zero = {"seeds": 0, "pool": 0}
    truncated = dict(zero)
    if read.too_long == "truncate":
        for which, got in (("seeds", seeds), ("pool", pool)):
            lengths = token_lengths(
                got, tok, fac.template, bool(opts.run.progress), limit=fac.max_length
            )
            truncated[which] = int((lengths > fac.max_length).sum())
        if any(truncated.values()):
            warn(
                state,
                f"{truncated['pool']} pool and {truncated['seeds']} seed pair(s) exceed "
                f"--max-length {fac.max_length} tokens and are truncated (--too-long truncate; "
                "'skip' leaves them out)",
            )
    state.manifest.setdefault("input_checks", {})["too_long"] = {
        "policy": read.too_long,
        "max_length": fac.max_length,
        "truncated": truncated,
        "skipped": {**zero, **state.long_skipped},
    }

    names = select_layers(mdl, fac.layers, fac.layer_stride)
    dims = [(ly.d_out, ly.d_in) for ly in tracked_layers(mdl, names)]
    dim = sum(a * b for a, b in dims) if fac.exact else len(dims) * fac.k_in * fac.k_out
    estimate = SpaceEstimate(
        store_bytes=store_bytes(
            len(pool),
            len(seeds),
            dim,
            opts.scoring.top_k,
            exe.export_benefit_matrix,
            opts.scoring.feature_dtype,
        ),
        factor_bytes=factor_bytes(dims, fac.k_in, fac.k_out, fac.exact),
        existing_bytes=folder_bytes(state.out / STORE_DIR, state.out / FACTORS_FILE),
    )
    check_free_space(state.out, estimate)

    # Auto batch sizing depends on free memory, and batch composition changes the last bits
    # of the scores: fix it at the first run so that a resumed run computes the same bytes.
    if exe.batch_size is None and exe.max_batch_tokens is None:
        execution = state.manifest.setdefault("execution", {})
        if "max_batch_tokens" not in execution:
            from gdig.engine.batching import auto_max_tokens

            execution["max_batch_tokens"] = auto_max_tokens(mdl)
        exe.max_batch_tokens = int(execution["max_batch_tokens"])
    save_manifest(state)


def _compare_seeds_pool(state: RunState, seeds: PoolIndex, pool: PoolIndex) -> None:
    from gdig.data.checks import compare_seeds_pool

    for message in compare_seeds_pool(seeds, pool):
        warn(state, message)
