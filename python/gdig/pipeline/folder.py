"""The run folder: its manifest, the consistency guard, and each stage's bookkeeping.

Each stage records its fingerprint in ``manifest.json``. Re-running a stage whose output
exists with the same fingerprint skips it; a different fingerprint is refused with the
list of what changed, unless ``--force-restart`` is given, and even then a command
recomputes only the stages it runs: ``gdig select`` never removes what ``fit`` and
``score`` made. Outputs are recorded with their sha256 and verified on every start.

:class:`RunFolder` is the only writer of ``manifest.json``; :class:`Manifest` is the file
as a typed record, key for key.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdig import __version__
from gdig.io.atomic import atomic_write_text, remove_stale_temps
from gdig.io.errors import UsageError
from gdig.io.integrity import bad_files, check_store, file_digests
from gdig.pipeline.config import RunOptions
from gdig.pipeline.fingerprint import STAGES, stage_diff, stage_fingerprints
from gdig.pipeline.lock import LOCK_FILE

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
SCORES_FILE = "scores.csv"
SELECTED_FILE = "selected.jsonl"
REPORT_FILE = "report.html"
SELECT_OUTPUTS = [SELECTION_FILE, SCORES_FILE, SELECTED_FILE]
STAGE_OUTPUTS = {
    "fit": [FACTORS_FILE],
    "score": [STORE_DIR],
    "select": SELECT_OUTPUTS,
    "report": [REPORT_FILE],
}
# What else a stage leaves that goes with its output when it is redone.
_STAGE_EXTRAS = {"fit": [FINETUNED_DIR], "score": [SEEDS_FILE, SELECTIONS_DIR], "report": []}
BENEFIT_CONVENTION = "B(m,s) = grad L(s)^T H^-1 grad L(m); positive = m helps s"


@dataclass
class Manifest:
    """``manifest.json`` as a typed record (its keys are these fields, in this order)."""

    gdig_version: str = __version__
    benefit_convention: str = BENEFIT_CONVENTION
    versions: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)  # input identities (fingerprint.py)
    config: dict[str, dict[str, Any]] = field(default_factory=dict)  # RunOptions.as_manifest
    fingerprints: dict[str, str] = field(default_factory=dict)  # stage -> fingerprint
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> its record
    execution: dict[str, Any] = field(default_factory=dict)  # decisions fixed at the first run
    input_checks: dict[str, Any] = field(default_factory=dict)  # counts of the input checks
    warnings: list[str] = field(default_factory=list)
    selections: dict[str, dict[str, Any]] = field(default_factory=dict)  # named selections

    @classmethod
    def read(cls, out: Path) -> Manifest | None:
        """The manifest in ``out``; None when there is none (keys it does not know are
        left out: a newer gdig's additions)."""
        path = out / MANIFEST
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}: unreadable manifest ({exc}); use --force-restart") from exc
        if not isinstance(data, dict):
            raise UsageError(f"{path}: unreadable manifest (not an object); use --force-restart")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


def check_out_folder(out: str | Path | None) -> Path:
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


def saved_options(out: str | Path | None) -> dict[str, dict[str, Any]]:
    """The options a run folder was last run with (per section), ``{}`` when there is
    none; the ``run`` section (per command: folder, device, progress) is never kept."""
    if out is None or not Path(out).is_dir():
        return {}
    old = Manifest.read(Path(out))
    return {k: v for k, v in (old.config if old else {}).items() if k != "run"}


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
        # float32 sums are split across threads: another count reorders them (RELIABILITY.md)
        "torch_threads": str(torch.get_num_threads()),
    }


def clear_stage(out: Path, stage: str) -> None:
    """Remove what ``stage`` left in ``out`` (it will be redone)."""
    for name in STAGE_OUTPUTS[stage] + _STAGE_EXTRAS.get(stage, []):
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


