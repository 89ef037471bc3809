"""The selectors (``--selector``): one table, name -> how a budget is chosen.

Each :class:`Selector` says which rows it may draw from (``eligible``: every candidate,
those passing the quality filter, or those passing the cleaning rules) and how it picks
``take`` of them. A new selector is one function plus one :class:`Selector` in
:data:`SELECTORS` (or :func:`register_selector`): the CLI's choices, the config check, the
report and the quality benchmark iterate this table.

- ``gdig``: quality filter (n_pos / G >= tau), then k-means on the survivors' gradient
  directions and even resampling across clusters (METHOD.md §5).
- ``quality``: the same filter, then the top ``budget`` by mean benefit.
- ``diversity``: k-means and resampling on the whole pool, no filter.
- ``random``: uniform over the whole pool.
- ``rules``: rule-based cleaning (OpusFilter's filters, ``gdig.data.rules``), then uniform
  over the pairs that pass.
- ``loss``: the lowest mean target-token loss under the scoring model.
- ``less``: LESS-style similarity without a Hessian: the highest mean (or max) cosine
  between a candidate's projected gradient and the seeds' raw projected gradients.
- ``coverage``: greedy maximisation of how well the set covers the seeds' positive
  benefits, with diminishing returns per seed (METHOD.md §5.5).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gdig.io.errors import UsageError

from .diversity import cluster_rows, default_clusters, resample
from .quality import QualityStats, checked_blocks, scored_block, seed_moments
from .scorings import SCORINGS
from .source import ScoreSource

if TYPE_CHECKING:
    from .config import SelectConfig

ELIGIBLE = ("all", "quality", "rules")


@dataclass
class Context:
    """What a selector works from. ``eligible`` are the rows it may choose (ascending)."""

    source: ScoreSource
    cfg: SelectConfig
    stats: QualityStats
    eligible: np.ndarray
    take: int  # how many to choose: min(budget, len(eligible))
    rng: np.random.Generator
    device: str = "cpu"
    chunk_rows: int = 65536
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Pick:
    """What a selector chose: ``rows`` (pool rows), and for the clustering selectors each
    eligible row's cluster (``cluster[eligible]``) and the cluster sizes before resampling."""

    rows: np.ndarray
    cluster_of_eligible: np.ndarray | None = None
    sizes_before: np.ndarray | None = None


@dataclass(frozen=True)
class Selector:
    name: str
    help: str
    choose: Callable[[Context], Pick]
    eligible: str = "all"  # of ELIGIBLE
    ranked: bool = False  # selected.jsonl lists the choice best first (by mean benefit)

    def __post_init__(self) -> None:
        if self.eligible not in ELIGIBLE:
            raise ValueError(f"Selector {self.name}: eligible must be one of {ELIGIBLE}")


