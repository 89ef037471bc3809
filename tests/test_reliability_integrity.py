"""Outputs are atomic and verified: a corrupt or truncated store shard, factors file or
selection output is reported by name and recomputed on the next run, never used."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_models import toy_pairs

from gdig.cli import main
from gdig.data.pairs import write_jsonl
from gdig.io.atomic import atomic_write_text, remove_stale_temps

FAST = ["--no-progress", "--factor-samples", "24", "--k-in", "4", "--k-out", "4", "--rank", "4",
        "--budget", "6", "--tau", "0", "--batch-size", "3", "--shard-size", "5"]  # fmt: skip
OUTPUTS = ("scores.csv", "selected.jsonl")


@pytest.fixture(scope="module")
def done_run(tmp_path_factory, tiny_llama_dir) -> tuple[list[str], Path]:
    d = tmp_path_factory.mktemp("integrity")
    model = tiny_llama_dir
    pairs = toy_pairs(31, seed=8)
    write_jsonl(d / "seed.jsonl", pairs[:5])
    write_jsonl(d / "pool.jsonl", pairs[5:])
    out = d / "run"
    args = ["--model", str(model), "--seeds", str(d / "seed.jsonl"), "--pool",
            str(d / "pool.jsonl"), *FAST]  # fmt: skip
    assert main(["run", *args, "--out", str(out)]) == 0
    return args, out


def _copy(done_run, tmp_path) -> tuple[list[str], Path]:
    args, out = done_run
    shutil.copytree(out, tmp_path / "run")
    return [*args, "--out", str(tmp_path / "run")], tmp_path / "run"


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_corrupt_and_truncated_shards_are_named_and_recomputed(done_run, tmp_path, caplog):
    args, out = _copy(done_run, tmp_path)
    flipped = out / "store" / "shard-00001" / "benefit.npy"
    data = bytearray(flipped.read_bytes())
    data[-3] ^= 0xFF  # one flipped byte in the numbers, header intact: loads fine, wrong value
    flipped.write_bytes(bytes(data))
    cut = out / "store" / "shard-00003" / "features.npy"
    cut.write_bytes(cut.read_bytes()[:100])
    untouched = _mtimes(out / "store" / "shard-00000")
    with caplog.at_level(logging.WARNING, logger="gdig"):
        assert main(["run", *args]) == 0
    text = caplog.text
    assert "shard-00001/benefit.npy" in text and "shard-00003/features.npy" in text, text
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (done_run[1] / name).read_bytes(), name
    assert flipped.read_bytes() == (done_run[1] / "store/shard-00001/benefit.npy").read_bytes()
    assert cut.read_bytes() == (done_run[1] / "store/shard-00003/features.npy").read_bytes()
    assert _mtimes(out / "store" / "shard-00000") == untouched  # good shards are kept
    manifest = json.loads((out / "manifest.json").read_text())
    assert any("shard-00001" in w for w in manifest["warnings"])


def test_corrupt_factors_are_refitted_and_the_store_kept(done_run, tmp_path, caplog):
    args, out = _copy(done_run, tmp_path)
    factors = out / "factors.safetensors"
    factors.write_bytes(factors.read_bytes()[:-64])
    shards = _mtimes(out / "store" / "shard-00002")
    with caplog.at_level(logging.WARNING, logger="gdig"):
        assert main(["run", *args]) == 0
    assert "factors.safetensors is missing or fails its checksum" in caplog.text
    assert factors.read_bytes() == (done_run[1] / "factors.safetensors").read_bytes()
    # refitted factors are identical, so every verified shard is resumed, not recomputed
    assert _mtimes(out / "store" / "shard-00002") == shards
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (done_run[1] / name).read_bytes(), name


@pytest.mark.parametrize("name", ["selected.jsonl", "scores.csv", "selection.npz"])
def test_damaged_selection_output_is_rewritten(done_run, tmp_path, caplog, name):
    args, out = _copy(done_run, tmp_path)
    (out / name).write_bytes((out / name).read_bytes()[:40])
    with caplog.at_level(logging.WARNING, logger="gdig"):
        assert main(["run", *args]) == 0
    assert f"{name} is missing or fails its checksum" in caplog.text
    if name == "selection.npz":  # a zip with timestamps and timings: compare its content
        from gdig.select import Selection

        new, old = Selection.load(out / name), Selection.load(done_run[1] / name)
        assert new.ids == old.ids
        for key in Selection._ARRAYS:
            np.testing.assert_array_equal(getattr(new, key), getattr(old, key), err_msg=key)
    else:
        assert (out / name).read_bytes() == (done_run[1] / name).read_bytes()


def test_unreadable_store_manifest_recomputes_the_store(done_run, tmp_path, caplog):
    args, out = _copy(done_run, tmp_path)
    (out / "store" / "manifest.json").write_text('{"shards": ')
    with caplog.at_level(logging.WARNING, logger="gdig"):
        assert main(["run", *args]) == 0
    assert "store/manifest.json is unreadable" in caplog.text
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (done_run[1] / name).read_bytes(), name


def test_stale_temp_files_are_swept(tmp_path):
    (tmp_path / "store" / "shard-00000").mkdir(parents=True)
    stale = [
        tmp_path / ".scores.csv.abc123.tmp",
        tmp_path / "store" / "shard-00000" / ".benefit.npy.tmp4242",
        tmp_path / "factors.safetensors.tmp",
    ]
    keep = [tmp_path / "scores.csv", tmp_path / "store" / "shard-00000" / "benefit.npy"]
    for p in stale + keep:
        p.write_text("x")
    assert sorted(remove_stale_temps(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path, monkeypatch):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr("gdig.io.atomic.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_selection_save_is_atomic(done_run, tmp_path, monkeypatch):
    from gdig.select import Selection

    sel = Selection.load(done_run[1] / "selection.npz")
    path = tmp_path / "selection.npz"
    sel.save(path)
    before = path.read_bytes()

    def fail(*_a, **_k):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(RuntimeError):
        sel.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["selection.npz"]


def test_a_second_process_on_the_same_folder_is_refused(done_run, tmp_path, capsys):
    from gdig.pipeline.lock import run_lock

    args, out = _copy(done_run, tmp_path)
    with run_lock(out):  # as if another gdig process were running there
        assert main(["run", *args]) == 1  # a failure while running, not bad input
    err = capsys.readouterr().err
    assert f"{out} is in use by another gdig process (pid {os.getpid()})" in err
    assert main(["run", *args]) == 0  # free again once the holder is gone


def _flip(path: Path) -> os.stat_result:
    """Flip one byte of ``path`` (same size); return its stat from before."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    return st


