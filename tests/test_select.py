"""Selection: quality statistics against direct numpy, selector invariants, shortfalls."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gdig.select import (
    ArraySource,
    SelectConfig,
    Selection,
    ShortfallError,
    quality_stats,
    select,
)
from gdig.select.diversity import allocate, cluster_rows, default_clusters, resolve_pca_dim

SELECTORS = ("gdig", "quality", "diversity", "random")


def make_source(n: int = 240, s: int = 10, d: int = 24, seed: int = 0, shift: float = 0.8):
    """Candidates in a few gradient directions; most lean towards the seeds, some away."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((4, d))
    feats = centers[rng.integers(0, 4, n)] + 0.5 * rng.standard_normal((n, d))
    toward = centers.mean(axis=0)
    seeds = toward + 0.4 * rng.standard_normal((s, d))
    feats += shift * toward
    feats[rng.random(n) < 0.2] *= -1  # "noise": pulls against the seeds
    return ArraySource(
        feats.astype(np.float32),
        seed_grads=seeds.astype(np.float32),
        ids=[f"p{i}" for i in range(n)],
    )


def direct_scores(src: ArraySource, scoring: str, group: int) -> np.ndarray:
    """The whole [N, G] matrix of group scores, computed the obvious way in float64."""
    b = src.feature_rows(np.arange(src.n)).astype(np.float64) @ src._seed_grads.T.astype(np.float64)
    if scoring == "zscore":
        b = (b - b.mean(axis=0)) / b.std(axis=0)
    elif scoring == "cosine":
        b = b / np.outer(src.cand_norm, src.seed_norm)
    groups = [b[:, i : i + group].mean(axis=1) for i in range(0, b.shape[1], group)]
    return np.stack(groups, axis=1)


@pytest.mark.parametrize("scoring", ["raw", "zscore", "cosine"])
@pytest.mark.parametrize("group", [1, 3])
def test_quality_stats_match_numpy(scoring: str, group: int) -> None:
    src = make_source()
    tau = 0.7
    stats = quality_stats(src, scoring=scoring, seed_group=group, tau=tau, chunk_rows=37)
    want = direct_scores(src, scoring, group)
    g = math.ceil(src.n_seeds / group)
    assert stats.n_groups == g == want.shape[1]
    assert stats.need == math.ceil(tau * g)
    np.testing.assert_allclose(stats.mean, want.mean(axis=1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stats.min, want.min(axis=1), rtol=1e-4, atol=1e-4)
    # n_pos may differ only where a score sits within float error of 0
    near_zero = (np.abs(want) < 1e-4).any(axis=1)
    np.testing.assert_array_equal(stats.n_pos[~near_zero], (want > 0).sum(axis=1)[~near_zero])
    assert 0 < stats.passed.sum() < src.n  # the fixture really exercises the filter


def test_seed_groups_average_consecutive_seeds() -> None:
    benefits = np.array([[1.0, -3.0, 5.0, 1.0, -1.0], [-1.0, 2.0, -1.0, -1.0, 2.0]], np.float32)
    src = ArraySource(np.zeros((2, 3), np.float32), benefits=benefits)
    stats = quality_stats(src, seed_group=2)
    # groups: (s0,s1), (s2,s3), (s4,) -> row 0: -1, 3, -1 ; row 1: 0.5, -1, 2
    assert stats.n_groups == 3
    np.testing.assert_array_equal(stats.n_pos, [1, 2])
    np.testing.assert_allclose(stats.mean, [1 / 3, 1.5 / 3])
    np.testing.assert_allclose(stats.min, [-1.0, -1.0])


def test_zero_norm_cosine_is_zero_not_nan() -> None:
    feats = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)
    src = ArraySource(feats, seed_grads=np.array([[1.0, 1.0]], np.float32))
    stats = quality_stats(src, scoring="cosine", tau=1.0)
    np.testing.assert_allclose(stats.mean, [0.0, 1 / math.sqrt(2)], rtol=1e-6)
    np.testing.assert_array_equal(stats.passed, [False, True])


