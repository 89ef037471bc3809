"""The one error family of gdig.

Every error a user can cause or meet while running is a :class:`GdigError`; its message
names the bad thing (file, line, field, flag) and what to do. The CLI prints it as one
line, ``gdig: error: ...``, and exits with the error's :attr:`exit_status`: 2 for bad
input or usage (:class:`UsageError`), 1 for a failure while running. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class GdigError(Exception):
    """Base of every error gdig reports to a user (exit status 1: a failure while running)."""

    exit_status = 1


class UsageError(GdigError, ValueError):
    """Bad input or usage: a flag, a config value, an input file, a run folder (exit 2)."""

    exit_status = 2
