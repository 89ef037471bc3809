"""A run's inputs: identities, the pairs (after the bad-line and too-long policies), the
model, and the checks made before any model pass (preflight), which returns the run's
:class:`ExecutionPlan`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdig.data.pairs import Pair, write_jsonl
from gdig.data.pool import PoolIndex, open_pool
from gdig.engine.config import EngineConfig
from gdig.engine.distributed import SINGLE, Dist
from gdig.io.errors import UsageError
from gdig.io.validate import check_budget
from gdig.pipeline.config import RunOptions
from gdig.pipeline.diskspace import (
    SpaceEstimate,
    check_free_space,
    factor_bytes,
    folder_bytes,
    store_bytes,
)
from gdig.pipeline.fingerprint import file_identity, model_identity
from gdig.pipeline.folder import FACTORS_FILE, FINETUNED_DIR, SKIPPED_FILE, STORE_DIR, RunFolder
from gdig.pipeline.lengths import model_context, token_lengths, too_long_records

# The input files each stage reads (the pool's records are also what select writes out).
READS = {"fit": ("model", "pool"), "score": ("model", "pool", "seeds"), "select": ("pool",)}
READS["report"] = READS["select"]


@dataclass(frozen=True)
class ExecutionPlan:
    """How this process runs: decided from the options, the machine and the run folder,
    and never written back into the options."""

    device: str  # this rank's device
    progress: bool  # progress bars
    dist: Dist = SINGLE  # this process's rank under torchrun
    max_batch_tokens: int | None = None  # fixed at the first run when no batch size is given

    def engine(self, opts: RunOptions) -> EngineConfig:
        """The engine's options with this plan's batch size."""
        exe = opts.execution
        if self.max_batch_tokens is not None:
            exe = dataclasses.replace(exe, max_batch_tokens=self.max_batch_tokens)
        return EngineConfig(opts.factors, opts.scoring, exe)


def identities(opts: RunOptions, stages: tuple[str, ...], old: dict[str, Any]) -> dict[str, Any]:
    """Identity of every input the stages read; the others are the run folder's."""
    ids = dict(old)
    wanted = {what for s in stages for what in READS[s]}
    if "model" in wanted:
        path = model_path(opts.inputs.model, bool(opts.run.progress))
        ids["model"] = {"name": opts.inputs.model, "path": str(path), **model_identity(path)}
    if "pool" in wanted:
        ids["pool"] = file_identity(opts.inputs.pool, "pool")
    if "seeds" in wanted:
        ids["seeds"] = file_identity(opts.seeds.seeds, "seeds")
        fields = [opts.seeds.seeds_src_field, opts.seeds.seeds_tgt_field]
        if any(fields):  # read through other fields, the same file is another seed set
            ids["seeds"]["fields"] = fields
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


