"""A fine-tuning run's identity and checkpoints: what a checkpoint must match to be
resumed, and how one is written, read and restored (see :mod:`gdig.train.finetune`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gdig.io.atomic import atomic_open, remove_stale_temps
from gdig.io.errors import UsageError
from gdig.io.integrity import fingerprint_fields
from gdig.train.config import FinetuneConfig

FORMAT = 1


CHECKPOINT_DIR = "checkpoint"


CHECKPOINT_FILE = "state.pt"


META_FILE = "gdig_finetune.json"


def pairs_digest(pairs: Sequence[Any]) -> str:
    """sha256 of the pairs' ids, texts and languages, in order (order sets the data order)."""
    h = hashlib.sha256()
    for p in pairs:
        rec = [
            getattr(p, "id", None),
            p.src,
            p.tgt,
            getattr(p, "src_lang", None),
            getattr(p, "tgt_lang", None),
        ]
        h.update(json.dumps(rec, ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def run_fingerprint(
    model_path: str | os.PathLike,
    pairs: Sequence[Any],
    cfg: FinetuneConfig,
    template: str,
    max_length: int,
) -> dict[str, Any]:
    """What decides the fine-tuned weights: base model folder, pairs, rendering, config.

    Fields that change no weight (checkpoint and log intervals) are left out. ``digest``
    hashes the rest.
    """
    config = fingerprint_fields(cfg)  # fields marked NOT_FINGERPRINTED change no weight
    parts: dict[str, Any] = {
        "base_model": str(Path(model_path).expanduser().resolve()),
        "template": template,
        "max_length": max_length,
        "config": config,
        "pairs": {"n": len(pairs), "sha256": pairs_digest(pairs)},
    }
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return {"digest": hashlib.sha256(blob).hexdigest(), **parts}


def fingerprint_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable list of what differs between two run fingerprints."""
    diffs = []
    for key in ("base_model", "template", "max_length"):
        if old.get(key) != new.get(key):
            diffs.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    old_cfg, new_cfg = old.get("config", {}), new.get("config", {})
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if old_cfg.get(key) != new_cfg.get(key):
            diffs.append(f"{key} {old_cfg.get(key)!r} -> {new_cfg.get(key)!r}")
    op, np_ = old.get("pairs", {}), new.get("pairs", {})
    if op != np_:
        diffs.append(
            f"training pairs ({op.get('n')} pairs, sha256 {str(op.get('sha256'))[:12]} -> "
            f"{np_.get('n')} pairs, sha256 {str(np_.get('sha256'))[:12]})"
        )
    if not diffs and old.get("digest") != new.get("digest"):
        diffs.append("fingerprint format")
    return diffs


def siblings(out: Path) -> tuple[Path, Path]:
    """(temporary folder the result is written to, where the old ``out`` goes meanwhile)."""
    return out.parent / f".{out.name}.tmp-final", out.parent / f".{out.name}.tmp-old"


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: say which, do not guess
        raise UsageError(
            f"{path}: unreadable fine-tuning checkpoint ({type(e).__name__}: {e}); delete it "
            "or pass restart=True (--restart) to start over"
        ) from e


def prepare_out(out: Path, fingerprint: dict[str, Any], restart: bool) -> dict[str, Any] | None:
    """Make ``out`` ready; return the checkpoint to resume from, if any.

    Raises ``AlreadyDone`` when ``out`` already holds the finished model of this very run.
    """
    final_tmp, aside = siblings(out)
    if aside.exists():
        if not out.exists():  # killed between the two renames of the final swap
            os.rename(aside, out)
        else:
            shutil.rmtree(aside)
    if final_tmp.exists():
        shutil.rmtree(final_tmp)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: is a file; give a folder for the fine-tuned model")
    if not out.exists():
        return None
    ckpt_file = out / CHECKPOINT_DIR / CHECKPOINT_FILE
    meta_file = out / META_FILE
    if ckpt_file.is_file():
        state = read_checkpoint(ckpt_file) if not restart else None
        if state is None:
            shutil.rmtree(out / CHECKPOINT_DIR)
            return None
        old = state.get("fingerprint", {})
        if old.get("digest") == fingerprint["digest"]:
            remove_stale_temps(out / CHECKPOINT_DIR)  # of a save killed half-way
            return state
        diffs = fingerprint_differences(old, fingerprint)
        raise UsageError(
            f"{out}: holds the checkpoint of another fine-tuning run ({'; '.join(diffs)}); "
            "pass restart=True (--restart) to discard it, or choose another output folder"
        )
    if meta_file.is_file():
        try:
            old = json.loads(meta_file.read_text("utf-8")).get("fingerprint", {})
        except (OSError, ValueError, AttributeError):
            old = {}
        if old.get("digest") == fingerprint["digest"] and not restart:
            raise AlreadyDone
        if restart:
            return None
        diffs = fingerprint_differences(old, fingerprint)
        raise UsageError(
            f"{out}: holds the model of another fine-tuning run ({'; '.join(diffs)}); pass "
            "restart=True (--restart) to replace it, or choose another output folder"
        )
    if any(p.name != CHECKPOINT_DIR for p in out.iterdir()):
        raise UsageError(
            f"{out}: not empty and not a gdig fine-tuning folder; choose a new or empty folder"
        )
    if (out / CHECKPOINT_DIR).exists():  # no state file in it: nothing to resume
        shutil.rmtree(out / CHECKPOINT_DIR)
    return None


class AlreadyDone(Exception):
    pass


def save_checkpoint(out: Path, state: dict[str, Any], step: int) -> None:
    """Write ``out/checkpoint/state.pt`` atomically (``step`` is for hooks and messages)."""
    with atomic_open(out / CHECKPOINT_DIR / CHECKPOINT_FILE) as fh:
        torch.save(state, fh)


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
