"""The stages of a G-DIG run over one run folder: fit -> score -> select -> report.

Each stage records a fingerprint of everything its output depends on in
``manifest.json``. Re-running a stage whose output exists with the same fingerprint
skips it (a resumed run redoes only what is missing; the gradient store also resumes
shard by shard); a different fingerprint is refused with the list of what changed,
unless ``force_restart`` is set. Outputs are written atomically and recorded with their
sha256; a resumed run verifies them (and every store shard) and recomputes, with a
warning, whatever fails. RELIABILITY.md states the guarantees.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gdig import __version__
from gdig.atomicio import atomic_write_text, remove_stale_temps
from gdig.data.pairs import Pair, read_pairs, write_jsonl
from gdig.diskspace import (
    DiskSpaceError,
    SpaceEstimate,
    check_free_space,
    factor_bytes,
    folder_bytes,
    store_bytes,
)
from gdig.engine.config import EngineConfig
from gdig.faults import fault_point
from gdig.integrity import bad_files, check_store, file_digests, sha256_file, sha256_json
from gdig.lengths import model_context, split_too_long, token_lengths
from gdig.options import as_dict
from gdig.runconfig import RunConfig
from gdig.select.config import SelectConfig

log = logging.getLogger("gdig")

STAGES = ("fit", "score", "select", "report")
FACTORS_FILE = "factors.safetensors"
STORE_DIR = "store"
SELECTION_FILE = "selection.npz"
SKIPPED_FILE = "skipped_lines.jsonl"
NONFINITE_FILE = "nonfinite.jsonl"
SELECT_OUTPUTS = [SELECTION_FILE, "scores.csv", "selected.jsonl"]
# Engine fields that change neither factors nor scores (execution only).
EXECUTION_FIELDS = {"batch_size", "max_batch_tokens", "factor_cache_mb", "shard_size"}


class RunError(RuntimeError):
    """A run cannot go on; the message says why and what to do."""


@dataclass
class RunOptions:
    run: RunConfig
    engine: EngineConfig
    select: SelectConfig

    def as_manifest(self) -> dict[str, Any]:
        return {
            "run": as_dict(self.run),
            "engine": as_dict(self.engine),
            "select": as_dict(self.select),
        }


@dataclass
class RunState:
    """What the stages share within one process (loaded lazily, once)."""

    opts: RunOptions
    out: Path
    manifest: dict[str, Any]
    seeds: list[Pair] | None = None
    pool: list[Pair] | None = None
    model: Any = None
    tokenizer: Any = None
    summary: dict[str, Any] = field(default_factory=dict)
    long_skipped: dict[str, int] = field(default_factory=dict)  # too-long pairs left out


# ---------------------------------------------------------------- manifest, hashing


def load_manifest(out: Path) -> dict[str, Any]:
    path = out / "manifest.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: unreadable manifest ({exc}); use --force-restart") from exc


def save_manifest(state: RunState) -> None:
    atomic_write_text(state.out / "manifest.json", json.dumps(state.manifest, indent=2) + "\n")


def _versions() -> dict[str, str]:
    import faiss
    import torch
    import transformers

    import gdig_ext

    return {
        "gdig": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "faiss": getattr(faiss, "__version__", "?"),
        "gdig_ext_cuda": str(gdig_ext.cuda_available()),
    }


def _model_path(run: RunConfig) -> Path:
    if run.model is None:
        raise RunError(
            "no model given: pass --model DIR (a local Hugging Face folder) or 'smollm2'"
        )
    if run.model == "smollm2":
        from gdig.model.smollm2 import ensure_smollm2

        return ensure_smollm2()
    path = Path(run.model)
    if not (path / "config.json").is_file():
        raise RunError(
            f"--model {path}: not a Hugging Face model folder (no config.json there); "
            "give a local folder saved with save_pretrained, or 'smollm2'"
        )
    return path


def _model_identity(path: Path) -> dict[str, Any]:
    """Identity of a model folder: its config, and each file's size and a sampled sha256.

    Two checkpoints of one architecture have equal configs and file sizes, so the weights'
    bytes must enter too; hashing 64 evenly spread 64 KiB blocks of each file (whole files
    up to 4 MiB) sees any fine-tune, which changes nearly every weight, in well under a
    second even for multi-GB checkpoints.
    """
    files = sorted(p for p in path.iterdir() if p.is_file())
    return {
        "config_sha256": sha256_file(path / "config.json"),
        "files": {p.name: {"size": p.stat().st_size, "sha256": _sampled_sha256(p)} for p in files},
    }


def _sampled_sha256(path: Path, blocks: int = 64, block: int = 1 << 16) -> str:
    size = path.stat().st_size
    if size <= blocks * block:
        return sha256_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for i in range(blocks):
            fh.seek((size - block) * i // (blocks - 1))
            h.update(fh.read(block))
    return h.hexdigest()


def _input_identity(path: str | None, what: str) -> dict[str, Any]:
    if path is None:
        raise RunError(f"no {what} file given: pass --{what} FILE (JSONL or TSV)")
    p = Path(path)
    if not p.is_file():
        raise RunError(f"--{what} {p}: file not found")
    return {"path": str(p.resolve()), "sha256": sha256_file(p)}


def stage_fingerprints(opts: RunOptions, identities: dict[str, Any]) -> dict[str, str]:
    """Fingerprint of each stage's output: everything it depends on, chained."""
    eng = {k: v for k, v in as_dict(opts.engine).items() if k not in EXECUTION_FIELDS}
    e = opts.engine
    fit = sha256_json(
        {
            "model": identities["model"],
            "pool": identities["pool"]["sha256"],
            "factor": e.factor_key(),
            # The factors also hold their projected-space twin (for re-scoring).
            "projection": [e.k_in, e.k_out, e.proj_seed, e.exact],
            "dtype": opts.run.dtype,
            "bad_lines": opts.run.bad_lines,
            "too_long": opts.run.too_long,
        }
    )
    score = sha256_json({"fit": fit, "seed": identities["seed"]["sha256"], "engine": eng})
    select = sha256_json({"score": score, "select": as_dict(opts.select)})
    report = sha256_json({"select": select, "label_field": opts.run.label_field})
    return {"fit": fit, "score": score, "select": select, "report": report}


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


