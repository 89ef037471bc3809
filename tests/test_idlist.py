"""IdList: compact ids that read like a list of str."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from gdig.data.idlist import IdList

IDS = ["p0", "zh-1", "ünïcødé-2", "", "表情🙂", "x" * 300]


def test_reads_like_the_list_it_holds():
    ids = IdList.of(IDS)
    assert len(ids) == len(IDS) and list(ids) == IDS
    assert [ids[i] for i in range(len(IDS))] == IDS and ids[-1] == IDS[-1]
    assert ids == IDS and ids == IdList.of(IDS) and ids != IDS[:-1] and ids != ["nope"] * 6
    assert list(ids[1:4]) == IDS[1:4] and list(ids[::-2]) == IDS[::-2]
    assert list(ids.take(np.array([5, 0, 0]))) == [IDS[5], IDS[0], IDS[0]]
    assert ids.index("表情🙂") == 4 and "zh-1" in ids and "zh-9" not in ids
    with pytest.raises(IndexError):
        ids[len(IDS)]
    assert list(pickle.loads(pickle.dumps(ids))) == IDS  # crosses torchrun's share()


def test_is_built_incrementally_then_frozen():
    ids = IdList()
    ids.extend(IDS[:2])
    ids.extend(IDS[2:])
    assert ids.freeze() == IDS
    with pytest.raises(TypeError):
        ids.extend(["more"])
    assert len(IdList.of([])) == 0 and list(IdList.of([])) == []


def test_is_compact():
    n = 100_000
    ids = IdList.of(f"pair-{i:07d}" for i in range(n))
    held = len(ids._blob) + np.asarray(ids._ends).nbytes
    assert held / n <= 8 + len("pair-0000000")  # text + one int64 offset per id


def test_round_trips_through_two_arrays():
    blob, ends = IdList.of(IDS).to_arrays()
    assert blob.dtype == np.uint8 and ends.dtype == np.int64
    assert IdList.from_arrays(blob, ends) == IDS
    with pytest.raises(ValueError, match="offsets"):
        IdList.from_arrays(blob, ends[:-1] if len(ends) > 1 else ends + 1)
