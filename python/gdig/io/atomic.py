"""Atomic file writes: a file appears whole or not at all.

Every output of a run is written to a temporary name in the same folder, flushed to
disk, and renamed over the final name (``os.replace`` is atomic on POSIX), so a run
killed at any moment leaves either the old file or the new one, never half of one.
Temporary names start with ``.`` and contain ``.tmp`` so that a resumed run can sweep
the leftovers of a killed one (:func:`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TEMP_MARK = ".tmp"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Binary handle on a temporary file that replaces ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_MARK, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes it 0600: keep the replaced file's mode, else an ordinary data file's
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files (``.NAME...tmp...``, ``NAME.tmp``) a killed writer left in ``folder``
    and its subfolders; return them. Only call it when no other writer uses the folder."""
    removed = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for p in root.rglob("*"):
        # atomic_open's (.NAME.XXXX.tmp), the benefit-matrix export's (.NAME.tmpPID), and
        # NAME.tmp, which factor files of earlier versions were written to
        temp = (p.name.startswith(".") and TEMP_MARK in p.name) or p.name.endswith(TEMP_MARK)
        if temp and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