class RunInputs:
    """A run's inputs, each read when first asked for and then kept: the pool and the
    seeds (under the bad-line and too-long policies, and the pool under ``--prefilter``),
    the pool's records as select and report read them (no tokenizer), the model and its
    tokenizer. Skipped lines and counts go to the run folder."""

    def __init__(self, opts: RunOptions, folder: RunFolder, plan: ExecutionPlan) -> None:
        self.opts, self.folder, self.plan = opts, folder, plan
        self._pool: PoolIndex | None = None
        self._seeds: PoolIndex | None = None
        self._records: PoolIndex | None = None
        self._model: tuple[Any, Any] | None = None
        self.long_skipped: dict[str, int] = {}  # too-long pairs left out, per input

    @property
    def pool(self) -> PoolIndex:
        """The candidate pairs the model passes read."""
        if self._pool is None:
            pool = self._policed(self.opts.inputs.pool, "pool")
            if self.opts.rules.prefilter == "rules":
                pool = self._prefiltered(pool)
            self._pool = pool
        return self._pool

    @property
    def seeds(self) -> PoolIndex:
        if self._seeds is None:
            self._seeds = self._policed(self.opts.seeds.seeds, "seeds")
        return self._seeds

    @property
    def records(self) -> PoolIndex:
        """The pool as select and report read it: every pair, no tokenizer (select and
        report in one process read it once)."""
        if self._records is None:
            self._records = self._read(self.opts.inputs.pool, "pool")[0]
        return self._records

    def model(self) -> tuple[Any, Any]:
        """``(model, tokenizer)``: the fine-tuned model once ``--finetune-first`` made it."""
        if self._model is None:
            from gdig.model import check_device_available, load_model

            check_device_available(self.plan.device)
            path = model_path(self.opts.inputs.model, self.plan.progress)
            tuned = self.folder.path / FINETUNED_DIR
            if self.opts.inputs.finetune_first and (tuned / "config.json").is_file():
                path = tuned  # fine-tuned on the pool by the fit stage
            self._model = load_model(
                path, device=self.plan.device, dtype=self.opts.read.dtype,
                progress=self.plan.progress,
            )  # fmt: skip
        return self._model

    def forget_model(self) -> None:
        """Load the model again when next asked (it was fine-tuned on the pool)."""
        self._model = None

    def rule_flags(self, pool: PoolIndex):
        """The cleaning rules' verdict on every pair of ``pool`` (kept in the run folder)."""
        from gdig.pipeline.prefilter import pool_rule_flags, rules_key

        opts = self.opts
        key = rules_key(
            self.folder.input_identity("pool")["sha256"],
            opts.rules,
            {"read": dataclasses.asdict(opts.read), "pairs": len(pool)},
        )
        return pool_rule_flags(pool, opts.rules, self.folder.path, key)

    def _read(self, path: str | None, which: str) -> tuple[PoolIndex, list[dict]]:
        """``(pairs, skip records)`` of a pairs file under the bad-line policy. The pairs
        stay in the file: the index holds a few numbers a pair (``gdig.data.pool``)."""
        read = self.opts.read
        skipped: list[dict] = []
        pairs = open_pool(
            path,
            progress=self.plan.progress and which == "pool",
            bad_lines=read.bad_lines,
            skipped=skipped,
            src_field=(which == "seeds" and self.opts.seeds.seeds_src_field) or read.src_field,
            tgt_field=(which == "seeds" and self.opts.seeds.seeds_tgt_field) or read.tgt_field,
            src_lang=read.src_lang,
            tgt_lang=read.tgt_lang,
        )
        return pairs, skipped

    def _policed(self, path: str | None, which: str) -> PoolIndex:
        """The pairs of ``path`` after the bad-line and too-long policies."""
        folder, read = self.folder, self.opts.read
        got, skipped = self._read(path, which)
        folder.set_check(
            "skipped_lines", {**(folder.check("skipped_lines") or {}), which: len(skipped)}
        )
        if skipped:
            folder.warn(
                f"{path}: skipped {len(skipped)} bad line(s) (--bad-lines skip), first at line "
                f"{skipped[0]['line']} field '{skipped[0]['field']}': {skipped[0]['reason']}; "
                f"all are listed in {folder.path / SKIPPED_FILE}"
            )
        if read.too_long == "skip":
            _, tok = self.model()
            limit = self.opts.factors.max_length
            lengths = token_lengths(
                got, tok, self.opts.factors.template, progress=self.plan.progress, limit=limit
            )
            keep, long = too_long_records(got, lengths, limit, str(path))
            if long:
                got = got.subset(keep)
                folder.warn(
                    f"{path}: skipped {len(long)} pair(s) longer than --max-length {limit} "
                    f"tokens (--too-long skip), first {long[0]['id']!r} at line "
                    f"{long[0]['line']}; listed in {folder.path / SKIPPED_FILE}"
                )
                skipped += long
            self.long_skipped[which] = len(long)
            if not len(got):
                raise UsageError(
                    f"{path}: every pair is longer than --max-length {limit} tokens; raise "
                    "--max-length or use --too-long truncate"
                )
        if folder.main:  # under torchrun, rank 0 writes the run folder's files
            replace_entries(folder.path / SKIPPED_FILE, "file", str(path), skipped)
        return got

    def _prefiltered(self, pool: PoolIndex) -> PoolIndex:
        """``--prefilter rules``: the pool less the pairs that fail a cleaning rule,
        counted per rule in the manifest; they never reach a model pass."""
        flags = self.rule_flags(pool)
        counts = flags.counts()
        self.folder.set_check("prefilter", counts)
        if counts["removed"] == len(pool):
            raise UsageError(
                f"--prefilter rules: every pair of the pool fails a rule ({flags.summary()}); "
                "loosen the --rule-* thresholds or drop rules with --rules"
            )
        self.folder.warn(f"--prefilter rules: {flags.summary()}; they are not scored")
        return pool.subset(flags.ok)