# ---------------------------------------------------------------- opening a run


def open_run(opts: RunOptions) -> RunState:
    """Check inputs, compare with an earlier run in the same folder, and prepare it."""
    if opts.run.out is None:
        raise RunError("no run folder given: pass --out DIR")
    out = Path(opts.run.out)
    out.mkdir(parents=True, exist_ok=True)
    old = load_manifest(out)
    identities = {
        "seed": _input_identity(opts.run.seed, "seed"),
        "pool": _input_identity(opts.run.pool, "pool"),
        "model": {"name": opts.run.model, **_model_identity(_model_path(opts.run))},
    }
    prints = stage_fingerprints(opts, identities)
    manifest = {
        "gdig_version": __version__,
        "benefit_convention": "B(m,s) = grad L(s)^T H^-1 grad L(m); positive = m helps s",
        "versions": _versions(),
        "inputs": identities,
        "config": opts.as_manifest(),
        "fingerprints": prints,
        "stages": {},
        "execution": old.get("execution", {}),
        "warnings": [],
    }
    if old:
        changed = [
            s
            for s in STAGES
            if s in old.get("stages", {}) and old["fingerprints"].get(s) != prints[s]
        ]
        if changed:
            # (a stage counts once it has begun: a killed scoring pass has shards to lose)
            what = _diff(
                {"inputs": old.get("inputs", {}), "config": old.get("config", {})},
                {"inputs": identities, "config": opts.as_manifest()},
            )
            if not opts.run.force_restart:
                raise RunError(
                    f"{out} holds a run with other inputs or options (stages "
                    f"{', '.join(changed)} would change):\n  "
                    + "\n  ".join(what or ["(versions of the stage outputs)"])
                    + "\nuse another --out, or --force-restart to recompute those stages"
                )
            for stage in changed:
                _clear_stage(out, stage)
        # Keep the records of stages whose fingerprint still matches: they are resumable.
        manifest["stages"] = {
            s: rec
            for s, rec in old.get("stages", {}).items()
            if old["fingerprints"].get(s) == prints[s]
        }
    state = RunState(opts=opts, out=out, manifest=manifest)
    save_manifest(state)
    return state


def _clear_stage(out: Path, stage: str) -> None:
    doomed = {
        "fit": [FACTORS_FILE],
        "score": [STORE_DIR],
        "select": SELECT_OUTPUTS,
        "report": ["report.html", "report_files"],
    }[stage]
    for name in doomed:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _stage_done(state: RunState, stage: str, *paths: str) -> bool:
    rec = state.manifest["stages"].get(stage)
    return bool(rec and rec.get("done")) and all((state.out / p).exists() for p in paths)


