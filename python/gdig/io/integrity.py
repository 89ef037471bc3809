"""Checks of a run folder's outputs before a resumed run trusts them.

Every output a stage records in the run manifest carries its sha256; every shard of the
gradient store carries the sha256 of each of its files in the store's manifest. On
resume, anything that no longer matches (a truncated copy, a flipped bit, a half-synced
disk) is reported by name and recomputed, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("gdig")


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Digest of a JSON-able value (keys sorted): fingerprints of options and id lists."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_digests(folder: Path, names: list[str]) -> dict[str, str]:
    return {name: sha256_file(folder / name) for name in names}


def bad_files(folder: Path, digests: dict[str, str]) -> list[str]:
    """Names in ``digests`` whose file under ``folder`` is missing or has another sha256."""
    out = []
    for name, digest in digests.items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != digest:
            out.append(name)
    return out


def check_store(store: Path) -> tuple[list[str], bool]:
    """``(bad shards, manifest readable)`` of a gradient store folder.

    A bad shard is one the store's manifest records as written whose files are missing or
    fail their checksums. The engine recomputes such shards when scoring resumes (it only
    skips shards that verify); this check names them so the user sees it happen.
    """
    path = store / "manifest.json"
    if not path.is_file():
        return [], True
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        shards = manifest["shards"]
        files = {"": manifest.get("files", {})} | {k: v["files"] for k, v in shards.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return [], False
    bad = []
    for name, digests in files.items():
        broken = bad_files(store / name, digests)
        if broken:
            bad.append(f"{name}/{broken[0]}" if name else broken[0])
    return bad, True
