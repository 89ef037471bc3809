"""The run folder: its manifest, the consistency guard, and each stage's bookkeeping.

Each stage records its fingerprint in ``manifest.json``. Re-running a stage whose output
exists with the same fingerprint skips it; a different fingerprint is refused with the
list of what changed, unless ``--force-restart`` is given, and even then a command
recomputes only the stages it runs: ``gdig select`` never removes what ``fit`` and
``score`` made. Outputs are recorded with their sha256 and verified on every start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdig import __version__
from gdig.data.pool import PoolIndex
from gdig.engine.distributed import SINGLE, Dist
from gdig.io.atomic import atomic_write_text, remove_stale_temps
from gdig.io.errors import UsageError
from gdig.io.integrity import bad_files, check_store
from gdig.run.config import RunOptions
from gdig.run.fingerprint import STAGES, stage_diff, stage_fingerprints
from gdig.run.lock import LOCK_FILE

log = logging.getLogger("gdig")

MANIFEST = "manifest.json"
FACTORS_FILE = "factors.safetensors"
FINETUNED_DIR = "finetuned"  # --finetune-first: the model fine-tuned on the pool
STORE_DIR = "store"
SELECTION_FILE = "selection.npz"
SKIPPED_FILE = "skipped_lines.jsonl"
NONFINITE_FILE = "nonfinite.jsonl"
SEEDS_FILE = "seeds.pt"  # the prepared seeds, kept so that a resumed scoring pass skips them
SELECTIONS_DIR = "selections"  # named selections (--name), each in a folder of its own
SELECT_OUTPUTS = [SELECTION_FILE, "scores.csv", "selected.jsonl"]
STAGE_OUTPUTS = {
    "fit": [FACTORS_FILE],
    "score": [STORE_DIR],
    "select": SELECT_OUTPUTS,
    "report": ["report.html"],
}


@dataclass
class RunState:
    """What the stages share within one process (inputs and model loaded lazily, once)."""

    opts: RunOptions
    out: Path
    manifest: dict[str, Any]
    stages: tuple[str, ...]  # the stages this command runs
    seeds: PoolIndex | None = None
    pool: PoolIndex | None = None
    model: Any = None
    tokenizer: Any = None
    long_skipped: dict[str, int] = field(default_factory=dict)  # too-long pairs left out
    reused: list[str] = field(default_factory=list)  # stages found done
    records: PoolIndex | None = None  # the pool as read for select/report (no tokenizer)
    dist: Dist = SINGLE  # this process's rank under torchrun
    selection: str | None = None  # a named selection (--name): select/report go there

    @property
    def sel_out(self) -> Path:
        """Where select and report write: the run folder, or a named selection's folder."""
        return self.out / SELECTIONS_DIR / self.selection if self.selection else self.out


def check_out_folder(out: str | None) -> Path:
    """``--out`` must be a new or empty folder, or a gdig run folder."""
    if out is None:
        raise UsageError("no run folder given: pass --out DIR")
    path = Path(out)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == path else f"lies under the file {parent}"
            raise UsageError(f"--out {path}: {where}; give a folder")
    if path.is_dir() and not (path / MANIFEST).is_file():
        stray = [p.name for p in path.iterdir() if p.name != LOCK_FILE]
        if stray:
            raise UsageError(
                f"--out {path}: the folder is not empty and holds no gdig run ({stray[0]} ...); "
                "give a new or empty folder"
            )
    return path