class RunFolder:
    """A run folder and its manifest; the only writer of ``manifest.json``.

    Under torchrun every rank holds one, but only rank 0's (``main``) writes: the other
    ranks get the manifest rank 0 prepared. A named selection (``selection``) keeps its
    select and report records apart and writes its outputs to its own folder.
    """

    def __init__(
        self, path: Path, manifest: Manifest, *, main: bool = True, selection: str | None = None
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.main = main
        self.selection = selection

    # --- opening ------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        opts: RunOptions,
        path: Path,
        stages: tuple[str, ...],
        identities: dict[str, Any],
        *,
        old: Manifest | None = None,
        selection: str | None = None,
    ) -> RunFolder:
        """Compare with the run already in ``path`` (``old``) and prepare the manifest for
        ``stages``: refuses a change to a stage this command does not run, and to fit or
        score without ``--force-restart``; removes the outputs of the stages that change."""
        old = old or Manifest()
        prints = stage_fingerprints(opts, identities)
        config = opts.as_manifest()
        changed = [s for s in STAGES if s in old.stages and old.fingerprints.get(s) != prints[s]]
        first = min(STAGES.index(s) for s in stages)
        earlier = [s for s in changed if STAGES.index(s) < first]
        if earlier:
            stage = earlier[0]
            what = stage_diff(stage, old.inputs, old.config, identities, config)
            raise UsageError(
                f"{path}: `{stage}` was run with other inputs or options than this command "
                f"gives ({'; '.join(what) or 'its output versions'}); this command does not "
                f"redo `{stage}`: run `gdig run --out {path}` with the options you want "
                "(and --force-restart) instead"
            )
        # select and report are cheap and their outputs are what the command asks for:
        # they are redone when their options change; fit and score need --force-restart.
        own = [s for s in changed if s in stages and s not in ("select", "report")]
        if own and not opts.run.force_restart:
            what = [
                line
                for s in own
                for line in stage_diff(s, old.inputs, old.config, identities, config)
            ]
            raise UsageError(
                f"{path} holds a run with other inputs or options (stages {', '.join(own)} "
                f"would change): "
                + "; ".join(dict.fromkeys(what) or ["(versions of the outputs)"])
                + "; use another --out, or --force-restart to recompute them"
            )
        for stage in changed:  # the command's own (forced) and the later ones, now stale
            clear_stage(path, stage)
        manifest = Manifest(
            versions=versions(),
            inputs=identities,
            config=config,
            fingerprints=prints,
            # Records of stages whose fingerprint still matches are kept: they resume.
            stages={s: r for s, r in old.stages.items() if old.fingerprints.get(s) == prints[s]},
            execution=old.execution,
            input_checks=old.input_checks,
            # Named selections are made from the scores: they stay while scoring does.
            selections={} if "score" in changed else old.selections,
        )
        folder = cls(path, manifest, selection=selection)
        kept = [s for s in STAGES if s in manifest.stages]
        if kept and old.versions and old.versions != manifest.versions:
            what = [
                f"{k} {old.versions.get(k, '?')} -> {v}"
                for k, v in manifest.versions.items()
                if old.versions.get(k) != v
            ]
            folder.warn(
                f"{path}: resuming ({', '.join(kept)} kept) with other versions or thread "
                f"count ({'; '.join(what)}): the outputs match an uninterrupted run within "
                "the float32 tolerance of RELIABILITY.md, not byte for byte"
            )
        folder.save()
        return folder

    @classmethod
    def follower(cls, path: Path, manifest: Manifest) -> RunFolder:
        """A torchrun rank's view of the folder rank 0 opened (it never writes)."""
        return cls(path, manifest, main=False)

    def save(self) -> None:
        if self.main:  # under torchrun rank 0 keeps the run folder's records
            atomic_write_text(self.path / MANIFEST, self.manifest.to_json())

    # --- what the stages read -----------------------------------------------------------

    @property
    def out(self) -> Path:
        """Where select and report write: the run folder, or a named selection's folder."""
        if self.selection:
            return self.path / SELECTIONS_DIR / self.selection
        return self.path

    def done(self, stage: str) -> bool:
        """``stage`` finished and its outputs are there."""
        rec = self.manifest.stages.get(stage)
        outputs = STAGE_OUTPUTS[stage]
        return bool(rec and rec.get("done")) and all((self.path / p).exists() for p in outputs)

    def stage_record(self, stage: str) -> dict[str, Any]:
        """What ``stage`` recorded (a named selection's own, for select and report); {}
        when it has not run."""
        return dict(self._records(stage).get(stage, {}))

    def stage_seconds(self) -> dict[str, float | None]:
        return {s: rec.get("seconds") for s, rec in self.manifest.stages.items()}

    def fingerprint(self, stage: str) -> str:
        return self.manifest.fingerprints[stage]

    def input_identity(self, what: str) -> dict[str, Any]:
        """The recorded identity of input ``what`` (model, pool, seeds)."""
        return self.manifest.inputs[what]

    def check(self, name: str) -> Any:
        """An input check's recorded result (``None`` when it was not made)."""
        return self.manifest.input_checks.get(name)

    @property
    def warnings(self) -> list[str]:
        return list(self.manifest.warnings)

    @property
    def has_records(self) -> bool:
        """Any stage began here (a first attempt that made nothing can be removed)."""
        return bool(self.manifest.stages)

    # --- writing records ----------------------------------------------------------------

    def _records(self, stage: str) -> dict[str, dict[str, Any]]:
        """The records ``stage`` writes to: the run's, or a named selection's."""
        if self.selection and stage in ("select", "report"):
            named = self.manifest.selections.setdefault(self.selection, {})
            return named.setdefault("stages", {})
        return self.manifest.stages

    def name_selection(self, config: dict[str, dict[str, Any]]) -> None:
        """Record the options of this folder's named selection."""
        if self.selection:
            self.manifest.selections.setdefault(self.selection, {})["config"] = config
            self.save()

    def begin(self, stage: str) -> None:
        """Note that ``stage`` has begun: its partial work (store shards) now belongs to
        this configuration, so resuming it with other options is refused like a finished
        stage."""
        records = self._records(stage)
        if stage not in records:
            records[stage] = {"done": False}
            self.save()

    def record(self, stage: str, seconds: float, **facts: Any) -> None:
        """``stage`` is done: its time and what it wants kept (counts, output digests)."""
        self._records(stage)[stage] = {"done": True, "seconds": round(seconds, 3), **facts}
        self.save()

    def digests(self, names: list[str]) -> dict[str, str]:
        """sha256 of outputs in :attr:`out` (recorded, then verified on every start)."""
        return file_digests(self.out, names)

    def warn(self, message: str) -> None:
        """A warning the user must see: logged (stderr) and kept in the manifest."""
        if self.main:  # once, not once per torchrun rank
            log.warning("%s", message)
        self.manifest.warnings.append(message)

    def note(self, message: str) -> None:
        """A warning kept in the manifest that was already shown (selection notes)."""
        self.manifest.warnings.append(message)

    def set_check(self, name: str, value: Any) -> None:
        """Record the result of an input check (counts of skipped, truncated pairs ...)."""
        self.manifest.input_checks[name] = value
        self.save()

    def fixed(self, name: str, decide: Callable[[], Any]) -> Any:
        """A decision fixed at the first run and kept for every resume (the automatic
        batch size: a shard's numbers depend on its batches)."""
        if name not in self.manifest.execution:
            self.manifest.execution[name] = decide()
            self.save()
        return self.manifest.execution[name]

    def fixed_value(self, name: str) -> Any:
        """A decision :meth:`fixed` made (None when none was made)."""
        return self.manifest.execution.get(name)

    def drop_from(self, stage: str) -> None:
        """Forget the records of ``stage`` and every later stage (they will be redone)."""
        for s in STAGES[STAGES.index(stage) :]:
            self.manifest.stages.pop(s, None)

    def keep_saved_options(self, old: Manifest | None) -> None:
        """After a command failed: the folder keeps the options it held before, unless a
        model stage changed (its earlier output is gone, and partial work belongs to the
        new options: running the command again resumes it). Records of stages made with
        the failed command's options (select, report) are dropped: the next command
        redoes them with the saved ones."""
        new_prints = self.manifest.fingerprints
        if old is None or any(
            new_prints.get(s) != old.fingerprints.get(s) for s in ("fit", "score")
        ):
            return
        self.manifest.config = old.config
        self.manifest.fingerprints = old.fingerprints
        self.manifest.stages = {
            s: r
            for s, r in self.manifest.stages.items()
            if new_prints[s] == old.fingerprints.get(s)
        }
        self.save()

    def check_outputs(self, verify: str) -> None:
        """Verify what earlier runs left in the folder; drop (and say so) whatever fails.

        Recorded outputs (factors, selection; small) must match the sha256 in the
        manifest. The gradient store's files are checked as ``verify`` says: ``quick``,
        size and mtime against the store's manifest (sound for files the store renamed
        into place itself: see :mod:`gdig.io.integrity`), or ``full``, sha256. Shards that
        fail are forgotten in the store's manifest, so the engine recomputes those, and
        only those.
        """
        from gdig.engine.store import StoreError, forget_shards

        out, stages = self.path, self.manifest.stages
        remove_stale_temps(out)  # leftovers of writers killed mid-file
        for stage, names in (("fit", [FACTORS_FILE]), ("select", SELECT_OUTPUTS)):
            rec = stages.get(stage)
            if not rec or not rec.get("done"):
                continue
            recorded = rec.get("sha256", {})
            broken = [n for n in names if n not in recorded] + bad_files(out, recorded)
            if broken:
                self.warn(
                    f"{out / broken[0]} is missing or fails its checksum (corrupt or "
                    f"truncated); recomputing the {stage} stage"
                )
                self.drop_from(stage)
        store = out / STORE_DIR
        bad, readable = check_store(store, verify)
        if bad and readable:
            try:  # the engine then recomputes these, whatever its own check
                forget_shards(store, [name.split("/")[0] for name in bad if "/" in name])
            except StoreError:
                readable = False
        if not readable:
            self.warn(f"{store / 'manifest.json'} is unreadable; recomputing the whole store")
            shutil.rmtree(store)
            self.drop_from("score")
        elif bad:
            self.warn(
                f"gradient store: {len(bad)} shard(s) fail their checksums (corrupt or "
                f"truncated): {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; "
                "recomputing them"
            )
            self.drop_from("score")
        self.save()