def _begin(state: RunState, stage: str) -> None:
    """Note that ``stage`` has begun: its partial work (store shards) now belongs to this
    configuration, so resuming it with other options is refused like a finished stage."""
    if stage not in state.manifest["stages"]:
        state.manifest["stages"][stage] = {"done": False}
        save_manifest(state)


def _record(state: RunState, stage: str, seconds: float, **extra: Any) -> None:
    state.manifest["stages"][stage] = {"done": True, "seconds": round(seconds, 3), **extra}
    save_manifest(state)


# ---------------------------------------------------------------- inputs and model


def _warn(state: RunState, message: str) -> None:
    """A warning the user must see: logged (stderr) and kept in the manifest."""
    log.warning("%s", message)
    state.manifest.setdefault("warnings", []).append(message)


def _replace_entries(file: Path, key: str, value: str, records: list[dict]) -> None:
    """Replace the entries of JSONL ``file`` whose ``key`` is ``value`` by ``records``
    (one file serves every input or stage; the file is only written when it changes)."""
    old = []
    if file.exists():
        old = [json.loads(x) for x in file.read_text(encoding="utf-8").splitlines() if x]
    keep = [r for r in old if r.get(key) != value]
    if records or len(keep) != len(old):
        write_jsonl(file, keep + records)


def _pairs(state: RunState, which: str) -> list[Pair]:
    """The seed or pool pairs after the bad-line and too-long policies (cached)."""
    cached = getattr(state, which)
    if cached is not None:
        return cached
    run = state.opts.run
    path = run.seed if which == "seeds" else run.pool
    skipped: list[dict] = []
    pairs = read_pairs(path, bad_lines=run.bad_lines, skipped=skipped)
    checks = state.manifest.setdefault("input_checks", {})
    checks.setdefault("skipped_lines", {})[which] = len(skipped)
    if skipped:
        _warn(
            state,
            f"{path}: skipped {len(skipped)} bad line(s) (--bad-lines skip), first at line "
            f"{skipped[0]['line']} field '{skipped[0]['field']}': {skipped[0]['reason']}; "
            f"all are listed in {state.out / SKIPPED_FILE}",
        )
    if run.too_long == "skip":
        _, tok = _model(state)
        limit = state.opts.engine.max_length
        pairs, long = split_too_long(
            pairs, token_lengths(pairs, tok, state.opts.engine.template), limit, str(path)
        )
        if long:
            _warn(
                state,
                f"{path}: skipped {len(long)} pair(s) longer than max_length={limit} tokens "
                f"(--too-long skip), first {long[0]['id']!r} at line {long[0]['line']}; "
                f"listed in {state.out / SKIPPED_FILE}",
            )
            skipped += long
        state.long_skipped[which] = len(long)
        if not pairs:
            raise RunError(
                f"{path}: every pair is longer than max_length={limit} tokens; raise "
                "--max-length or use --too-long truncate"
            )
    _replace_entries(state.out / SKIPPED_FILE, "file", str(path), skipped)
    setattr(state, which, pairs)
    return pairs


def _model(state: RunState):
    if state.model is None:
        import torch

        from gdig.model import load_model

        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
        state.model, state.tokenizer = load_model(
            _model_path(state.opts.run),
            device=state.opts.run.device,
            dtype=dtype[state.opts.run.dtype],
        )
    return state.model, state.tokenizer


def check_outputs(state: RunState) -> None:
    """Verify what earlier runs left in the folder; drop (and say so) whatever fails.

    Recorded outputs must match the sha256 in the manifest; the gradient store's shards
    must match theirs (the engine recomputes those that do not, and only those).
    """
    out, stages = state.out, state.manifest["stages"]
    remove_stale_temps(out)  # leftovers of writers killed mid-file
    checks = {"fit": [FACTORS_FILE], "select": SELECT_OUTPUTS}
    for stage, names in checks.items():
        rec = stages.get(stage)
        if not rec or not rec.get("done"):
            continue
        recorded = rec.get("sha256", {})
        broken = [n for n in names if n not in recorded] + bad_files(out, recorded)
        if broken:
            _warn(
                state,
                f"{out / broken[0]} is missing or fails its checksum (corrupt or truncated); "
                f"recomputing the {stage} stage",
            )
            _drop_from(state, stage)
    store = out / STORE_DIR
    bad, readable = check_store(store)
    if not readable:
        _warn(state, f"{store / 'manifest.json'} is unreadable; recomputing the whole store")
        shutil.rmtree(store)
        _drop_from(state, "score")
    elif bad:
        _warn(
            state,
            f"gradient store: {len(bad)} shard(s) fail their checksums (corrupt or truncated): "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; recomputing them",
        )
        _drop_from(state, "score")
    save_manifest(state)


