"""Low-level I/O every package uses: atomic writes, checksums, and the error family."""

from gdig.io.errors import GdigError, UsageError

__all__ = ["GdigError", "UsageError"]
