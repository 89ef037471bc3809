"""What select and report read per candidate from a store: the top seeds of each row
(GradStore.top_seeds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gdig.engine.score import batch_stats
from gdig.engine.store import GradStore, StoreWriter

N, S, TOP_K, SHARD = 23, 6, 3, 7


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> GradStore:
    """A store in the real format, 4 shards, benefits with many non-positive top values."""
    import torch

    root = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(3)
    writer = StoreWriter(
        root, run_key={"test": "poolrows"}, n=N, shard_size=SHARD,
        seed_ids=[f"seed-{j}" for j in range(S)], seed_features=np.eye(S, 4, dtype=np.float32),
        seed_norm=np.ones(S, np.float32), layers=[{"name": "x", "d_out": 4, "d_in": 1}],
        top_k=TOP_K, feature_dtype="float32",
    )  # fmt: skip
    for index, start in enumerate(range(0, N, SHARD)):
        m = min(SHARD, N - start)
        benefit = rng.standard_normal((m, S)).astype(np.float32) - 0.8
        stats = {k: v.numpy() for k, v in batch_stats(torch.from_numpy(benefit), TOP_K).items()}
        feats = rng.standard_normal((m, 4)).astype(np.float32)
        ids = [f"c{i}" for i in range(start, start + m)]
        writer.write_shard(
            index, start, ids,
            {"benefit": benefit, "features": feats, "cand_norm": np.linalg.norm(feats, axis=1),
             **stats},
        )  # fmt: skip
    writer.finish(-(-N // SHARD))
    return GradStore.open(root)


def expected(store: GradStore, row: int) -> list[str]:
    """Straight from the stored top-k: the seeds with a positive benefit, best first."""
    st = store.stats()
    idx, val = st["topk_idx"][row], st["topk_val"][row]
    return [store.seed_ids[int(j)] for j, v in zip(idx, val, strict=True) if v > 0]


def test_top_seeds_match_the_stored_top_k(store):
    top = store.top_seeds()
    assert len(top) == N and top.top.dtype == np.int16 and top.top.shape == (N, TOP_K)
    got = [top[i] for i in range(N)]
    assert got == [expected(store, i) for i in range(N)]
    assert any(len(g) == 0 for g in got) and any(len(g) == TOP_K for g in got)  # both cases


@pytest.mark.parametrize("order", ["kept", "shuffled"])
def test_top_seeds_of_a_subset_of_rows(store, order):
    rows = [r for r in range(N) if r % 4 != 1]  # as finite_source leaves NaN rows out
    if order == "shuffled":
        rows = list(np.random.default_rng(0).permutation(rows))
    top = store.top_seeds([store.ids[r] for r in rows])
    assert len(top) == len(rows)
    assert [top[k] for k in range(len(rows))] == [expected(store, r) for r in rows]


def test_scoring_top_k_orders_ties_and_nan_as_the_compiled_op_does():
    """batch_stats (the scoring pass) and score_stats (rescore) give the same top-k order on
    exact ties, signed zeros and NaN: NaN first, then larger values, ties to the lower seed."""
    import gdig_ext

    benefit = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # a zeroed (non-finite) row: all ties
            [1.0, 3.0, 3.0, -0.0, 0.0, 3.0],
            [2.0, float("nan"), 5.0, float("nan"), 5.0, -1.0],
        ]
    )
    got = batch_stats(benefit, 4)
    assert got["topk_idx"].tolist() == [[0, 1, 2, 3], [1, 2, 5, 0], [1, 3, 2, 4]]
    # The compiled op's order on the rows without NaN (seeds = identity, so its scores are
    # the rows themselves; a NaN would spread over its whole row in the product).
    *_, val, idx = gdig_ext.score_stats(benefit[:2], torch.eye(6), 4)
    assert torch.equal(idx.long(), got["topk_idx"][:2].long())
    assert torch.equal(val, got["topk_val"][:2])
