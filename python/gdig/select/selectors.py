"""One entry point for G-DIG selection and its baselines: :func:`select` runs the selector
named in the config from the table in :mod:`gdig.select.choosers` (``SELECTORS``).

Quality statistics are computed for every selector, so that reports and noise
metrics can compare them on the same footing.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from gdig.data.idlist import as_idlist

from .choosers import SELECTORS, Context, require_rules, top_by
from .config import SelectConfig
from .quality import quality_stats
from .rowsubset import RowSubset
from .selection import Selection, ShortfallError
from .source import ScoreSource

log = logging.getLogger("gdig")


def _shortfall_message(cfg: SelectConfig, available: int, n: int, g: int, need: int) -> str:
    eligible = SELECTORS[cfg.selector].eligible
    if eligible == "quality":
        return (
            f"only {available} of {n} candidates pass the quality filter (benefit > 0 for "
            f">= {need} of {g} seed groups, --tau {cfg.tau}, --scoring {cfg.scoring}) but "
            f"--budget is {cfg.budget}; lower --tau, raise --seed-group, lower --budget, or "
            "pass --on-short fill to top up by mean benefit (scores.csv shows each "
            "candidate's n_pos)"
        )
    if eligible == "rules":
        return (
            f"only {available} of {n} candidates pass the cleaning rules but --budget is "
            f"{cfg.budget}; lower --budget, loosen the --rule-* thresholds, or pass "
            "--on-short fill to top up by mean benefit"
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
    source: ScoreSource,
    cfg: SelectConfig,
    *,
    device: str = "cpu",
    chunk_rows: int = 65536,
    rule_ok: np.ndarray | None = None,
) -> Selection:
    """Choose ``cfg.budget`` pool rows with ``cfg.selector``; deterministic for a fixed seed.

    Rows whose scores were not finite (a store lists them) are left out first: the
    selection's rows and ids are those of :func:`finite_source`. ``device`` ('cpu',
    'cuda', 'cuda:N') is where k-means runs. ``rule_ok`` (bool per source row) says which
    candidates pass the cleaning rules; the ``rules`` selector needs it.

    Benefits are streamed in blocks of ``chunk_rows`` rows, so memory is O(N) per
    statistic whatever the number of seeds.
    """
    # A fractional budget is a share of the pool as scored (after any prefilter).
    cfg = dataclasses.replace(cfg, budget=cfg.budget_of(source.n))
    spec = SELECTORS[cfg.selector]
    if spec.eligible == "rules":
        rule_ok = np.asarray(require_rules(rule_ok, cfg.selector), dtype=bool)
        if len(rule_ok) != source.n:
            raise ValueError(f"rule_ok has {len(rule_ok)} entries for {source.n} candidates")
    finite = finite_source(source)
    if rule_ok is not None and isinstance(finite, RowSubset):
        rule_ok = rule_ok[finite.rows]
    source = finite
    n = source.n
    if len(source.ids) != n:
        raise ValueError(f"{type(source).__name__}.ids has {len(source.ids)} entries, n is {n}")
    timings: dict[str, float] = {}
    notes: list[str] = []
    rng = np.random.default_rng(cfg.random_seed)

    t = time.perf_counter()
    stats = quality_stats(
        source,
        scoring=cfg.scoring,
        seed_group=cfg.seed_group,
        tau=cfg.tau,
        chunk_rows=chunk_rows,
    )
    timings["quality_s"] = time.perf_counter() - t
    if spec.eligible == "quality":
        eligible = np.flatnonzero(stats.passed)
    elif spec.eligible == "rules":
        eligible = np.flatnonzero(rule_ok)
    else:
        eligible = np.arange(n)

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
    t = time.perf_counter()
    ctx = Context(
        source=source,
        cfg=cfg,
        stats=stats,
        eligible=eligible,
        take=min(cfg.budget, len(eligible)),
        rng=rng,
        device=device,
        chunk_rows=chunk_rows,
        notes=notes,
        timings=timings,
    )
    pick = spec.choose(ctx)
    sizes_before = np.empty(0, dtype=np.int64)
    if pick.cluster_of_eligible is not None:
        cluster[eligible] = pick.cluster_of_eligible
        sizes_before = pick.sizes_before
        timings["cluster_s"] = time.perf_counter() - t
        t = time.perf_counter()
    selected = np.zeros(n, dtype=bool)
    selected[pick.rows] = True

    # Top up a shortfall of a filtering selector from the candidates it left out, best
    # mean benefit first.
    filled = np.zeros(n, dtype=bool)
    missing = cfg.budget - int(selected.sum())
    if missing > 0 and spec.eligible != "all":
        extra = top_by(np.flatnonzero(~selected), stats.mean, missing)
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