def load_manifest(out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: unreadable manifest ({exc}); use --force-restart") from exc


def save_manifest(state: RunState) -> None:
    if not state.dist.main:  # under torchrun rank 0 keeps the run folder's records
        return
    atomic_write_text(state.out / MANIFEST, json.dumps(state.manifest, indent=2) + "\n")


def versions() -> dict[str, str]:
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


def open_run(
    opts: RunOptions, out: Path, stages: tuple[str, ...], identities: dict[str, Any]
) -> RunState:
    """Compare with the run already in ``out`` and prepare the manifest for ``stages``."""
    old = load_manifest(out)
    prints = stage_fingerprints(opts, identities)
    config = opts.as_manifest()
    old_stages = old.get("stages", {})
    old_prints = old.get("fingerprints", {})
    changed = [s for s in STAGES if s in old_stages and old_prints.get(s) != prints[s]]
    first = min(STAGES.index(s) for s in stages)
    earlier = [s for s in changed if STAGES.index(s) < first]
    if earlier:
        stage = earlier[0]
        what = stage_diff(stage, old.get("inputs", {}), old.get("config", {}), identities, config)
        raise UsageError(
            f"{out}: `{stage}` was run with other inputs or options than this command "
            f"gives ({'; '.join(what) or 'its output versions'}); this command does not "
            f"redo `{stage}`: run `gdig run --out {out}` with the options you want "
            "(and --force-restart) instead"
        )
    # select and report are cheap and their outputs are what the command asks for: they are
    # redone when their options change; fit and score need --force-restart.
    own = [s for s in changed if s in stages and s not in ("select", "report")]
    if own and not opts.run.force_restart:
        what = [
            line
            for s in own
            for line in stage_diff(
                s, old.get("inputs", {}), old.get("config", {}), identities, config
            )
        ]
        raise UsageError(
            f"{out} holds a run with other inputs or options (stages {', '.join(own)} would "
            f"change): "
            + "; ".join(dict.fromkeys(what) or ["(versions of the outputs)"])
            + "; use another --out, or --force-restart to recompute them"
        )
    for stage in changed:  # the command's own (forced) and the later ones, now stale
        clear_stage(out, stage)
    manifest = {
        "gdig_version": __version__,
        "benefit_convention": "B(m,s) = grad L(s)^T H^-1 grad L(m); positive = m helps s",
        "versions": versions(),
        "inputs": identities,
        "config": config,
        "fingerprints": prints,
        # Records of stages whose fingerprint still matches are kept: they are resumable.
        "stages": {s: r for s, r in old_stages.items() if old_prints.get(s) == prints[s]},
        "execution": old.get("execution", {}),
        "input_checks": old.get("input_checks", {}),
        "warnings": [],
        # Named selections are made from the scores: they stay while scoring does.
        "selections": {} if "score" in changed else old.get("selections", {}),
    }
    state = RunState(opts=opts, out=out, manifest=manifest, stages=stages)
    save_manifest(state)
    return state


def clear_stage(out: Path, stage: str) -> None:
    extra = {
        "fit": [FINETUNED_DIR],
        "score": [SEEDS_FILE, SELECTIONS_DIR],
        "report": ["report_files"],
    }.get(stage, [])
    for name in STAGE_OUTPUTS[stage] + extra:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def stage_done(state: RunState, stage: str) -> bool:
    rec = state.manifest["stages"].get(stage)
    outputs = STAGE_OUTPUTS[stage]
    return bool(rec and rec.get("done")) and all((state.out / p).exists() for p in outputs)


def stage_records(state: RunState, stage: str) -> dict[str, Any]:
    """The records ``stage`` writes to: the run's, or a named selection's (select, report)."""
    if state.selection and stage in ("select", "report"):
        named = state.manifest.setdefault("selections", {}).setdefault(state.selection, {})
        named["config"] = {
            s: dataclasses.asdict(getattr(state.opts, s)) for s in ("select", "report")
        }
        return named.setdefault("stages", {})
    return state.manifest["stages"]


def begin(state: RunState, stage: str) -> None:
    """Note that ``stage`` has begun: its partial work (store shards) now belongs to this
    configuration, so resuming it with other options is refused like a finished stage."""
    records = stage_records(state, stage)
    if stage not in records:
        records[stage] = {"done": False}
        save_manifest(state)


def record(state: RunState, stage: str, seconds: float, **extra: Any) -> None:
    records = stage_records(state, stage)
    records[stage] = {"done": True, "seconds": round(seconds, 3), **extra}
    save_manifest(state)


def keep_saved_options(state: RunState, old: dict[str, Any]) -> None:
    """After a command failed: the folder keeps the options it held before, unless a model
    stage changed (its earlier output is gone, and partial work belongs to the new options:
    running the command again resumes it). Records of stages made with the failed
    command's options (select, report) are dropped: the next command redoes them with the
    saved ones."""
    new_prints, old_prints = state.manifest["fingerprints"], old.get("fingerprints", {})
    if not old or any(new_prints.get(s) != old_prints.get(s) for s in ("fit", "score")):
        return
    stages = state.manifest["stages"]
    state.manifest["config"] = old.get("config", {})
    state.manifest["fingerprints"] = old_prints
    state.manifest["stages"] = {
        s: r for s, r in stages.items() if new_prints[s] == old_prints.get(s)
    }
    save_manifest(state)


def warn(state: RunState, message: str) -> None:
    """A warning the user must see: logged (stderr) and kept in the manifest."""
    if state.dist.main:  # once, not once per torchrun rank
        log.warning("%s", message)
    state.manifest.setdefault("warnings", []).append(message)


def drop_from(state: RunState, stage: str) -> None:
    """Forget the records of ``stage`` and every later stage (they will be redone)."""
    for s in STAGES[STAGES.index(stage) :]:
        state.manifest["stages"].pop(s, None)


def check_outputs(state: RunState) -> None:
    """Verify what earlier runs left in the folder; drop (and say so) whatever fails.

    Recorded outputs (factors, selection; small) must match the sha256 in the manifest.
    The gradient store's files are checked as ``--verify`` says: ``quick``, size and mtime
    against the store's manifest (sound for files the store renamed into place itself:
    see :mod:`gdig.io.integrity`), or ``full``, sha256. Shards that fail are forgotten in
    the store's manifest, so the engine recomputes those, and only those.
    """
    from gdig.engine.store import StoreError, forget_shards

    out, stages = state.out, state.manifest["stages"]
    remove_stale_temps(out)  # leftovers of writers killed mid-file
    for stage, names in (("fit", [FACTORS_FILE]), ("select", SELECT_OUTPUTS)):
        rec = stages.get(stage)
        if not rec or not rec.get("done"):
            continue
        recorded = rec.get("sha256", {})
        broken = [n for n in names if n not in recorded] + bad_files(out, recorded)
        if broken:
            warn(
                state,
                f"{out / broken[0]} is missing or fails its checksum (corrupt or truncated); "
                f"recomputing the {stage} stage",
            )
            drop_from(state, stage)
    store = out / STORE_DIR
    bad, readable = check_store(store, state.opts.run.verify)
    if bad and readable:
        try:  # the engine then recomputes these, whatever its own check
            forget_shards(store, [name.split("/")[0] for name in bad if "/" in name])
        except StoreError:
            readable = False
    if not readable:
        warn(state, f"{store / 'manifest.json'} is unreadable; recomputing the whole store")
        shutil.rmtree(store)
        drop_from(state, "score")
    elif bad:
        warn(
            state,
            f"gradient store: {len(bad)} shard(s) fail their checksums (corrupt or truncated): "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; recomputing them",
        )
        drop_from(state, "score")
    save_manifest(state)