def test_quick_verify_catches_a_truncated_and_a_touched_shard(done_run, tmp_path, caplog):
    """Default --verify quick: size and mtime against the store's manifest."""
    args, out = _copy(done_run, tmp_path)
    cut = out / "store" / "shard-00002" / "topk_val.npy"
    os.truncate(cut, cut.stat().st_size - 4)
    touched = out / "store" / "shard-00004" / "features.npy"
    st = _flip(touched)
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    untouched = _mtimes(out / "store" / "shard-00000")
    with caplog.at_level(logging.WARNING, logger="gdig"):
        assert main(["run", *args]) == 0
    assert "shard-00002/topk_val.npy" in caplog.text, caplog.text
    assert "shard-00004/features.npy" in caplog.text, caplog.text
    for path in (cut, touched):
        assert path.read_bytes() == (done_run[1] / path.relative_to(out)).read_bytes()
    assert _mtimes(out / "store" / "shard-00000") == untouched
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (done_run[1] / name).read_bytes(), name


def test_a_change_that_keeps_size_and_mtime_needs_verify_full(done_run, tmp_path, caplog):
    args, out = _copy(done_run, tmp_path)
    flipped = out / "store" / "shard-00001" / "benefit.npy"
    st = _flip(flipped)
    os.utime(flipped, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime restored
    with caplog.at_level(logging.WARNING, logger="gdig"):
        assert main(["run", *args]) == 0  # quick: size and mtime match, nothing to redo
    assert "shard-00001" not in caplog.text
    assert flipped.read_bytes() != (done_run[1] / "store/shard-00001/benefit.npy").read_bytes()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gdig"):
        assert main(["run", *args, "--verify", "full"]) == 0
    assert "shard-00001/benefit.npy" in caplog.text, caplog.text
    assert flipped.read_bytes() == (done_run[1] / "store/shard-00001/benefit.npy").read_bytes()
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (done_run[1] / name).read_bytes(), name


def test_a_copy_that_did_not_keep_mtimes_is_verified_not_recomputed(done_run, tmp_path, caplog):
    """Every store file with a new mtime but its size is hashed (quick), and all pass."""
    args, out = done_run
    shutil.copytree(out, tmp_path / "run", copy_function=shutil.copyfile)
    out = tmp_path / "run"
    before = _mtimes(out / "store" / "shard-00003")
    with caplog.at_level(logging.WARNING, logger="gdig"):
        assert main(["run", *args, "--out", str(out)]) == 0
    assert "gradient store" not in caplog.text
    assert _mtimes(out / "store" / "shard-00003") == before


def test_verify_is_checked_and_on_the_help(capsys):
    from gdig.io.validate import OptionError
    from gdig.pipeline.config import RunConfig

    with pytest.raises(OptionError, match="--verify"):
        RunConfig(verify="sha")
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "--verify {quick,full}" in text and "--feature-dtype {float32,float16}" in text
