"""A self-contained HTML report of one selection run (opens offline: images are inlined)."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gdig.io.atomic import atomic_write_bytes, atomic_write_text

from ..select.selection import Selection
from . import figures

MAX_MAP_POINTS = 5000
N_EXTREMES = 10
MAX_TABLE_ROWS = 2000  # the browsable table of selected pairs; selected.jsonl has them all

CSS = """
body { font-family: system-ui, "Noto Sans", "Noto Sans CJK SC", "PingFang SC",
       "Microsoft YaHei", sans-serif; max-width: 1100px; margin: 2em auto; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.pairs td.text { max-width: 380px; overflow-wrap: anywhere; }
img { max-width: 100%; }
.note { background: #fff4e5; border-left: 4px solid #e76f51; padding: 6px 10px; margin: 6px 0; }
.muted { color: #777; }
table.browse th { cursor: pointer; position: sticky; top: 0; }
input.filter { width: 100%; max-width: 480px; padding: 4px; margin: 6px 0; }
"""

# The browsable table: a text filter over its rows and sorting by a clicked column.
SCRIPT = """
function gdigFilter(input, id) {
  const q = input.value.toLowerCase();
  for (const tr of document.getElementById(id).tBodies[0].rows)
    tr.style.display = tr.textContent.toLowerCase().includes(q) ? "" : "none";
}
function gdigSort(th) {
  const body = th.closest("table").tBodies[0], i = th.cellIndex;
  const up = th.dataset.dir !== "up"; th.dataset.dir = up ? "up" : "down";
  const key = (tr) => tr.cells[i].dataset.v ?? tr.cells[i].textContent;
  const num = th.classList.contains("num");
  const rows = [...body.rows].sort((a, b) => {
    const x = key(a), y = key(b);
    return (up ? 1 : -1) * (num ? parseFloat(x) - parseFloat(y) : x.localeCompare(y));
  });
  for (const tr of rows) body.appendChild(tr);
}
"""


def sample_map_rows(sel: Selection, max_points: int = MAX_MAP_POINTS, seed: int = 0) -> np.ndarray:
    """Pool rows to show on the map: selected ones first (up to half), the rest at random.

    Call ``source.feature_rows`` on the result and pass both to :func:`write_report`,
    so the map never needs the whole pool's features.
    """
    rng = np.random.default_rng(seed)
    chosen = sel.selected_rows
    if len(chosen) > max_points // 2:
        chosen = rng.choice(chosen, max_points // 2, replace=False)
    others = np.flatnonzero(~sel.selected)
    n_others = min(len(others), max_points - len(chosen))
    others = rng.choice(others, n_others, replace=False)
    return np.sort(np.concatenate([chosen, others]).astype(np.int64))


def _fmt(value: object) -> str:
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.4g}"
    return str(value)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def _img(name: str, png: bytes, alt: str, out_dir: Path) -> str:
    # Written beside the report too, so the figures can be reused on their own.
    atomic_write_bytes(out_dir / f"{name}.png", png)
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _kinds_table(kinds: dict[str, dict[str, int]]) -> str:
    cols = ["pool", "passed quality", "selected"]
    head = "<tr><th>kind</th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"
    body = "".join(
        f"<tr><th>{html.escape(k)}</th>" + "".join(f"<td>{v[c]}</td>" for c in cols) + "</tr>"
        for k, v in kinds.items()
    )
    return f"<table>{head}{body}</table>"


def _summary_table(sel: Selection, summary: dict) -> str:
    n = sel.n
    passed = int(sel.passed_quality.sum())
    rows: list[tuple[str, object]] = [
        ("pool size", n),
        ("seed groups (G)", sel.n_seeds),
        (
            "passed quality",
            (
                f"{passed} ({100 * passed / max(n, 1):.1f}%), n_pos >= {sel.need} "
                f"(tau={sel.config.tau}, scoring={sel.config.scoring})"
            ),
        ),
        ("clusters", sel.n_clusters if sel.n_clusters else "none (selector does not cluster)"),
        ("selected", f"{int(sel.selected.sum())} of budget {sel.config.budget}"),
        ("filled after a shortfall", int(sel.filled.sum())),
        ("selector", sel.config.selector),
    ]
    rows += [(f"selection {k.removesuffix('_s')} (s)", v) for k, v in sel.timings.items()]
    rows += _flatten(summary)
    body = "\n".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows
    )
    return f"<table>{body}</table>"


def _pairs_table(
    sel: Selection, pairs_text: Sequence[tuple[str, str, str]], rows: np.ndarray
) -> str:
    head = (
        "<tr><th>#</th><th>id</th><th>mean benefit</th><th>n_pos</th>"
        "<th>selected</th><th>source</th><th>target</th></tr>"
    )
    body = []
    for rank, r in enumerate(rows, 1):
        pid, src, tgt = pairs_text[r]
        if str(pid) != sel.ids[r]:
            raise ValueError(
                f"pairs_text row {r} has id {pid!r} but the selection's row {r} is "
                f"{sel.ids[r]!r}: pass the pairs in pool order"
            )
        body.append(
            f"<tr><td class=num>{rank}</td><td>{html.escape(str(pid))}</td>"
            f"<td class=num>{sel.benefit_mean[r]:.4g}</td>"
            f"<td class=num>{sel.n_pos[r]}/{sel.n_seeds}</td>"
            f"<td>{'yes' if sel.selected[r] else ''}</td>"
            f"<td class=text>{html.escape(src)}</td><td class=text>{html.escape(tgt)}</td></tr>"
        )
    return f'<table class="pairs">{head}{"".join(body)}</table>'


def _selected_table(
    sel: Selection,
    pairs_text: Sequence[tuple[str, str, str]],
    labels: Sequence[object] | None,
    label_name: str | None,
) -> str:
    """Every selected pair (up to MAX_TABLE_ROWS, best mean benefit first) with its
    scores and, when the pool has one, its label: filter by text, sort by any column."""
    from ..select.writers import ranks

    rank = ranks(sel)
    rows = np.asarray(sel.selected_rows, dtype=np.int64)
    rows = rows[np.argsort(rank[rows], kind="stable")]
    shown = rows[:MAX_TABLE_ROWS]
    cols = [("rank", "num"), ("id", ""), ("mean benefit", "num"), ("n_pos", "num"),
            ("cluster", "num"), ("filled", "")]  # fmt: skip
    if labels is not None:
        cols.append((label_name or "label", ""))
    cols += [("source", ""), ("target", "")]
    head = "".join(
        f'<th class="{kind}" onclick="gdigSort(this)">{html.escape(name)}</th>'
        for name, kind in cols
    )
    body = []
    for r in shown.tolist():
        pid, src, tgt = pairs_text[r]
        cells = [
            f"<td class=num>{rank[r]}</td><td>{html.escape(str(pid))}</td>",
            f"<td class=num data-v={float(sel.benefit_mean[r])!r}>{sel.benefit_mean[r]:.4g}</td>",
            f"<td class=num data-v={int(sel.n_pos[r])}>{sel.n_pos[r]}/{sel.n_seeds}</td>",
            f"<td class=num>{sel.cluster[r] if sel.cluster[r] >= 0 else ''}</td>",
            f"<td>{'filled' if sel.filled[r] else ''}</td>",
        ]
        if labels is not None:
            cells.append(f"<td>{html.escape(_fmt(labels[r]))}</td>")
        cells.append(
            f"<td class=text>{html.escape(src)}</td><td class=text>{html.escape(tgt)}</td>"
        )
        body.append(f"<tr>{''.join(cells)}</tr>")
    more = (
        f"<p class=muted>The {len(shown)} best of {len(rows)} selected pairs; all of them are "
        "in selected.jsonl.</p>"
        if len(rows) > len(shown)
        else ""
    )
    return (
        f'{more}<input class=filter placeholder="filter: any text in a row" '
        "oninput=\"gdigFilter(this, 'selected-pairs')\">"
        f'<table class="pairs browse" id="selected-pairs"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _check_pairs(sel: Selection, pairs_text: Sequence[tuple[str, str, str]]) -> None:
    if len(pairs_text) != sel.n:
        raise ValueError(
            f"pairs_text has {len(pairs_text)} entries but the selection covers {sel.n} "
            f"candidates: pass (id, src, tgt) for every pool row, in pool order"
        )


def write_report(
    run_dir: Path,
    selection: Selection,
    pairs_text: Sequence[tuple[str, str, str]],
    features_for_map: np.ndarray | None,
    summary: dict,
    *,
    map_rows: np.ndarray | None = None,
    title: str = "G-DIG selection report",
    noise_kinds: dict[str, dict[str, int]] | None = None,
    labels: Sequence[object] | None = None,
    label_name: str | None = None,
) -> Path:
    """Write ``run_dir/report.html`` (and its figures in ``run_dir/report_files/``).

    ``pairs_text`` is ``(id, src, tgt)`` for every pool row (any sequence: only the
    rows shown are read, and their ids checked). ``features_for_map``
    are projected gradients either of every pool row (``[N, D]``) or of the rows
    in ``map_rows`` (see :func:`sample_map_rows`); ``None`` leaves the map out.
    ``summary`` is shown as a table (nested dicts flattened, e.g. stage timings).
    ``labels`` (one per pool row, any value) are shown beside each selected pair, in a
    column named ``label_name``.
    """
    run_dir = Path(run_dir)
    files = run_dir / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    _check_pairs(selection, pairs_text)
    sel = selection

    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts.append(
        "<p class=muted>Benefit = grad L(seed)<sup>T</sup> H<sup>-1</sup> grad L(candidate): "
        "positive means the candidate lowers the seed's loss.</p>"
    )
    parts.append(f"<p class=muted>{html.escape(scale_note(sel))}</p>")
    if sel.n_clusters:
        parts.append(
            "<p class=muted>Why a highly ranked pair can be left out: the selection is "
            "resampled evenly across gradient clusters, so a pair from a crowded cluster can "
            "give its place to a lower-ranked pair from a sparse one (diversity).</p>"
        )
    parts += [f"<div class=note>{html.escape(n)}</div>" for n in sel.notes]
    parts += ["<h2>Summary</h2>", _summary_table(sel, summary)]
    if noise_kinds:
        parts += ["<h2>Noise kinds (from the pool's labels)</h2>", _kinds_table(noise_kinds)]

    parts += ["<h2>Quality</h2>"]
    parts.append(_img("benefit_hist", figures.benefit_histogram(sel), "mean benefit", files))
    parts.append(_img("npos", figures.npos_distribution(sel), "n_pos distribution", files))

    parts += ["<h2>Diversity</h2>"]
    if sel.n_clusters:
        parts.append(_img("clusters", figures.cluster_sizes(sel), "cluster sizes", files))
    else:
        parts.append(f"<p class=muted>Selector {sel.config.selector!r} does not cluster.</p>")
    if features_for_map is not None:
        rows = _map_rows(sel, features_for_map, map_rows)
        feats = features_for_map if map_rows is not None else features_for_map[rows]
        if map_rows is not None and len(map_rows) > MAX_MAP_POINTS:
            keep = np.random.default_rng(0).choice(len(map_rows), MAX_MAP_POINTS, replace=False)
            keep.sort()
            rows, feats = rows[keep], feats[keep]
        parts.append(_img("map", figures.pca_map(feats, rows, sel), "gradient map", files))
    else:
        parts.append("<p class=muted>No features given: map omitted.</p>")

    parts += [
        f"<h2>Selected pairs ({int(sel.selected.sum())})</h2>",
        _selected_table(sel, pairs_text, labels, label_name),
    ]
    order = np.lexsort((np.arange(sel.n), -sel.benefit_mean))
    k = min(N_EXTREMES, sel.n)
    parts += [f"<h2>{k} most beneficial pairs</h2>", _pairs_table(sel, pairs_text, order[:k])]
    parts += [
        f"<h2>{k} least beneficial pairs</h2>",
        _pairs_table(sel, pairs_text, order[::-1][:k]),
    ]

    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style>"
        f"<script>{SCRIPT}</script></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    out = run_dir / "report.html"
    atomic_write_text(out, doc)
    return out


def _map_rows(sel: Selection, features: np.ndarray, map_rows: np.ndarray | None) -> np.ndarray:
    if features.ndim != 2:
        raise ValueError(f"features_for_map must be [rows, D], got shape {features.shape}")
    if map_rows is None:
        if len(features) != sel.n:
            raise ValueError(
                f"features_for_map has {len(features)} rows but the pool has {sel.n}: pass "
                f"map_rows to say which pool rows they belong to"
            )
        return sample_map_rows(sel)
    map_rows = np.asarray(map_rows, dtype=np.int64)
    if len(map_rows) != len(features):
        raise ValueError(
            f"map_rows has {len(map_rows)} entries but features_for_map has {len(features)} rows"
        )
    if len(map_rows) and (map_rows.min() < 0 or map_rows.max() >= sel.n):
        raise ValueError(f"map_rows must index the pool's {sel.n} rows")
    return map_rows


def scale_note(sel: Selection) -> str:
    """One line on what the benefit's numbers mean, with their range in this pool."""
    mean = np.asarray(sel.benefit_mean, dtype=np.float64)
    if not len(mean):
        return "No candidates."
    lo, mid, hi = np.percentile(mean, [0, 50, 100])
    from gdig.select.scorings import SCORINGS

    unit = SCORINGS[sel.config.scoring].unit
    return (
        f"Scale ({sel.config.scoring} scoring): mean benefit over the seeds is {unit}; only its "
        f"sign and order matter for selection. In this pool it ranges from {lo:.3g} to "
        f"{hi:.3g} (median {mid:.3g})."
    )