@pytest.mark.parametrize("selector", SELECTORS)
def test_budget_respected_without_duplicates(selector: str) -> None:
    src = make_source()
    sel = select(src, SelectConfig(budget=40, selector=selector, tau=0.8, clusters=5))
    assert len(sel.selected_rows) == 40
    assert len(np.unique(sel.selected_rows)) == 40
    np.testing.assert_array_equal(sel.selected_rows, np.flatnonzero(sel.selected))
    assert not sel.filled.any()
    if selector in ("gdig", "quality"):
        assert sel.passed_quality[sel.selected].all()
    if selector in ("gdig", "diversity"):
        assert sel.cluster_sizes_after.sum() == 40
        np.testing.assert_array_equal(
            sel.cluster_sizes_before, np.bincount(sel.cluster[sel.cluster >= 0], minlength=5)
        )
    else:
        assert (sel.cluster == -1).all() and sel.n_clusters == 0


@pytest.mark.parametrize("selector", ["gdig", "diversity"])
def test_every_cluster_represented_and_even(selector: str) -> None:
    src = make_source()
    sel = select(src, SelectConfig(budget=30, selector=selector, tau=0.8, clusters=6))
    before, after = sel.cluster_sizes_before, sel.cluster_sizes_after
    assert sel.n_clusters == 6
    assert (after[before > 0] > 0).all()
    # clusters not exhausted get an even share, within one
    open_ = after < before
    if open_.sum() > 1:
        assert after[open_].max() - after[open_].min() <= 1
    assert (after <= before).all()
    # only clustered (eligible) candidates get a label, and every selected one has one
    assert (sel.cluster[sel.selected] >= 0).all()
    if selector == "gdig":
        assert (sel.cluster[~sel.passed_quality] == -1).all()


@pytest.mark.parametrize("selector", SELECTORS)
def test_deterministic_for_fixed_seed(selector: str) -> None:
    src = make_source()
    cfg = SelectConfig(budget=25, selector=selector, tau=0.8, random_seed=7)
    a, b = select(src, cfg), select(src, cfg)
    np.testing.assert_array_equal(a.selected_rows, b.selected_rows)
    np.testing.assert_array_equal(a.cluster, b.cluster)


def test_other_seed_changes_random_draws() -> None:
    src = make_source()
    a = select(src, SelectConfig(budget=25, selector="random", random_seed=1))
    b = select(src, SelectConfig(budget=25, selector="random", random_seed=2))
    assert not np.array_equal(a.selected_rows, b.selected_rows)


@pytest.mark.parametrize("selector", SELECTORS)
@pytest.mark.parametrize("scoring", ["raw", "zscore"])
def test_streaming_chunks_match_one_block(selector: str, scoring: str) -> None:
    src = make_source()
    cfg = SelectConfig(budget=30, selector=selector, tau=0.8, scoring=scoring, clusters=4)
    whole = select(src, cfg, chunk_rows=src.n)
    small = select(src, cfg, chunk_rows=7)
    np.testing.assert_array_equal(whole.selected_rows, small.selected_rows)
    np.testing.assert_array_equal(whole.n_pos, small.n_pos)
    np.testing.assert_allclose(whole.benefit_mean, small.benefit_mean, rtol=1e-5, atol=1e-6)


def test_quality_selector_takes_top_mean_among_passed() -> None:
    src = make_source()
    sel = select(src, SelectConfig(budget=20, selector="quality", tau=0.8))
    scores = direct_scores(src, "raw", 1)
    passed = (scores > 0).sum(axis=1) >= math.ceil(0.8 * src.n_seeds)
    mean = np.where(passed, scores.mean(axis=1), -np.inf)
    np.testing.assert_array_equal(sel.selected_rows, np.sort(np.argsort(-mean)[:20]))