def _drop_from(state: RunState, stage: str) -> None:
    """Forget the records of ``stage`` and every later stage (they will be redone)."""
    for s in STAGES[STAGES.index(stage) :]:
        state.manifest["stages"].pop(s, None)


def preflight(state: RunState) -> None:
    """Before the model passes: the inputs' sizes and lengths, the model's context,
    free disk space, and a batch size that stays the same when the run resumes."""
    from gdig.engine.layers import select_layers, tracked_layers

    run, eng = state.opts.run, state.opts.engine
    model, tok = _model(state)
    context = model_context(model)
    if context is not None and eng.max_length > context:
        raise RunError(
            f"--max-length {eng.max_length} exceeds the model's context of {context} tokens "
            f"({run.model}); pass --max-length {context} or less"
        )
    seeds, pool = _pairs(state, "seeds"), _pairs(state, "pool")
    if len(seeds) > len(pool):
        _warn(
            state,
            f"the seed set ({run.seed}, {len(seeds)} pairs) is larger than the pool "
            f"({run.pool}, {len(pool)} pairs); check that --seed and --pool are not swapped",
        )
    zero = {"seeds": 0, "pool": 0}
    truncated = dict(zero)
    if run.too_long == "truncate":
        for which, pairs in (("seeds", seeds), ("pool", pool)):
            lengths = token_lengths(pairs, tok, eng.template)
            truncated[which] = sum(n > eng.max_length for n in lengths)
        if any(truncated.values()):
            _warn(
                state,
                f"{truncated['pool']} pool and {truncated['seeds']} seed pair(s) exceed "
                f"max_length={eng.max_length} tokens and are truncated (--too-long truncate; "
                "'skip' leaves them out)",
            )
    state.manifest.setdefault("input_checks", {})["too_long"] = {
        "policy": run.too_long,
        "max_length": eng.max_length,
        "truncated": truncated,
        "skipped": {**zero, **state.long_skipped},
    }

    names = select_layers(model, eng.layers, eng.layer_stride)
    dims = [(ly.d_out, ly.d_in) for ly in tracked_layers(model, names)]
    dim = sum(a * b for a, b in dims) if eng.exact else len(dims) * eng.k_in * eng.k_out
    estimate = SpaceEstimate(
        store_bytes=store_bytes(len(pool), len(seeds), dim, eng.top_k, eng.export_benefit_matrix),
        factor_bytes=factor_bytes(dims, eng.k_in, eng.k_out, eng.exact),
        existing_bytes=folder_bytes(state.out / STORE_DIR, state.out / FACTORS_FILE),
    )
    try:
        check_free_space(state.out, estimate)
    except DiskSpaceError as exc:
        raise RunError(str(exc)) from exc

    # Auto batch sizing depends on free memory, and batch composition changes the last bits
    # of the scores: fix it at the first run so that a resumed run computes the same bytes.
    if eng.batch_size is None and eng.max_batch_tokens is None:
        execution = state.manifest.setdefault("execution", {})
        if "max_batch_tokens" not in execution:
            from gdig.engine.batching import auto_max_tokens

            execution["max_batch_tokens"] = auto_max_tokens(model)
        eng.max_batch_tokens = int(execution["max_batch_tokens"])
    save_manifest(state)


# ---------------------------------------------------------------- stages


def stage_fit(state: RunState) -> None:
    if _stage_done(state, "fit", FACTORS_FILE):
        return
    from gdig.engine import fit_factors

    _begin(state, "fit")
    t = time.perf_counter()
    pool = _pairs(state, "pool")
    model, tok = _model(state)
    factors = fit_factors(model, tok, pool, state.opts.engine, progress=state.opts.run.progress)
    factors.save(state.out / FACTORS_FILE)
    fault_point("fit:saved")
    bad = _note_nonfinite(state, "fit", factors.stats.get("nonfinite_ids", []))
    _record(
        state,
        "fit",
        time.perf_counter() - t,
        examples=factors.stats.get("examples"),
        nonfinite=bad,
        sha256=file_digests(state.out, [FACTORS_FILE]),
    )


