"""The selection's files for users: ``scores.csv`` (one row per scored candidate, pool
order) and ``selected.jsonl`` (the chosen pairs with every input field)."""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gdig.data.pairs import jsonl_line
from gdig.io.atomic import atomic_open

from .choosers import SELECTORS
from .selection import Selection

SCORE_COLUMNS = (
    "id",
    "n_pos",
    "n_seeds",
    "benefit_mean",
    "benefit_min",
    "passed_quality",
    "cluster",
    "selected",
    "rank",
    "top_seeds",
    "scoring",  # what benefit_mean/benefit_min hold: raw benefits, z-scores or cosines
)


def ranks(sel: Selection) -> np.ndarray:
    """1-based rank of each candidate by mean benefit (1 = best; ties by pool order)."""
    order = np.argsort(-np.asarray(sel.benefit_mean), kind="stable")  # stable: ties by row
    out = np.empty(sel.n, dtype=np.int64)
    out[order] = np.arange(1, sel.n + 1)
    return out


def write_scores(path: Path, sel: Selection, top_seeds: Sequence[list[str]] | None = None) -> None:
    """``top_seeds[i]``: the seeds candidate ``i`` helps most (written ``;``-joined).
    Written row by row: a pool of millions never makes one big string."""
    rank = ranks(sel)
    with atomic_open(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        w = csv.writer(text, lineterminator="\n")
        w.writerow(SCORE_COLUMNS)
        for i, cid in enumerate(sel.ids):
            w.writerow(
                [
                    cid,
                    int(sel.n_pos[i]),
                    sel.n_seeds,
                    f"{float(sel.benefit_mean[i]):.9g}",
                    f"{float(sel.benefit_min[i]):.9g}",
                    int(bool(sel.passed_quality[i])),
                    int(sel.cluster[i]),
                    int(bool(sel.selected[i])),
                    int(rank[i]),
                    ";".join(top_seeds[i]) if top_seeds is not None else "",
                    sel.config.scoring,
                ]
            )
        text.flush()
        text.detach()  # atomic_open closes the file itself


def selected_order(sel: Selection) -> np.ndarray:
    """The selected rows in the order ``selected.jsonl`` lists them: pool order, except
    for a ranking selector (``--selector quality``): best mean benefit first."""
    rows = np.asarray(sel.selected_rows, dtype=np.int64)
    if SELECTORS[sel.config.selector].ranked:
        rows = rows[np.lexsort((rows, -np.asarray(sel.benefit_mean)[rows]))]
    return rows


def write_selected(
    path: Path,
    sel: Selection,
    read_pairs: Callable[[np.ndarray], Sequence[Any]],
    top_seeds: Sequence[list[str]] | None = None,
    chunk: int = 4096,
) -> None:
    """``selected.jsonl``: the selected pairs in :func:`selected_order`, each record (every
    input field, from ``to_record()``) with its scores added. ``read_pairs(rows)`` returns
    the pairs of these selection rows, in that order.

    Pairs are read ``chunk`` at a time in ascending row order (a forward read of the pool:
    a gzip file is never rewound), so memory holds one chunk of pairs whatever the budget.
    When the file's order is another (``--selector quality`` ranks best first), each line
    is spooled to a temporary file beside ``path`` and copied out in order from there.
    """
    order = selected_order(sel)
    ascending = np.sort(order)
    rank = ranks(sel)

    def lines() -> Iterator[bytes]:
        for start in range(0, len(ascending), chunk):
            part = ascending[start : start + chunk]
            pairs = read_pairs(part)
            if len(pairs) != len(part):
                raise ValueError(f"write_selected: {len(pairs)} pairs for {len(part)} rows")
            for row, pair in zip(part.tolist(), pairs, strict=True):
                yield _selected_line(sel, row, pair, int(rank[row]), top_seeds)

    with atomic_open(path) as fh:
        if np.array_equal(order, ascending):
            for line in lines():
                fh.write(line)
            return
        with tempfile.TemporaryFile(dir=Path(path).parent) as spool:
            spans = np.zeros((len(ascending), 2), dtype=np.int64)  # offset, length
            for i, line in enumerate(lines()):
                spans[i] = spool.tell(), len(line)
                spool.write(line)
            for i in np.searchsorted(ascending, order).tolist():
                spool.seek(int(spans[i, 0]))
                fh.write(spool.read(int(spans[i, 1])))


def _selected_line(
    sel: Selection, row: int, pair: Any, rank: int, top_seeds: Sequence[list[str]] | None
) -> bytes:
    rec = pair.to_record()
    if str(rec.get("id")) != sel.ids[row]:
        raise ValueError(f"write_selected: pair {rec.get('id')!r} is not {sel.ids[row]!r}")
    rec.update(
        benefit_mean=float(sel.benefit_mean[row]),
        n_pos=int(sel.n_pos[row]),
        cluster=int(sel.cluster[row]),
        rank=rank,
    )
    if top_seeds is not None:
        rec["top_seeds"] = list(top_seeds[row])
    if bool(sel.filled[row]):
        rec["filled"] = True
    return jsonl_line(rec)