def test_shortfall_stop_raises_with_numbers() -> None:
    src = make_source()
    n_pass = int(quality_stats(src, tau=1.0).passed.sum())
    budget = n_pass + 5
    with pytest.raises(ShortfallError) as err:
        select(src, SelectConfig(budget=budget, selector="gdig", tau=1.0, on_short="stop"))
    assert err.value.available == n_pass and err.value.budget == budget
    assert str(n_pass) in str(err.value) and str(budget) in str(err.value)
    with pytest.raises(ShortfallError, match="pool has 240"):
        select(src, SelectConfig(budget=500, selector="random", on_short="stop"))


@pytest.mark.parametrize("selector", ["gdig", "quality"])
def test_shortfall_fill_tops_up_by_mean_benefit(selector: str) -> None:
    src = make_source()
    stats = quality_stats(src, tau=1.0)
    n_pass = int(stats.passed.sum())
    budget = n_pass + 12
    sel = select(src, SelectConfig(budget=budget, selector=selector, tau=1.0, on_short="fill"))
    assert sel.selected.sum() == budget
    assert sel.selected[stats.passed].all()  # every passing candidate is in
    assert sel.filled.sum() == 12 and not (sel.filled & sel.passed_quality).any()
    failed = np.flatnonzero(~stats.passed)
    best_failed = failed[np.argsort(-stats.mean[failed], kind="stable")[:12]]
    np.testing.assert_array_equal(np.flatnonzero(sel.filled), np.sort(best_failed))
    assert any("shortfall" in note for note in sel.notes)


def test_within_cluster_best_takes_highest_mean() -> None:
    src = make_source()
    sel = select(src, SelectConfig(budget=20, selector="diversity", within_cluster="best"))
    for c in range(sel.n_clusters):
        members = np.flatnonzero(sel.cluster == c)
        chosen = members[sel.selected[members]]
        rest = members[~sel.selected[members]]
        if len(chosen) and len(rest):
            assert sel.benefit_mean[chosen].min() >= sel.benefit_mean[rest].max()


@pytest.mark.parametrize(
    ("sizes", "n", "want"),
    [
        ([3, 100, 100], 10, [3, 4, 3]),  # small cluster gives all, odd unit to the largest tie
        ([1, 1, 50], 9, [1, 1, 7]),
        ([5, 5, 5], 9, [3, 3, 3]),
        ([2, 0, 3], 10, [2, 0, 3]),  # budget above the pool: everything
        ([10, 20, 30], 7, [2, 2, 3]),
    ],
)
def test_allocate_water_fills(sizes: list[int], n: int, want: list[int]) -> None:
    got = allocate(np.array(sizes), n)
    np.testing.assert_array_equal(got, want)


def test_allocate_invariants_random() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        sizes = rng.integers(0, 30, rng.integers(1, 12))
        n = int(rng.integers(1, 200))
        alloc = allocate(sizes, n)
        assert alloc.sum() == min(n, sizes.sum())
        assert (alloc <= sizes).all()
        unfilled = alloc < sizes
        if unfilled.any():
            # every unfilled cluster gets at least as much as any other cluster, minus one
            assert alloc[unfilled].min() >= alloc.max() - 1


def test_default_clusters_rule() -> None:
    assert default_clusters(100, 10_000) == 10
    assert default_clusters(1, 10_000) == 1
    assert default_clusters(3, 10_000) == 2
    assert default_clusters(10_000, 50) == 50
    assert resolve_pca_dim(None, 4096) == 256 and resolve_pca_dim(None, 512) == 0
    assert resolve_pca_dim(0, 4096) == 0 and resolve_pca_dim(64, 48) == 0


def test_sampled_kmeans_with_pca_streams_consistently() -> None:
    # 700 rows > 256 * 2 forces the sampled-training path, pca_dim the PCA path
    rng = np.random.default_rng(5)
    feats = np.concatenate([rng.normal(3, 1, (350, 40)), rng.normal(-3, 1, (350, 40))])
    src = ArraySource(feats.astype(np.float32), benefits=np.ones((700, 2), np.float32))
    rows = np.arange(700)
    a = cluster_rows(src, rows, 2, pca_dim=8, seed=1, chunk_rows=64)
    b = cluster_rows(src, rows, 2, pca_dim=8, seed=1, chunk_rows=700)
    np.testing.assert_array_equal(a, b)
    # the two blobs point in opposite directions: each must be one cluster
    assert len(set(a[:350])) == 1 and len(set(a[350:])) == 1 and a[0] != a[-1]


