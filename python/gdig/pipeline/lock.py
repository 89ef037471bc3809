"""One process at a time per run folder.

Two runs writing one folder would interleave their shards and manifests. An exclusive
``flock`` on ``RUN_DIR/.gdig.lock`` is held for the whole run (the file is removed at
the end); the kernel drops it when the
process dies, however it dies, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from gdig.io.errors import GdigError

LOCK_FILE = ".gdig.lock"


class RunLockedError(GdigError):
    """Another live process holds the run folder."""


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike[str]) -> Iterator[None]:
    path = Path(folder) / LOCK_FILE
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise RunLockedError(
                f"{folder} is in use by another gdig process (pid {holder}); wait for it to "
                "finish or stop it, or use another --out"
            ) from None
        if not _same_file(fh, path):  # the holder removed it as we opened it: it was busy
            raise RunLockedError(
                f"{folder} was in use by another gdig process a moment ago; run again"
            )
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            # Removed while still held, so no run folder keeps a stale lock file; a process
            # that opened it just before sees it gone and refuses (see _same_file).
            with contextlib.suppress(OSError):
                path.unlink()
            fcntl.flock(fh, fcntl.LOCK_UN)


def _same_file(fh, path: Path) -> bool:
    try:
        return os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
    except OSError:
        return False
