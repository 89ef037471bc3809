"""The run folder's records: options saved by older versions still read."""

from __future__ import annotations

import logging

from gdig.io.validate import read_saved
from gdig.run.options import resolve
from gdig.select.config import SelectConfig


def test_the_old_name_of_random_seed_still_reads(caplog):
    with caplog.at_level(logging.WARNING, logger="gdig"):
        got = read_saved(SelectConfig, {"seed": 5, "budget": 3, "gone": 1}, "old.json")
    assert got == {"random_seed": 5, "budget": 3}
    assert "old.json: 'seed' is the old name of 'random_seed'" in caplog.text
    # a run folder whose manifest has the old key keeps its value on the next command
    opts = resolve({}, {}, None, {"select": {"seed": 7, "budget": 11}})
    assert opts.select.random_seed == 7 and opts.select.budget == 11
    # the new name wins where both are given
    assert read_saved(SelectConfig, {"seed": 1, "random_seed": 2}, "x")["random_seed"] == 2