def test_cuda_without_gpu_faiss_is_a_clear_error() -> None:
    import faiss

    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is visible to faiss")
    from gdig.io.errors import GdigError

    cfg = SelectConfig(budget=10, selector="diversity")
    for device in ("cuda", "cuda:1"):
        with pytest.raises(GdigError, match="--device cuda: the installed faiss sees no GPU"):
            select(make_source(), cfg, device=device)


def test_bad_source_blocks_are_caught() -> None:
    class Skipping(ArraySource):
        def benefit_blocks(self, chunk_rows: int = 65536):
            for start, block in super().benefit_blocks(chunk_rows):
                if start != chunk_rows:  # drop the second block
                    yield start, block

    src = make_source()
    bad = Skipping(src.feature_rows(np.arange(src.n)), seed_grads=src._seed_grads)
    with pytest.raises(ValueError, match="expected row 50"):
        select(bad, SelectConfig(budget=5, selector="random"), chunk_rows=50)


@pytest.mark.parametrize(
    ("field", "value"),
    [("selector", "best"), ("tau", 1.5), ("budget", 0), ("scoring", "l2"), ("seed_group", 0)],
)
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match="--" + field.replace("_", "-")):
        SelectConfig(**{field: value})


def test_selection_save_load_roundtrip(tmp_path) -> None:
    sel = select(make_source(), SelectConfig(budget=15, clusters=3, tau=0.8))
    path = tmp_path / "selection.npz"
    sel.save(path)
    back = Selection.load(path)
    assert back.ids == sel.ids and back.config == sel.config and back.need == sel.need
    for name in Selection._ARRAYS:
        np.testing.assert_array_equal(getattr(back, name), getattr(sel, name))
    # The ids are kept as text + offsets, not one Python string each; files written before
    # (ids in the JSON) still load.
    with np.load(path) as z:
        assert "id_blob" in z.files and "ids" not in json.loads(str(z["meta"]))
        old = {k: z[k] for k in z.files if k not in ("id_blob", "id_ends")}
    meta = json.loads(str(old["meta"]))
    old["meta"] = np.array(json.dumps({**meta, "ids": list(sel.ids)}))
    np.savez(tmp_path / "old.npz", **old)
    assert list(Selection.load(tmp_path / "old.npz").ids) == list(sel.ids)


def test_small_pools_lower_k_and_budget_one() -> None:
    src = make_source(n=30)
    sel = select(src, SelectConfig(budget=5, selector="gdig", tau=0.8, clusters=50))
    assert sel.n_clusters == int(sel.passed_quality.sum()) < 50
    assert any("clusters lowered" in note for note in sel.notes)
    one = select(src, SelectConfig(budget=1, selector="diversity"))
    assert one.selected.sum() == 1 and one.n_clusters == 1


def test_kmeans_labels_do_not_depend_on_faiss_threads() -> None:
    import faiss

    src = make_source(n=600, d=32)
    before = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(1)
        one = cluster_rows(src, np.arange(src.n), 5, seed=3)
        faiss.omp_set_num_threads(2)
        two = cluster_rows(src, np.arange(src.n), 5, seed=3)
    finally:
        faiss.omp_set_num_threads(before)
    np.testing.assert_array_equal(one, two)


def test_select_leaves_out_rows_marked_nonfinite() -> None:
    """A source that lists non-finite candidates (the store does) never has them selected,
    whatever their (zeroed) numbers; the selection's ids are the finite ones."""
    src = make_source()
    bad = ["p0", "p5", "p17"]
    src.nonfinite_ids = bad
    for selector in ("gdig", "quality", "diversity", "random"):
        sel = select(src, SelectConfig(budget=200, selector=selector, tau=0.0, on_short="fill"))
        assert sel.n == src.n - len(bad) and not set(bad) & set(sel.ids)
        assert int(sel.selected.sum()) == 200
