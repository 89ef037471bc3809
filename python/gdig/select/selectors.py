"""One entry point for G-DIG selection and its baselines.

- ``gdig``: quality filter (n_pos / G >= tau), then k-means on the survivors'
  gradient directions and even resampling across clusters (METHOD.md 5).
- ``quality``: the same filter, then the top ``budget`` by mean benefit.
- ``diversity``: k-means and resampling on the whole pool, no filter.
- ``random``: uniform over the whole pool.

Quality statistics are computed for every selector, so that reports and noise
metrics can compare them on the same footing.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .config import SelectConfig
from .diversity import cluster_rows, default_clusters, resample
from .quality import quality_stats
from .selection import Selection, ShortfallError
from .source import ScoreSource

log = logging.getLogger(__name__)

FILTERED = ("gdig", "quality")  # selectors that only draw from candidates passing quality


def _top_by_mean(rows: np.ndarray, mean: np.ndarray, k: int) -> np.ndarray:
    order = np.lexsort((rows, -mean[rows]))  # highest mean first, ties by row: deterministic
    return rows[order[:k]]


def _shortfall_message(cfg: SelectConfig, available: int, n: int, g: int, need: int) -> str:
    if cfg.selector in FILTERED:
        what = (
            f"only {available} of {n} candidates pass the quality filter (benefit > 0 for "
            f">= {need} of {g} seed groups, tau={cfg.tau}, scoring={cfg.scoring}) but the "
            f"budget is {cfg.budget}"
        )
        if cfg.on_short == "fill":
            return f"{what}; the other {cfg.budget - available} are filled by mean benefit"
        return (
            f"{what}; lower tau, raise seed_group, lower the budget, or set on_short='fill' "
            f"to top up by mean benefit"
        )
    what = f"the pool has {n} candidates but the budget is {cfg.budget}"
    if cfg.on_short == "fill":
        return f"{what}; the whole pool is selected"
    return f"{what}; lower the budget or set on_short='fill' to take the whole pool"


def select(source: ScoreSource, cfg: SelectConfig, *, chunk_rows: int = 65536) -> Selection:
    """Choose ``cfg.budget`` pool rows with ``cfg.selector``; deterministic for a fixed seed.

    Benefits are streamed in blocks of ``chunk_rows`` rows, so memory is O(N) per
    statistic whatever the number of seeds.
    """
    n = source.n
    if len(source.ids) != n:
        raise ValueError(f"{type(source).__name__}.ids has {len(source.ids)} entries, n is {n}")
    timings: dict[str, float] = {}
    notes: list[str] = []
    rng = np.random.default_rng(cfg.seed)

    t = time.perf_counter()
    stats = quality_stats(
        source,
        scoring=cfg.scoring,
        seed_group=cfg.seed_group,
        tau=cfg.tau,
        chunk_rows=chunk_rows,
    )
    timings["quality_s"] = time.perf_counter() - t
    passed = stats.passed
    eligible = np.flatnonzero(passed) if cfg.selector in FILTERED else np.arange(n)

    if len(eligible) < cfg.budget:
        msg = _shortfall_message(cfg, len(eligible), n, stats.n_groups, stats.need)
        if cfg.on_short == "stop":
            raise ShortfallError(msg, available=len(eligible), budget=cfg.budget, pool_size=n)
        log.warning(msg)
        notes.append(f"shortfall: {msg}")

    cluster = np.full(n, -1, dtype=np.int32)
    sizes_before = np.empty(0, dtype=np.int64)
    take = min(cfg.budget, len(eligible))
    t = time.perf_counter()
    if cfg.selector == "random":
        chosen = rng.choice(eligible, take, replace=False)
    elif cfg.selector == "quality":
        chosen = _top_by_mean(eligible, stats.mean, take)
    else:
        k = (
            cfg.clusters
            if cfg.clusters is not None
            else default_clusters(cfg.budget, len(eligible))
        )
        k = min(k, len(eligible))
        if k < 1:
            chosen = np.empty(0, dtype=np.int64)
        else:
            if cfg.clusters is not None and k < cfg.clusters:
                notes.append(f"clusters lowered from {cfg.clusters} to {k}: only {k} candidates")
            labels = cluster_rows(
                source,
                eligible,
                k,
                pca_dim=cfg.pca_dim,
                iters=cfg.kmeans_iters,
                seed=cfg.seed,
                device=cfg.device,
                chunk_rows=chunk_rows,
            )
            timings["cluster_s"] = time.perf_counter() - t
            t = time.perf_counter()
            cluster[eligible] = labels
            sizes_before = np.bincount(labels, minlength=k).astype(np.int64)
            chosen = resample(
                eligible,
                labels,
                take,
                n_clusters=k,
                within=cfg.within_cluster,
                scores=stats.mean,
                rng=rng,
            )
    selected = np.zeros(n, dtype=bool)
    selected[chosen] = True

    # Top up a quality shortfall from the candidates that failed, best mean benefit first.
    filled = np.zeros(n, dtype=bool)
    missing = cfg.budget - int(selected.sum())
    if missing > 0 and cfg.selector in FILTERED:
        extra = _top_by_mean(np.flatnonzero(~selected), stats.mean, missing)
        filled[extra] = True
        selected[extra] = True
        if len(extra) < missing:
            notes.append(f"shortfall: the whole pool ({n}) is selected, budget {cfg.budget}")
    timings["resample_s"] = time.perf_counter() - t

    in_cluster = cluster[selected]
    sizes_after = np.bincount(in_cluster[in_cluster >= 0], minlength=len(sizes_before))
    return Selection(
        ids=list(source.ids),
        n_pos=stats.n_pos,
        n_seeds=stats.n_groups,
        need=stats.need,
        benefit_mean=stats.mean,
        benefit_min=stats.min,
        passed_quality=passed,
        cluster=cluster,
        selected=selected,
        filled=filled,
        selected_rows=np.flatnonzero(selected).astype(np.int64),
        cluster_sizes_before=sizes_before,
        cluster_sizes_after=sizes_after.astype(np.int64),
        config=cfg,
        timings=timings,
        notes=notes,
    )
