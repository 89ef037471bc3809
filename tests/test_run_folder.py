"""The run folder's records: options saved by older versions still read."""

from __future__ import annotations

import logging

from gdig.io.validate import read_saved
from gdig.pipeline.options import resolve
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


def _ids() -> dict:
    return {
        "model": {"name": "m", "path": "/m", "config_sha256": "c"},
        "pool": {"path": "/p", "sha256": "p"},
        "seeds": {"path": "/s", "sha256": "s"},
    }


def test_run_options_sections_are_its_fields():
    import dataclasses

    from gdig.pipeline.config import SECTIONS, RunOptions

    assert [f.name for f in dataclasses.fields(RunOptions)] == list(SECTIONS)
    assert list(RunOptions().as_manifest()) == list(SECTIONS)


def test_the_folder_writes_its_manifest_as_a_typed_record(tmp_path):
    import dataclasses
    import json

    from gdig.pipeline.config import RunOptions
    from gdig.pipeline.folder import Manifest, RunFolder

    folder = RunFolder.open(RunOptions(), tmp_path, ("fit", "score"), _ids())
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert list(on_disk) == [f.name for f in dataclasses.fields(Manifest)]
    folder.begin("fit")
    folder.warn("careful")
    folder.record("fit", 1.23456, examples=7)
    assert folder.stage_record("fit") == {"done": True, "seconds": 1.235, "examples": 7}
    assert not folder.done("fit")  # its output (factors.safetensors) is not there
    (tmp_path / "factors.safetensors").write_bytes(b"x")
    assert folder.done("fit")
    calls = []
    assert folder.fixed("max_batch_tokens", lambda: calls.append(1) or 512) == 512
    assert folder.fixed("max_batch_tokens", lambda: calls.append(1) or 9) == 512 and calls == [1]
    again = Manifest.read(tmp_path)
    assert again.stages["fit"]["examples"] == 7 and again.warnings == ["careful"]
    assert again.execution == {"max_batch_tokens": 512}
    folder.drop_from("score")
    assert "fit" in folder.manifest.stages
    folder.drop_from("fit")
    assert folder.manifest.stages == {}


def test_a_follower_never_writes(tmp_path):
    from gdig.pipeline.folder import Manifest, RunFolder

    follower = RunFolder.follower(tmp_path, Manifest())
    follower.record("fit", 1.0)
    follower.set_check("x", 1)
    assert not (tmp_path / "manifest.json").exists()


def test_reopening_guards_earlier_stages_and_redoes_select(tmp_path):
    import dataclasses

    import pytest

    from gdig.io.errors import UsageError
    from gdig.pipeline.config import RunOptions
    from gdig.pipeline.folder import Manifest, RunFolder

    opts = RunOptions()
    folder = RunFolder.open(opts, tmp_path, ("fit", "score", "select"), _ids())
    for stage in ("fit", "score", "select"):
        folder.record(stage, 1.0)
    (tmp_path / "scores.csv").write_text("old")
    old = Manifest.read(tmp_path)
    other = dataclasses.replace(opts, factors=dataclasses.replace(opts.factors, k_in=8))
    with pytest.raises(
        UsageError, match=r"`fit` was run with other .*config.factors.k_in: 32 -> 8"
    ):
        RunFolder.open(other, tmp_path, ("select",), _ids(), old=old)
    with pytest.raises(UsageError, match=r"stages fit, score would change.*--force-restart"):
        RunFolder.open(other, tmp_path, ("fit", "score"), _ids(), old=old)
    cheaper = dataclasses.replace(opts, select=dataclasses.replace(opts.select, budget=3))
    again = RunFolder.open(cheaper, tmp_path, ("select",), _ids(), old=old)
    assert set(again.manifest.stages) == {"fit", "score"}  # select is redone, not refused
    assert not (tmp_path / "scores.csv").exists()


def test_a_manifest_from_elsewhere_reads_or_is_named(tmp_path):
    import pytest

    from gdig.io.errors import UsageError
    from gdig.pipeline.folder import Manifest

    (tmp_path / "manifest.json").write_text('{"stages": {"fit": {"done": true}}, "future": 1}')
    assert Manifest.read(tmp_path).stages == {"fit": {"done": True}}  # unknown keys left out
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(UsageError, match="unreadable manifest"):
        Manifest.read(tmp_path)
