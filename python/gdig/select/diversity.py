"""Diversity step (METHOD.md 5.2): k-means on gradient directions, then even resampling.

Features are the projected per-example gradients, L2-normalised so that clusters
group candidates by the *direction* they pull the model, not by gradient size
(long, noisy pairs have large gradients). When PCA is used the reduced vectors
are normalised again, so k-means still works on directions.

Memory stays bounded for large pools: k-means (and PCA) are trained on a seeded
sample of at most ``SAMPLE_PER_CLUSTER * K`` rows (FAISS's own default cap), and
every row is then assigned to its nearest centroid chunk by chunk.
"""

from __future__ import annotations

import math

import numpy as np

from gdig.io.errors import GdigError

from .source import ScoreSource

SAMPLE_PER_CLUSTER = 256  # FAISS's max_points_per_centroid default: more points barely help
PCA_TRAIN_ROWS = 65536  # enough to estimate a few hundred principal directions
AUTO_PCA_ABOVE = 1024  # auto mode reduces features larger than this ...
AUTO_PCA_DIM = 256  # ... to this size: k-means cost is linear in D, clusters barely change


def default_clusters(budget: int, n_points: int) -> int:
    """K = round(sqrt(budget)) clamped to [2, budget], and to the points available.

    sqrt(n) clusters of about sqrt(n) picks each: the clusters are many enough to
    cover distinct gradient directions, and each still has several picks, so a
    cluster's share is not decided by one sample.
    """
    k = min(max(round(math.sqrt(budget)), 2), budget)
    return max(1, min(k, n_points))


def resolve_pca_dim(pca_dim: int | None, dim: int) -> int:
    """Output size of the PCA, or 0 for none (see SelectConfig.pca_dim)."""
    if pca_dim is None:
        return AUTO_PCA_DIM if dim > AUTO_PCA_ABOVE else 0
    if pca_dim >= dim:
        return 0  # nothing to reduce
    return pca_dim


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    # A zero gradient has no direction; leave it at the origin rather than divide by 0.
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _faiss():
    import faiss  # deferred: only the clustering selectors need it

    return faiss


def _check_gpu(faiss) -> None:
    if faiss.get_num_gpus() < 1:
        raise GdigError(
            "--device cuda: the installed faiss sees no GPU (faiss-cpu, or no visible CUDA "
            "device); install a GPU build of faiss (pip install .[gpu]) or use --device cpu"
        )


def cluster_rows(
    source: ScoreSource,
    rows: np.ndarray,
    n_clusters: int,
    *,
    pca_dim: int | None = None,
    iters: int = 25,
    seed: int = 0,
    device: str = "cpu",
    chunk_rows: int = 65536,
) -> np.ndarray:
    """k-means labels (int32, in ``[0, n_clusters)``) of the given pool rows, in their order."""
    rows = np.asarray(rows, dtype=np.int64)
    m = len(rows)
    if m == 0:
        return np.empty(0, dtype=np.int32)
    if not 1 <= n_clusters <= m:
        raise ValueError(f"cannot make {n_clusters} clusters from {m} candidates")
    if n_clusters == 1:
        return np.zeros(m, dtype=np.int32)
    faiss = _faiss()
    gpu = device.startswith("cuda")
    if gpu:
        _check_gpu(faiss)
    rng = np.random.default_rng([seed, 1])  # own stream: independent of the resampling draws

    train_n = min(m, SAMPLE_PER_CLUSTER * n_clusters)
    train_rows = rows if train_n == m else np.sort(rng.choice(rows, train_n, replace=False))

    pca_rows = train_rows
    if len(pca_rows) > PCA_TRAIN_ROWS:  # a random subset: sorted rows would favour the start
        pca_rows = np.sort(rng.choice(pca_rows, PCA_TRAIN_ROWS, replace=False))
    # n points span at most n directions, and FAISS refuses to output more than that.
    out_dim = min(resolve_pca_dim(pca_dim, source.dim), len(pca_rows))
    pca = None
    if out_dim:
        pca = faiss.PCAMatrix(source.dim, out_dim)
        pca.train(_normalise(source.feature_rows(pca_rows)))

    def transform(chunk: np.ndarray) -> np.ndarray:
        x = _normalise(np.ascontiguousarray(source.feature_rows(chunk), dtype=np.float32))
        if pca is not None:
            x = _normalise(pca.apply(x))
        return np.ascontiguousarray(x, dtype=np.float32)

    train_x = np.concatenate(
        [transform(train_rows[i : i + chunk_rows]) for i in range(0, train_n, chunk_rows)]
    )
    km = faiss.Kmeans(
        train_x.shape[1],
        n_clusters,
        niter=iters,
        seed=seed & 0x7FFFFFFF,  # FAISS takes a C int
        verbose=False,
        gpu=gpu,
        min_points_per_centroid=1,  # small pools are fine; skip FAISS's warning
        max_points_per_centroid=SAMPLE_PER_CLUSTER,
    )
    km.train(train_x)
    if train_n == m:
        return km.assign(train_x)[1].astype(np.int32)
    labels = np.empty(m, dtype=np.int32)
    for i in range(0, m, chunk_rows):
        labels[i : i + chunk_rows] = km.assign(transform(rows[i : i + chunk_rows]))[1]
    return labels


def allocate(sizes: np.ndarray, n: int) -> np.ndarray:
    """How many to take from each cluster so that the total is ``min(n, sum(sizes))``.

    Water-filling: the fair share is about n/K; a cluster smaller than its share
    gives all it has and the shortfall is spread over the rest. Shares differ by
    at most one; the odd units go to the largest clusters (they have most to spare).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    alloc = np.zeros_like(sizes)
    remaining = int(min(n, sizes.sum()))
    order = np.argsort(sizes, kind="stable")
    order = order[sizes[order] > 0]
    left = len(order)
    i = 0
    while i < len(order) and sizes[order[i]] <= remaining // left:
        alloc[order[i]] = sizes[order[i]]
        remaining -= int(sizes[order[i]])
        left -= 1
        i += 1
    rest = order[i:]
    if len(rest):
        share, extra = divmod(remaining, len(rest))
        alloc[rest] = share
        largest_first = rest[np.argsort(-sizes[rest], kind="stable")]
        alloc[largest_first[:extra]] += 1
    return alloc


def resample(
    rows: np.ndarray,
    labels: np.ndarray,
    n: int,
    *,
    n_clusters: int,
    within: str,
    scores: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Pick ``min(n, len(rows))`` rows spread evenly over clusters (see :func:`allocate`).

    ``scores`` is indexed by pool row and orders a cluster for ``within='best'``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    sizes = np.bincount(labels, minlength=n_clusters)
    alloc = allocate(sizes, n)
    picked = []
    for c in range(n_clusters):
        if alloc[c] == 0:
            continue
        members = rows[labels == c]  # ascending pool order, so draws are reproducible
        if within == "random":
            picked.append(rng.choice(members, int(alloc[c]), replace=False))
        elif within == "best":
            order = np.lexsort((members, -scores[members]))  # best first, ties by row
            picked.append(members[order[: alloc[c]]])
        else:
            raise ValueError(f"unknown within_cluster {within!r}; expected random or best")
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)
