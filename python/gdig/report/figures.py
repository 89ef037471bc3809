"""The report's figures, each a function from a Selection to PNG bytes.

Figures are built as bare ``matplotlib.figure.Figure`` objects, which render with
the Agg backend without pyplot: no display needed, and no global backend switch
that would surprise an interactive caller.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

from ..select.selection import Selection

PASS, FAIL, SELECTED, ACCENT = "#2a9d8f", "#b0b0b0", "#e76f51", "#264653"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def benefit_histogram(sel: Selection) -> bytes:
    """Mean benefit of every candidate, passed vs failed stacked, selected outlined.

    Benefits are heavy-tailed, so the axis spans the 0.5-99.5 percentiles and the
    few values outside are piled into the edge bins (the title says how many).
    """
    x = sel.benefit_mean
    lo, hi = np.percentile(x, [0.5, 99.5]) if len(x) else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    clipped = np.clip(x, lo, hi)
    bins = np.linspace(lo, hi, 61)
    fig = Figure(figsize=(9, 3.6))
    ax = fig.subplots()
    ax.hist(
        [clipped[sel.passed_quality], clipped[~sel.passed_quality]],
        bins=bins,
        stacked=True,
        color=[PASS, FAIL],
        label=["passed quality", "failed quality"],
    )
    ax.hist(
        clipped[sel.selected],
        bins=bins,
        histtype="step",
        color=SELECTED,
        linewidth=1.6,
        label="selected",
    )
    if lo < 0 < hi:
        ax.axvline(0, color=ACCENT, linestyle="--", linewidth=1)
    outside = int(((x < lo) | (x > hi)).sum())
    ax.set_title(f"Mean benefit over seed groups (scoring: {sel.config.scoring}; positive helps)")
    ax.set_xlabel(
        "mean benefit"
        + (f" ({outside} values beyond the axis are counted in the edge bins)" if outside else "")
    )
    ax.set_ylabel("candidates")
    ax.legend(frameon=False)
    return _png(fig)


def npos_distribution(sel: Selection) -> bytes:
    """How many seed groups each candidate helps, with the tau threshold marked."""
    g = sel.n_seeds
    counts = np.bincount(sel.n_pos, minlength=g + 1)
    values = np.arange(g + 1)
    fig = Figure(figsize=(9, 3.4))
    ax = fig.subplots()
    colors = np.where(values >= sel.need, PASS, FAIL)
    ax.bar(values, counts, width=0.9 if g <= 64 else 1.0, color=colors)
    ax.axvline(sel.need - 0.5, color=SELECTED, linestyle="--", linewidth=1.5)
    right = sel.need > g / 2  # label on the side with room
    ax.annotate(
        f"tau={sel.config.tau}: n_pos >= {sel.need}",
        xy=(sel.need - 0.5, 1.0),
        xycoords=("data", "axes fraction"),
        xytext=(-6 if right else 6, -6),
        textcoords="offset points",
        color=SELECTED,
        va="top",
        ha="right" if right else "left",
    )
    ax.set_xlim(-0.5 - g * 0.02, g + 0.5 + g * 0.02)
    ax.set_title(f"Seed groups helped per candidate (n_pos out of {g})")
    ax.set_xlabel("n_pos")
    ax.set_ylabel("candidates")
    return _png(fig)


def cluster_sizes(sel: Selection) -> bytes:
    """Cluster sizes before and after resampling, largest cluster first."""
    before, after = sel.cluster_sizes_before, sel.cluster_sizes_after
    order = np.argsort(-before, kind="stable")
    pos = np.arange(len(order))
    fig = Figure(figsize=(9, 4.6))
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.bar(pos, before[order], color=PASS, width=0.85)
    top.set_ylabel("candidates")
    top.set_title(f"{len(before)} clusters: sizes before (top) and after (bottom) resampling")
    bottom.bar(pos, after[order], color=SELECTED, width=0.85)
    bottom.set_ylabel("selected")
    bottom.set_xlabel("cluster (largest first)")
    if len(order) <= 40:
        bottom.set_xticks(pos, [str(c) for c in order], fontsize=7)
    else:
        bottom.set_xticks([])
    return _png(fig)


def principal_axes(x: np.ndarray, k: int = 2, iters: int = 8, seed: int = 0) -> np.ndarray:
    """The top ``k`` right singular vectors of ``x`` (``[k', D]``, ``k' = min(k, *x.shape)``),
    by randomized subspace iteration (Halko, Martinsson & Tropp 2011, Alg. 4.4) on ``k + 10``
    directions, then an exact SVD of the small projected matrix.

    Why not ``np.linalg.svd(x)``: for the map's 3,000-5,000 rows of ~10k-dimensional gradients
    the full SVD took 29 s of a 39 s ``gdig select`` (SmolLM2, 2 cores); this takes well
    under a second. Each pass through ``x`` and ``x.T`` raises the singular-value ratios
    to a further power, so eight passes give the top two axes to rounding wherever the
    spectrum has any gap (tests/test_report.py compares them with the full SVD)."""
    n, d = x.shape
    width = min(k + 10, n, d)
    if width == min(n, d):  # nothing to gain: the full SVD is already small
        return np.linalg.svd(x, full_matrices=False)[2][:k]
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(x @ rng.standard_normal((d, width)))[0]
    for _ in range(iters):  # re-orthonormalised each half-step, so no direction is lost
        q = np.linalg.qr(x.T @ q)[0]
        q = np.linalg.qr(x @ q)[0]
    return np.linalg.svd(q.T @ x, full_matrices=False)[2][:k]


def pca_map(features: np.ndarray, rows: np.ndarray, sel: Selection) -> bytes:
    """Candidates on the first two principal axes of their gradient directions."""
    x = np.asarray(features, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)  # as clustered: directions
    x -= x.mean(axis=0)
    vt = principal_axes(x, 2)
    xy = x @ vt.T if vt.shape[0] >= 2 else np.column_stack([x @ vt[0], np.zeros(len(x))])
    cl = sel.cluster[rows]
    chosen = sel.selected[rows]
    fig = Figure(figsize=(8, 6.4))
    ax = fig.subplots()
    loose = cl < 0
    ax.scatter(*xy[loose].T, s=5, c=FAIL, alpha=0.5, linewidths=0, label="not clustered")
    if (~loose).any():
        ax.scatter(
            *xy[~loose].T,
            s=7,
            c=cl[~loose] % 20,
            cmap="tab20",
            vmin=0,
            vmax=19,
            alpha=0.75,
            linewidths=0,
            label="clustered (colour = cluster)",
        )
    ax.scatter(
        *xy[chosen].T,
        s=28,
        facecolors="none",
        edgecolors="black",
        linewidths=0.8,
        label="selected",
    )
    ax.set_title(f"Gradient directions, 2-D PCA ({len(rows)} candidates shown)")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(loc="best", frameon=True, fontsize=8, markerscale=1.5)
    return _png(fig)
