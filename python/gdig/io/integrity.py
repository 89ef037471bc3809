"""Checks of a run folder's outputs before a resumed run trusts them.

Every output a stage records in the run manifest carries its sha256; every file of the
gradient store carries, in the store's manifest, a record of its sha256, size and
modification time (``mtime_ns``) taken when it was written. On resume, anything that no
longer matches (a truncated copy, a flipped bit, a half-synced disk) is reported by name
and recomputed, never used.

Two strengths of check (``--verify``):

- ``full``: the sha256 of every file (reads everything, at the speed of the disk);
- ``quick`` (default): size and ``mtime_ns`` against the record, no reading. This is sound
  for files the store wrote itself: every file is written under a temporary name and
  renamed into place (:mod:`gdig.io.atomic`), so a torn or half-written file cannot carry
  the recorded name, and any later write through the file system (truncation, an
  appended or overwritten byte, a rewrite) changes the size or the mtime. A file whose
  size matches but whose mtime does not (a copy that did not keep times, a ``touch``) is
  hashed, so a run folder copied without ``cp -p`` is verified, not recomputed. What
  quick cannot see is a change that keeps size and mtime: bit rot below the file system,
  or an edit that restored the mtime (within the file system's time resolution, which is
  1 ns on ext4/xfs/btrfs but 1-2 s on some network and FAT file systems); ``full`` does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

log = logging.getLogger("gdig")

VERIFY_MODES = ("quick", "full")


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Digest of a JSON-able value (keys sorted): fingerprints of options and id lists."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# Field metadata of an option that changes no result (how often to checkpoint or log):
# ``field(default=..., metadata={"help": ..., **NOT_FINGERPRINTED})``. Fingerprints leave
# such fields out, so changing one never invalidates saved work.
NOT_FINGERPRINTED: dict[str, bool] = {"fingerprint": False}


def unprinted_fields(cls: type) -> frozenset[str]:
    """Names of the fields of dataclass ``cls`` marked :data:`NOT_FINGERPRINTED`."""
    return frozenset(
        f.name for f in dataclasses.fields(cls) if f.metadata.get("fingerprint") is False
    )


def fingerprint_fields(cfg: Any) -> dict[str, Any]:
    """A config dataclass as the values a fingerprint hashes (unprinted fields left out)."""
    skip = unprinted_fields(type(cfg))
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}


def file_digests(folder: Path, names: list[str]) -> dict[str, str]:
    return {name: sha256_file(folder / name) for name in names}


def file_record(path: str | os.PathLike[str], sha256: str | None = None) -> dict[str, Any]:
    """``{"sha256", "size", "mtime_ns"}`` of a file just written (``sha256`` if known)."""
    st = os.stat(path)
    digest = sha256 if sha256 is not None else sha256_file(path)
    return {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def file_matches(path: Path, record: str | dict[str, Any], verify: str = "full") -> bool:
    """Whether ``path`` still is the file ``record`` describes.

    ``record`` is a sha256 (run-manifest outputs, stores of earlier versions: always
    hashed) or a :func:`file_record`. ``verify``: ``full`` hashes the file; ``quick``
    compares size and mtime_ns and hashes only when the size matches and the mtime does
    not (see the module docstring for why this is sound).
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    if isinstance(record, str):
        record = {"sha256": record}
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    if "size" in record and st.st_size != record["size"]:
        return False
    if verify == "quick" and "size" in record and st.st_mtime_ns == record.get("mtime_ns"):
        return True
    return sha256_file(path) == record["sha256"]


def bad_files(
    folder: Path, records: dict[str, str | dict[str, Any]], verify: str = "full"
) -> list[str]:
    """Names in ``records`` whose file under ``folder`` is missing or no longer matches
    (:func:`file_matches`)."""
    return [name for name, rec in records.items() if not file_matches(folder / name, rec, verify)]


def check_store(store: Path, verify: str = "full") -> tuple[list[str], bool]:
    """``(bad files, manifest readable)`` of a gradient store folder, each bad file named
    ``shard-NNNNN/name`` (or ``name`` at the top).

    A bad file is one the store's manifest records as written that is missing or fails
    the ``verify`` check (:func:`file_matches`); at most one is named per shard. The
    engine recomputes such shards when scoring resumes; this check names them so the user
    sees it happen.
    """
    path = store / "manifest.json"
    if not path.is_file():
        return [], True
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        shards = manifest["shards"]
        files = {"": manifest.get("files", {})} | {k: v["files"] for k, v in shards.items()}
        for records in files.values():
            for rec in records.values():
                if not isinstance(rec, str) and not isinstance(rec["sha256"], str):
                    raise TypeError(rec)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return [], False
    bad = []
    for name, records in files.items():
        broken = bad_files(store / name, records, verify)
        if broken:
            bad.append(f"{name}/{broken[0]}" if name else broken[0])
    return bad, True