def stage_score(state: RunState) -> None:
    if _stage_done(state, "score", STORE_DIR):
        return
    from gdig.engine import Factors, prepare_seeds, score_candidates

    if not (state.out / FACTORS_FILE).exists():
        raise RunError(f"{state.out / FACTORS_FILE} is missing: run `gdig fit` first")
    _begin(state, "score")
    t = time.perf_counter()
    seeds = _pairs(state, "seeds")
    pool = _pairs(state, "pool")
    if not seeds:
        raise RunError(f"{state.opts.run.seed}: the seed set is empty")
    model, tok = _model(state)
    eng = state.opts.engine
    factors = Factors.load(state.out / FACTORS_FILE, model, eng)
    seed_grads = prepare_seeds(model, tok, seeds, factors, eng, progress=state.opts.run.progress)
    store = score_candidates(
        model, tok, pool, seed_grads, eng, state.out / STORE_DIR, progress=state.opts.run.progress
    )
    bad = _note_nonfinite(state, "score", _nonfinite_ids(store))
    _record(
        state,
        "score",
        time.perf_counter() - t,
        candidates=store.n,
        seeds=store.n_seeds,
        nonfinite=bad,
    )


def _note_nonfinite(state: RunState, stage: str, ids: list[str]) -> int:
    """List a stage's non-finite pool examples in RUN_DIR/nonfinite.jsonl (and warn)."""
    file = state.out / NONFINITE_FILE
    records = []
    if ids:
        line = {p.id: p.line for p in _pairs(state, "pool")}
        path = str(state.opts.run.pool)
        records = [{"id": i, "stage": stage, "file": path, "line": line.get(i)} for i in ids]
        what = "left out of the factors" if stage == "fit" else "left out of selection"
        _warn(
            state,
            f"{len(ids)} pool pair(s) have a NaN/Inf loss or gradient and are {what}: "
            f"{', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}; listed in {file}",
        )
    _replace_entries(file, "stage", stage, records)
    return len(ids)


def _open_store(state: RunState):
    from gdig.engine import GradStore

    if not (state.out / STORE_DIR).exists():
        raise RunError(f"{state.out / STORE_DIR} is missing: run `gdig score` first")
    return GradStore.open(state.out / STORE_DIR)


def _nonfinite_ids(store) -> list[str]:
    """Candidates whose loss or gradient was NaN/Inf (the engine lists them per shard)."""
    shards = store.manifest.get("shards", {})
    return [i for name in sorted(shards) for i in shards[name].get("nonfinite", [])]


def _scored(state: RunState):
    """``(score source, pool)`` for selection and the report: the gradient store and the
    pool, less the candidates whose numbers were not finite (listed in nonfinite.jsonl)."""
    store = _open_store(state)
    pool = _pairs(state, "pool")
    if [p.id for p in pool] != list(store.ids):
        raise RunError(
            f"{state.out / STORE_DIR}: its candidates are not the pool's ({state.opts.run.pool}); "
            "use --force-restart"
        )
    bad = set(_nonfinite_ids(store))
    if not bad:
        return store, pool
    from gdig.rowsubset import RowSubset

    keep = np.array([r for r, p in enumerate(pool) if p.id not in bad], dtype=np.int64)
    if len(keep) == 0:
        raise RunError(f"{state.opts.run.pool}: every candidate's loss or gradient is NaN/Inf")
    return RowSubset(store, keep), [pool[r] for r in keep]


def _select_config(state: RunState) -> SelectConfig:
    cfg = state.opts.select
    cfg.device = "cuda" if state.opts.run.device.startswith("cuda") else "cpu"
    return cfg


def stage_select(state: RunState) -> None:
    from gdig.select import select

    if _stage_done(state, "select", SELECTION_FILE, "scores.csv", "selected.jsonl"):
        return
    _begin(state, "select")
    t = time.perf_counter()
    store, pool = _scored(state)
    sel = select(store, _select_config(state))
    _write_scores(state.out / "scores.csv", sel)
    fault_point("select:scores")
    _write_selected(state.out / "selected.jsonl", sel, pool)
    sel.save(state.out / SELECTION_FILE)
    fault_point("select:saved")
    _record(
        state,
        "select",
        time.perf_counter() - t,
        sha256=file_digests(state.out, SELECT_OUTPUTS),
        **sel.summary(),
    )


