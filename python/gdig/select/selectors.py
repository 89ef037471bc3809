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

from gdig.data.idlist import as_idlist

from .config import SelectConfig
from .diversity import cluster_rows, default_clusters, resample
from .quality import quality_stats
from .rowsubset import RowSubset
from .selection import Selection, ShortfallError
from .source import ScoreSource

log = logging.getLogger(__name__)

FILTERED = ("gdig", "quality")  # selectors that only draw from candidates passing quality


def _top_by_mean(rows: np.ndarray, mean: np.ndarray, k: int) -> np.ndarray:
    order = np.lexsort((rows, -mean[rows]))  # highest mean first, ties by row: deterministic
    return rows[order[:k]]


def _shortfall_message(cfg: SelectConfig, available: int, n: int, g: int, need: int) -> str:
    if cfg.selector in FILTERED:
        return (
            f"only {available} of {n} candidates pass the quality filter (benefit > 0 for "
            f">= {need} of {g} seed groups, --tau {cfg.tau}, --scoring {cfg.scoring}) but "
            f"--budget is {cfg.budget}; lower --tau, raise --seed-group, lower --budget, or "
            "pass --on-short fill to top up by mean benefit (scores.csv shows each "
            "candidate's n_pos)"
        )
    return (
        f"the pool has {n} candidates but --budget is {cfg.budget}; lower --budget or pass "
        "--on-short fill to take the whole pool"
    )


def finite_source(source: ScoreSource) -> ScoreSource:
    """``source`` less the rows whose loss or gradient was NaN/Inf (their stored numbers
    are zeros, not scores); sources that record none are returned as they are."""
    bad = set(getattr(source, "nonfinite_ids", ()))
    if not bad:
        return source
    keep = np.fromiter((r for r, i in enumerate(source.ids) if i not in bad), dtype=np.int64)
    if len(keep) == 0:
        raise ShortfallError(
            "every candidate's loss or gradient is NaN/Inf: nothing can be selected",
            available=0,
            budget=0,
            pool_size=source.n,
        )
    return RowSubset(source, keep)


def select(
    source: ScoreSource, cfg: SelectConfig, *, device: str = "cpu", chunk_rows: int = 65536
) -> Selection:
    """Choose ``cfg.budget`` pool rows with ``cfg.selector``; deterministic for a fixed seed.

    Rows whose scores were not finite (a store lists them) are left out first: the
    selection's rows and ids are those of :func:`finite_source`. ``device`` ('cpu',
    'cuda', 'cuda:N') is where k-means runs.

    Benefits are streamed in blocks of ``chunk_rows`` rows, so memory is O(N) per
    statistic whatever the number of seeds.
    """
    source = finite_source(source)
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

    shortfall = None
    if len(eligible) < cfg.budget:
        msg = _shortfall_message(cfg, len(eligible), n, stats.n_groups, stats.need)
        if cfg.on_short == "stop":
            none = np.zeros(n, dtype=bool)
            unselected = _selection(source, cfg, stats, np.full(n, -1, np.int32), none, none)
            raise ShortfallError(
                msg,
                available=len(eligible),
                budget=cfg.budget,
                pool_size=n,
                selection=unselected,
            )
        shortfall = msg

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
                device=device,
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
    if shortfall is not None:  # counted after the fact: the note gives the true numbers
        head = shortfall.split("; lower")[0]
        if int(filled.sum()):
            head += f"; {int(filled.sum())} filled by mean benefit (--on-short fill)"
        if int(selected.sum()) < cfg.budget:
            head += f"; the whole pool ({n}) is selected"
        log.warning("%s", head)
        notes.append(f"shortfall: {head}")
    timings["resample_s"] = time.perf_counter() - t

    return _selection(source, cfg, stats, cluster, selected, filled, sizes_before, timings, notes)


def _selection(
    source: ScoreSource,
    cfg: SelectConfig,
    stats,
    cluster: np.ndarray,
    selected: np.ndarray,
    filled: np.ndarray,
    sizes_before: np.ndarray | None = None,
    timings: dict[str, float] | None = None,
    notes: list[str] | None = None,
) -> Selection:
    sizes_before = np.empty(0, dtype=np.int64) if sizes_before is None else sizes_before
    in_cluster = cluster[selected]
    sizes_after = np.bincount(in_cluster[in_cluster >= 0], minlength=len(sizes_before))
    return Selection(
        ids=as_idlist(source.ids),
        n_pos=stats.n_pos,
        n_seeds=stats.n_groups,
        need=stats.need,
        benefit_mean=stats.mean,
        benefit_min=stats.min,
        passed_quality=stats.passed,
        cluster=cluster,
        selected=selected,
        filled=filled,
        selected_rows=np.flatnonzero(selected).astype(np.int64),
        cluster_sizes_before=sizes_before,
        cluster_sizes_after=sizes_after.astype(np.int64),
        config=cfg,
        timings=timings or {},
        notes=notes or [],
    )