def preflight(
    folder: RunFolder, inputs: RunInputs, opts: RunOptions, plan: ExecutionPlan,
    stages: tuple[str, ...],
) -> ExecutionPlan:  # fmt: skip
    """Before the model passes: the inputs' sizes and lengths, the budget, the model's
    context, free disk space; returns ``plan`` with a batch size that stays the same when
    the run resumes."""
    from gdig.engine.layers import select_layers, tracked_layers

    paths, read, fac, exe = opts.inputs, opts.read, opts.factors, opts.execution
    pool = inputs.pool
    seeds: list[Pair] | PoolIndex = []
    if "score" in stages:  # fit alone needs no seeds
        seeds = inputs.seeds
        if not len(seeds):
            raise UsageError(f"--seeds {opts.seeds.seeds}: the seed set is empty")
        if len(seeds) > len(pool):
            folder.warn(
                f"the seed set ({opts.seeds.seeds}, {len(seeds)} pairs) is larger than the "
                f"pool ({paths.pool}, {len(pool)} pairs); check that --seeds and --pool are "
                "not swapped"
            )
        from gdig.data.checks import compare_seeds_pool

        for message in compare_seeds_pool(seeds, pool):
            folder.warn(message)
    if "select" in stages:
        check_budget(opts.select.budget, len(pool), f"the pool ({paths.pool}: {len(pool)} pairs)")
    if opts.report.label_field and "report" in stages:
        from gdig.data.labels import check_label_field

        check_label_field(pool, opts.report.label_field, str(paths.pool))

    mdl, tok = inputs.model()
    context = model_context(mdl)
    if context is not None and fac.max_length > context:
        raise UsageError(
            f"--max-length {fac.max_length} exceeds the model's context of {context} tokens "
            f"({paths.model}); pass --max-length {context} or less"
        )
    zero = {"seeds": 0, "pool": 0}
    truncated = dict(zero)
    if read.too_long == "truncate":
        for which, got in (("seeds", seeds), ("pool", pool)):
            lengths = token_lengths(got, tok, fac.template, plan.progress, limit=fac.max_length)
            truncated[which] = int((lengths > fac.max_length).sum())
        if any(truncated.values()):
            folder.warn(
                f"{truncated['pool']} pool and {truncated['seeds']} seed pair(s) exceed "
                f"--max-length {fac.max_length} tokens and are truncated (--too-long truncate; "
                "'skip' leaves them out)"
            )
    folder.set_check(
        "too_long",
        {
            "policy": read.too_long,
            "max_length": fac.max_length,
            "truncated": truncated,
            "skipped": {**zero, **inputs.long_skipped},
        },
    )

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
        factor_bytes=factor_bytes(
            dims, fac.k_in, fac.k_out, fac.exact, float64=opts.read.dtype == "float64"
        ),
        existing_bytes=folder_bytes(folder.path / STORE_DIR, folder.path / FACTORS_FILE),
    )
    check_free_space(folder.path, estimate)
    folder.set_check(
        "disk_estimate_bytes", {"store": estimate.store_bytes, "factors": estimate.factor_bytes}
    )

    # Auto batch sizing depends on free memory, and batch composition changes the last bits
    # of the scores: fix it at the first run so that a resumed run computes the same bytes.
    folder.save()
    if exe.batch_size is None and exe.max_batch_tokens is None:
        from gdig.engine.batching import auto_max_tokens

        tokens = folder.fixed("max_batch_tokens", lambda: auto_max_tokens(mdl))
        return dataclasses.replace(plan, max_batch_tokens=int(tokens))
    return plan