def _write_scores(path: Path, sel) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "id",
            "n_pos",
            "n_seeds",
            "benefit_mean",
            "benefit_min",
            "passed_quality",
            "cluster",
            "selected",
        ]
    )
    for i, cid in enumerate(sel.ids):
        w.writerow(
            [
                cid,
                int(sel.n_pos[i]),
                sel.n_seeds,
                f"{float(sel.benefit_mean[i]):.9g}",
                f"{float(sel.benefit_min[i]):.9g}",
                int(bool(sel.passed_quality[i])),
                int(sel.cluster[i]),
                int(bool(sel.selected[i])),
            ]
        )
    atomic_write_text(path, buf.getvalue())


def _write_selected(path: Path, sel, pool: list[Pair]) -> None:
    records = []
    for row in sel.selected_rows:
        rec = pool[int(row)].to_record()
        rec.update(
            benefit_mean=float(sel.benefit_mean[row]),
            n_pos=int(sel.n_pos[row]),
            cluster=int(sel.cluster[row]),
        )
        if bool(sel.filled[row]):
            rec["filled"] = True
        records.append(rec)
    write_jsonl(path, records)


def noise_summary(state: RunState, sel, store, pool: list[Pair]) -> dict[str, Any] | None:
    """How well each scoring separates the pool's labelled noise (when labels exist)."""
    field_name = state.opts.run.label_field
    if not field_name:
        return None
    from gdig.select import noise_detection
    from gdig.select.quality import quality_stats

    labels = [p.extra.get(field_name) for p in pool]
    if any(v is None for v in labels):
        missing = next(p.id for p, v in zip(pool, labels, strict=True) if v is None)
        raise RunError(f"{state.opts.run.pool}: pair {missing!r} has no field {field_name!r}")
    is_noise = np.array([str(v) != "clean" for v in labels])
    out: dict[str, Any] = {"noise_fraction": float(is_noise.mean())}
    cfg = state.opts.select
    for scoring in ("raw", "zscore", "cosine"):
        q = quality_stats(store, scoring=scoring, seed_group=cfg.seed_group, tau=cfg.tau)
        scored = dataclasses.replace(sel, benefit_mean=q.mean, passed_quality=q.passed)
        out[scoring] = noise_detection(scored, is_noise)
    return out


def stage_report(state: RunState) -> Path:
    from gdig.report import sample_map_rows, write_report
    from gdig.select import Selection

    t = time.perf_counter()
    if not (state.out / SELECTION_FILE).exists():
        raise RunError(f"{state.out / SELECTION_FILE} is missing: run `gdig select` first")
    sel = Selection.load(state.out / SELECTION_FILE)
    store, pool = _scored(state)
    rows = sample_map_rows(sel)
    # Counts (pool, passed quality, clusters, selected) come from Selection.summary() in the
    # report itself; only what the selection does not know is added here.
    summary = {
        "seeds": store.n_seeds,
        "stage seconds": {s: rec.get("seconds") for s, rec in state.manifest["stages"].items()},
    }
    noise = noise_summary(state, sel, store, pool)
    if noise:
        summary["noise detection"] = noise
    state.summary = summary
    path = write_report(
        state.out,
        sel,
        [(p.id, p.src, p.tgt) for p in pool],
        store.feature_rows(rows),
        summary,
        map_rows=rows,
    )
    _record(state, "report", time.perf_counter() - t, noise=noise)
    return path


STAGE_FUNCS: dict[str, Callable[[RunState], Any]] = {
    "fit": stage_fit,
    "score": stage_score,
    "select": stage_select,
    "report": stage_report,
}


def run_stages(opts: RunOptions, stages: tuple[str, ...] = STAGES) -> RunState:
    """Run ``stages`` in the run folder, resuming what an earlier run left there."""
    from gdig.runlock import RunLockedError, run_lock

    if opts.run.out is None:
        raise RunError("no run folder given: pass --out DIR")
    Path(opts.run.out).mkdir(parents=True, exist_ok=True)
    try:
        with run_lock(opts.run.out):
            state = open_run(opts)
            check_outputs(state)
            if any(s in stages and not _stage_done(state, s) for s in ("fit", "score")):
                preflight(state)
            for stage in stages:
                if stage == "report" or not _stage_done(state, stage):
                    STAGE_FUNCS[stage](state)
    except RunLockedError as exc:
        raise RunError(str(exc)) from exc
    return state
