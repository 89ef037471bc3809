"""The stages of a G-DIG run over one run folder: fit -> score -> select -> report.

Each stage records a fingerprint of everything its output depends on in
``manifest.json``. Re-running a stage whose output exists with the same fingerprint
skips it (a resumed run redoes only what is missing; the gradient store also resumes
shard by shard); a different fingerprint is refused with the list of what changed,
unless ``force_restart`` is set.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gdig import __version__
from gdig.data.pairs import Pair, read_pairs, write_jsonl
from gdig.engine.config import EngineConfig
from gdig.options import as_dict
from gdig.runconfig import RunConfig
from gdig.select.config import SelectConfig

STAGES = ("fit", "score", "select", "report")
FACTORS_FILE = "factors.safetensors"
STORE_DIR = "store"
SELECTION_FILE = "selection.npz"
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
    skipped: list[dict] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- manifest, hashing


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def load_manifest(out: Path) -> dict[str, Any]:
    path = out / "manifest.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: unreadable manifest ({exc}); use --force-restart") from exc


def save_manifest(state: RunState) -> None:
    _atomic_write_text(state.out / "manifest.json", json.dumps(state.manifest, indent=2) + "\n")


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
    """Cheap identity of a model folder: its config and the names and sizes of its files."""
    files = sorted(p for p in path.iterdir() if p.is_file())
    return {
        "config_sha256": sha256_file(path / "config.json"),
        "files": {p.name: p.stat().st_size for p in files},
    }


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
    fit = _fingerprint(
        {
            "model": identities["model"],
            "pool": identities["pool"]["sha256"],
            "factor": opts.engine.factor_key(),
            "dtype": opts.run.dtype,
            "bad_lines": opts.run.bad_lines,
        }
    )
    score = _fingerprint({"fit": fit, "seed": identities["seed"]["sha256"], "engine": eng})
    select = _fingerprint({"score": score, "select": as_dict(opts.select)})
    report = _fingerprint({"select": select, "label_field": opts.run.label_field})
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
    }
    if old:
        changed = [
            s
            for s in STAGES
            if s in old.get("stages", {}) and old["fingerprints"].get(s) != prints[s]
        ]
        if changed:
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
        "select": [SELECTION_FILE, "scores.csv", "selected.jsonl"],
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


def _record(state: RunState, stage: str, seconds: float, **extra: Any) -> None:
    state.manifest["stages"][stage] = {"done": True, "seconds": round(seconds, 3), **extra}
    save_manifest(state)


# ---------------------------------------------------------------- inputs and model


def _pairs(state: RunState, which: str) -> list[Pair]:
    cached = getattr(state, which)
    if cached is not None:
        return cached
    path = state.opts.run.seed if which == "seeds" else state.opts.run.pool
    skipped: list[dict] = []
    pairs = read_pairs(path, bad_lines=state.opts.run.bad_lines, skipped=skipped)
    if skipped:
        state.skipped += skipped
        write_jsonl(state.out / "skipped_lines.jsonl", state.skipped)
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


# ---------------------------------------------------------------- stages


def stage_fit(state: RunState) -> None:
    if _stage_done(state, "fit", FACTORS_FILE):
        return
    from gdig.engine import fit_factors

    t = time.perf_counter()
    pool = _pairs(state, "pool")
    model, tok = _model(state)
    factors = fit_factors(model, tok, pool, state.opts.engine, progress=state.opts.run.progress)
    factors.save(state.out / FACTORS_FILE)
    _record(state, "fit", time.perf_counter() - t, examples=factors.stats.get("examples"))


def stage_score(state: RunState) -> None:
    if _stage_done(state, "score", STORE_DIR):
        return
    from gdig.engine import Factors, prepare_seeds, score_candidates

    if not (state.out / FACTORS_FILE).exists():
        raise RunError(f"{state.out / FACTORS_FILE} is missing: run `gdig fit` first")
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
    _record(state, "score", time.perf_counter() - t, candidates=store.n, seeds=store.n_seeds)


def _open_store(state: RunState):
    from gdig.engine import GradStore

    if not (state.out / STORE_DIR).exists():
        raise RunError(f"{state.out / STORE_DIR} is missing: run `gdig score` first")
    return GradStore.open(state.out / STORE_DIR)


def _select_config(state: RunState) -> SelectConfig:
    cfg = state.opts.select
    cfg.device = "cuda" if state.opts.run.device.startswith("cuda") else "cpu"
    return cfg


def stage_select(state: RunState) -> None:
    from gdig.select import Selection, select

    if _stage_done(state, "select", SELECTION_FILE, "scores.csv", "selected.jsonl"):
        return
    t = time.perf_counter()
    store = _open_store(state)
    sel = select(store, _select_config(state))
    pool = _pairs(state, "pool")
    if [p.id for p in pool] != list(store.ids):
        raise RunError(
            f"{state.out / STORE_DIR}: its candidates are not the pool's ({state.opts.run.pool}); "
            "use --force-restart"
        )
    _write_scores(state.out / "scores.csv", sel)
    _write_selected(state.out / "selected.jsonl", sel, pool)
    sel.save(state.out / SELECTION_FILE)
    assert isinstance(sel, Selection)
    _record(state, "select", time.perf_counter() - t, **sel.summary())


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
    _atomic_write_text(path, buf.getvalue())


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


def noise_summary(state: RunState, sel) -> dict[str, Any] | None:
    """How well each scoring separates the pool's labelled noise (when labels exist)."""
    field_name = state.opts.run.label_field
    if not field_name:
        return None
    from gdig.select import noise_detection
    from gdig.select.quality import quality_stats

    pool = _pairs(state, "pool")
    labels = [p.extra.get(field_name) for p in pool]
    if any(v is None for v in labels):
        missing = next(p.id for p, v in zip(pool, labels, strict=True) if v is None)
        raise RunError(f"{state.opts.run.pool}: pair {missing!r} has no field {field_name!r}")
    is_noise = np.array([str(v) != "clean" for v in labels])
    store = _open_store(state)
    out: dict[str, Any] = {"noise_fraction": float(is_noise.mean())}
    cfg = state.opts.select
    for scoring in ("raw", "zscore", "cosine"):
        q = quality_stats(store, scoring=scoring, seed_group=cfg.seed_group, tau=cfg.tau)
        proxy = _ProxySelection(q.mean, q.passed, sel.selected)
        out[scoring] = noise_detection(proxy, is_noise)
    return out


@dataclass
class _ProxySelection:
    benefit_mean: np.ndarray
    passed_quality: np.ndarray
    selected: np.ndarray


def stage_report(state: RunState) -> Path:
    from gdig.report import sample_map_rows, write_report
    from gdig.select import Selection

    t = time.perf_counter()
    if not (state.out / SELECTION_FILE).exists():
        raise RunError(f"{state.out / SELECTION_FILE} is missing: run `gdig select` first")
    sel = Selection.load(state.out / SELECTION_FILE)
    store = _open_store(state)
    pool = _pairs(state, "pool")
    rows = sample_map_rows(sel)
    summary = {
        "pool": len(pool),
        "seeds": store.n_seeds,
        "passed quality": int(sel.passed_quality.sum()),
        "clusters": int(sel.n_clusters),
        "selected": int(sel.selected.sum()),
        "stage seconds": {s: rec.get("seconds") for s, rec in state.manifest["stages"].items()},
    }
    noise = noise_summary(state, sel)
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
    state = open_run(opts)
    for stage in stages:
        if stage == "report" or not _stage_done(state, stage):
            STAGE_FUNCS[stage](state)
    return state
