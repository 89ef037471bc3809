"""The fingerprint functions, directly: which stages a change invalidates, the diff that
names it, and the identities of files, folders and models."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from gdig.io.errors import UsageError
from gdig.io.integrity import NOT_FINGERPRINTED, fingerprint_fields, sha256_file
from gdig.pipeline.config import RunOptions
from gdig.pipeline.fingerprint import (
    STAGES,
    diff,
    file_identity,
    model_identity,
    sampled_sha256,
    stage_diff,
    stage_fingerprints,
)

IDS = {
    "model": {"name": "m", "path": "/a/m", "config_sha256": "c1", "files": {"w": 1}},
    "pool": {"path": "/a/pool.jsonl", "sha256": "p1"},
    "seeds": {"path": "/a/seeds.jsonl", "sha256": "s1"},
}


def _changed(opts: RunOptions, ids: dict, **section_changes) -> set[str]:
    """The stages whose fingerprint differs after ``section={field: value}`` changes."""
    new = dataclasses.replace(opts)
    for section, changes in section_changes.items():
        setattr(new, section, dataclasses.replace(getattr(opts, section), **changes))
    before, after = stage_fingerprints(opts, IDS), stage_fingerprints(new, ids)
    return {s for s in STAGES if before[s] != after[s]}


@pytest.mark.parametrize(
    ("changes", "stages"),
    [
        ({"factors": {"k_in": 16}}, set(STAGES)),
        ({"read": {"too_long": "skip"}}, set(STAGES)),
        ({"scoring": {"damping_factor": 0.5}}, {"score", "select", "report"}),
        ({"select": {"budget": 7}}, {"select", "report"}),
        ({"report": {"label_field": "noise"}}, {"report"}),
        ({"execution": {"max_batch_tokens": 64, "shard_size": 3}}, set()),  # no result
        ({"run": {"out": "elsewhere", "progress": True}}, set()),
        ({"finetune": {"epochs": 2.0}}, set()),  # only with --finetune-first
    ],
)
def test_a_change_invalidates_its_stage_and_the_later_ones(changes, stages):
    assert _changed(RunOptions(), IDS, **changes) == stages


def test_inputs_enter_by_content_not_by_path():
    moved = {k: {**v, "path": "/elsewhere"} for k, v in IDS.items()}
    assert _changed(RunOptions(), moved) == set()
    seeds = {**IDS, "seeds": {**IDS["seeds"], "sha256": "s2"}}
    assert _changed(RunOptions(), seeds) == {"score", "select", "report"}
    pool = {**IDS, "pool": {**IDS["pool"], "sha256": "p2"}}
    assert _changed(RunOptions(), pool) == set(STAGES)


def test_finetune_first_makes_fit_depend_on_the_finetune_options_but_not_intervals():
    opts = RunOptions()
    opts.inputs.finetune_first = True
    assert _changed(opts, IDS, finetune={"epochs": 3.5}) == set(STAGES)
    # checkpoint and log intervals are NOT_FINGERPRINTED: they change no weight
    assert _changed(opts, IDS, finetune={"checkpoint_every": 7, "log_every": 3}) == set()


def test_stage_diff_names_exactly_what_changed():
    opts = RunOptions()
    new = dataclasses.replace(opts, factors=dataclasses.replace(opts.factors, k_in=16))
    new_ids = {**IDS, "pool": {"path": "/b/pool.jsonl", "sha256": "p2"}}
    old_config, config = opts.as_manifest(), new.as_manifest()
    assert stage_diff("fit", IDS, old_config, new_ids, config) == [
        "config.factors.k_in: 32 -> 16",
        "inputs.pool.sha256: 'p1' -> 'p2'",
    ]
    assert stage_diff("score", IDS, old_config, new_ids, config) == []  # not its own inputs


def test_diff_walks_nested_dicts_in_key_order():
    old = {"b": 1, "a": {"x": 1, "y": {"z": 2}}, "gone": 0}
    new = {"b": 1, "a": {"x": 3, "y": {"z": 2}}, "new": [1]}
    assert diff(old, new) == ["a.x: 1 -> 3", "gone: 0 -> None", "new: None -> [1]"]


def test_unprinted_fields_are_left_out():
    @dataclasses.dataclass
    class Cfg:
        lr: float = 1.0
        every: int = dataclasses.field(default=5, metadata={"help": "x", **NOT_FINGERPRINTED})

    assert fingerprint_fields(Cfg(every=9)) == {"lr": 1.0}


def test_file_identity_is_the_content(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"src": "x", "tgt": "y"}\n')
    shutil.copy(a, b)
    ia, ib = file_identity(str(a), "pool"), file_identity(str(b), "pool")
    assert ia["sha256"] == ib["sha256"] == sha256_file(a) and ia["path"] != ib["path"]
    with pytest.raises(UsageError, match="--pool .*missing.jsonl: file not found"):
        file_identity(str(tmp_path / "missing.jsonl"), "pool")
    with pytest.raises(UsageError, match="no seeds file given: pass --seeds FILE"):
        file_identity(None, "seeds")
    with pytest.raises(UsageError, match="is a folder; give a file of pairs"):
        file_identity(str(tmp_path), "pool")


def test_a_dataset_folder_is_identified_by_its_files(tmp_path):
    from gdig.data.hfdataset import write_dataset

    recs = [{"id": str(i), "src": "s", "tgt": f"t{i}"} for i in range(5)]
    write_dataset(tmp_path / "one", recs)
    write_dataset(tmp_path / "two", recs)
    write_dataset(tmp_path / "three", recs[:4])
    one, two, three = (file_identity(str(tmp_path / n), "pool") for n in ("one", "two", "three"))
    assert one["sha256"] == two["sha256"] != three["sha256"]


def test_model_identity_sees_the_weights_not_the_path(tmp_path):
    for name in ("m1", "m2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"hidden_size": 8}))
        (tmp_path / name / "model.bin").write_bytes(bytes(range(256)) * 100)
    assert model_identity(tmp_path / "m1") == model_identity(tmp_path / "m2")
    weights = tmp_path / "m2" / "model.bin"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 1  # a fine-tune changes weights, not their size
    weights.write_bytes(bytes(data))
    assert model_identity(tmp_path / "m1") != model_identity(tmp_path / "m2")


def test_sampled_sha256_hashes_small_files_whole_and_samples_large_ones(tmp_path):
    small = tmp_path / "small"
    small.write_bytes(b"abc" * 1000)
    assert sampled_sha256(small) == sha256_file(small)
    big = tmp_path / "big"
    size, block, blocks = 8 * (1 << 20), 1 << 16, 64
    data = bytearray(size)
    big.write_bytes(bytes(data))
    before = sampled_sha256(big)
    assert before != sha256_file(big)  # sampled, not whole
    # a byte inside the 10th sampled block is seen
    data[(size - block) * 10 // (blocks - 1) + 5] = 1
    big.write_bytes(bytes(data))
    assert sampled_sha256(big) != before