def top_by(rows: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` rows of highest ``score`` (indexed by pool row), ties by row: deterministic."""
    order = np.lexsort((rows, -score[rows]))
    return rows[order[:k]]


def _random(ctx: Context) -> Pick:
    return Pick(ctx.rng.choice(ctx.eligible, ctx.take, replace=False))


def _quality(ctx: Context) -> Pick:
    return Pick(top_by(ctx.eligible, ctx.stats.mean, ctx.take))


def _clustered(ctx: Context) -> Pick:
    cfg, eligible = ctx.cfg, ctx.eligible
    k = cfg.clusters if cfg.clusters is not None else default_clusters(cfg.budget, len(eligible))
    k = min(k, len(eligible))
    if k < 1:
        return Pick(np.empty(0, dtype=np.int64))
    if cfg.clusters is not None and k < cfg.clusters:
        ctx.notes.append(f"clusters lowered from {cfg.clusters} to {k}: only {k} candidates")
    labels = cluster_rows(
        ctx.source,
        eligible,
        k,
        pca_dim=cfg.pca_dim,
        iters=cfg.kmeans_iters,
        seed=cfg.random_seed,
        device=ctx.device,
        chunk_rows=ctx.chunk_rows,
    )
    rows = resample(
        eligible,
        labels,
        ctx.take,
        n_clusters=k,
        within=cfg.within_cluster,
        scores=ctx.stats.mean,
        rng=ctx.rng,
    )
    return Pick(rows, labels, np.bincount(labels, minlength=k).astype(np.int64))


def _loss(ctx: Context) -> Pick:
    # Lowest loss first: the base-model loss filter (a pair the model already finds likely).
    return Pick(top_by(ctx.eligible, -np.asarray(ctx.source.loss, dtype=np.float64), ctx.take))


def less_scores(source: ScoreSource, reduce: str, chunk_rows: int = 65536) -> np.ndarray:
    """Per candidate, the mean (or max) over seeds of the cosine between its projected
    gradient and the seed's projected gradient, no Hessian (LESS, Xia et al. 2024)."""
    seeds = np.asarray(source.seed_raw_features, dtype=np.float64)
    norms = np.linalg.norm(seeds, axis=1, keepdims=True)
    seeds = np.divide(seeds, norms, out=np.zeros_like(seeds), where=norms > 0)
    out = np.empty(source.n, dtype=np.float64)
    for start in range(0, source.n, chunk_rows):
        rows = np.arange(start, min(start + chunk_rows, source.n))
        x = np.asarray(source.feature_rows(rows), dtype=np.float64)
        n = np.linalg.norm(x, axis=1, keepdims=True)
        cos = np.divide(x, n, out=np.zeros_like(x), where=n > 0) @ seeds.T
        out[rows] = cos.mean(axis=1) if reduce == "mean" else cos.max(axis=1)
    return out


def _less(ctx: Context) -> Pick:
    score = less_scores(ctx.source, ctx.cfg.less_reduce, ctx.chunk_rows)
    return Pick(top_by(ctx.eligible, score, ctx.take))


def positive_benefits(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, [len(rows), S] float32)``: the eligible candidates that help some seed, and
    their positive benefits under the scoring in effect (negatives as 0)."""
    scoring = SCORINGS[ctx.cfg.scoring]
    col_mean = col_std = None
    if scoring.needs_moments:
        col_mean, col_std = seed_moments(ctx.source, ctx.chunk_rows)
        col_std = np.where(col_std > 0, col_std, 1.0).astype(np.float32)
        col_mean = col_mean.astype(np.float32)
    keep = np.zeros(ctx.source.n, dtype=bool)
    keep[ctx.eligible] = True
    rows, parts = [], []
    for start, block in checked_blocks(ctx.source, ctx.chunk_rows):
        b = scored_block(block, start, ctx.cfg.scoring, ctx.source, col_mean, col_std)
        b = np.maximum(b, 0, dtype=np.float32)
        r = np.arange(start, start + len(b))
        useful = keep[r] & (b.max(axis=1) > 0)
        rows.append(r[useful])
        parts.append(b[useful])
    return np.concatenate(rows), np.concatenate(parts)


def coverage_greedy(benefit: np.ndarray, k: int) -> np.ndarray:
    """Greedy (lazy) maximisation of ``F(A) = Σ_s sqrt(Σ_{m in A} b[m, s])`` over sets of
    ``k`` rows of ``benefit`` (``[M, S]``, non-negative): indices in the order chosen.

    F is monotone submodular (a concave function of a modular one per seed), so the lazy
    greedy is the plain greedy, with its (1 - 1/e) guarantee, at a fraction of the gains
    evaluated. Ties go to the lower index.
    """
    b = np.asarray(benefit, dtype=np.float64)
    total = np.zeros(b.shape[1])
    base = 0.0  # sum_s sqrt(total_s)
    heap = [(-float(np.sqrt(row).sum()), i) for i, row in enumerate(b)]
    heapq.heapify(heap)
    chosen: list[int] = []
    while heap and len(chosen) < k:
        _, i = heapq.heappop(heap)
        gain = float(np.sqrt(total + b[i]).sum()) - base
        if not heap or gain >= -heap[0][0] - 1e-12 * max(1.0, abs(gain)):
            chosen.append(i)
            total += b[i]
            base = float(np.sqrt(total).sum())
        else:
            heapq.heappush(heap, (-gain, i))
    return np.asarray(chosen, dtype=np.int64)


def _coverage(ctx: Context) -> Pick:
    rows, benefit = positive_benefits(ctx)
    picked = rows[coverage_greedy(benefit, ctx.take)]
    missing = ctx.take - len(picked)
    if missing > 0:  # candidates that help no seed add nothing: the best mean fills up
        ctx.notes.append(f"coverage: {missing} chosen by mean benefit (they help no seed)")
        rest = np.setdiff1d(ctx.eligible, picked)
        picked = np.concatenate([picked, top_by(rest, ctx.stats.mean, missing)])
    return Pick(np.sort(picked))


SELECTORS: dict[str, Selector] = {
    s.name: s
    for s in (
        Selector(
            "gdig",
            "quality filter then diversity resampling (the method)",
            _clustered,
            eligible="quality",
        ),
        Selector(
            "quality",
            "quality filter then top by mean benefit",
            _quality,
            eligible="quality",
            ranked=True,
        ),
        Selector("diversity", "k-means on all candidates then resampling", _clustered),
        Selector("random", "uniform random baseline", _random),
        Selector(
            "rules",
            "rule-based cleaning (OpusFilter filters), then uniform random",
            _random,
            eligible="rules",
        ),
        Selector("loss", "lowest target loss under the scoring model", _loss),
        Selector("less", "highest cosine to the seeds' gradients, no Hessian (LESS)", _less),
        Selector(
            "coverage",
            "greedy cover of the seeds' positive benefits (diminishing returns per seed)",
            _coverage,
        ),
    )
}


def register_selector(selector: Selector) -> None:
    """Add a selector to the table (a plug-in, or a test)."""
    SELECTORS[selector.name] = selector


def selector_help() -> str:
    return "; ".join(f"{s.name}: {s.help}" for s in SELECTORS.values()) + "."


def needs_rules(name: str) -> bool:
    return SELECTORS[name].eligible == "rules"


def require_rules(rule_ok: np.ndarray | None, name: str) -> np.ndarray:
    if rule_ok is None:
        raise UsageError(
            f"--selector {name} needs the pool's texts to apply the cleaning rules; run it "
            "through `gdig select`/`gdig run` (or pass rule_ok to select())"
        )
    return rule_ok
