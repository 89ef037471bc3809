"""The HTML report: written, self-contained, with figures and escaped pair text."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from gdig.report import sample_map_rows, write_report
from gdig.select import ArraySource, SelectConfig, select

EVIL = '<script>alert("x")</script> & <b>'


def make_run(selector: str = "gdig", budget: int = 30):
    rng = np.random.default_rng(0)
    n, d, s = 200, 16, 6
    feats = rng.standard_normal((n, d)) + 1.0
    feats[rng.random(n) < 0.3] *= -1  # pairs that hurt the seeds, so some fail quality
    seeds = np.ones((s, d)) + 0.3 * rng.standard_normal((s, d))
    ids = [f"id{i}" for i in range(n)]
    src = ArraySource(feats.astype(np.float32), seed_grads=seeds.astype(np.float32), ids=ids)
    sel = select(src, SelectConfig(budget=budget, selector=selector, tau=0.8, on_short="fill"))
    pairs = [(ids[i], f"源句 {i}", f"target {i}") for i in range(n)]
    best = int(np.argmax(sel.benefit_mean))
    pairs[best] = (ids[best], "最好的", EVIL)  # lands in the "most beneficial" table
    return src, sel, pairs


def images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_report_is_self_contained_with_figures_and_escaped_text(tmp_path) -> None:
    src, sel, pairs = make_run()
    rows = sample_map_rows(sel, max_points=120)
    summary = {"timings": {"score_s": 1.5}, "model": "tiny <model>"}
    out = write_report(tmp_path, sel, pairs, src.feature_rows(rows), summary, map_rows=rows)
    assert out == tmp_path / "report.html" and out.exists()
    html = out.read_text(encoding="utf-8")
    pngs = images(html)
    assert len(pngs) == 4  # benefit histogram, n_pos, cluster sizes, map
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 1000 for p in pngs)
    assert len(list((tmp_path / "report_files").glob("*.png"))) == 4
    # the page's one script is its own table filter; the pairs' text never becomes markup
    assert html.count("<script>") == 1 and "<script>alert" not in html and EVIL not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;" in html
    assert "最好的" in html and "tiny &lt;model&gt;" in html
    assert "timings.score_s" in html and "1.5" in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from outside


def test_report_map_from_whole_pool_features_and_without_clusters(tmp_path) -> None:
    src, sel, pairs = make_run(selector="quality")
    out = write_report(tmp_path, sel, pairs, src.feature_rows(np.arange(src.n)), {})
    html = out.read_text(encoding="utf-8")
    assert len(images(html)) == 3  # no cluster-size chart: the selector does not cluster
    assert "does not cluster" in html


def test_report_without_features_and_with_shortfall_note(tmp_path) -> None:
    _, sel, pairs = make_run(budget=199)  # more than pass at tau=0.8: filled
    assert sel.filled.any()
    html = write_report(tmp_path, sel, pairs, None, {}).read_text(encoding="utf-8")
    assert "map omitted" in html and "shortfall" in html
    assert len(images(html)) == 3


def test_sample_map_rows_keeps_selected_and_bounds_size() -> None:
    _, sel, _ = make_run()
    rows = sample_map_rows(sel, max_points=100)
    assert len(rows) == 100 and len(np.unique(rows)) == 100
    assert set(sel.selected_rows) <= set(rows)


def test_report_rejects_misaligned_pairs(tmp_path) -> None:
    _, sel, pairs = make_run()
    with pytest.raises(ValueError, match="200 candidates"):
        write_report(tmp_path, sel, pairs[:-1], None, {})
    # only the rows the report shows are read (a pool of millions stays on disk); the
    # best pair is shown, so swapping it with its neighbour is caught
    best = int(np.argmax(sel.benefit_mean))
    other = best - 1 if best else best + 1
    swapped = list(pairs)
    swapped[best], swapped[other] = swapped[other], swapped[best]
    with pytest.raises(ValueError, match=f"row {best} has id {pairs[other][0]!r}"):
        write_report(tmp_path, sel, swapped, None, {})


@pytest.mark.parametrize("shape", [(600, 900), (900, 300), (40, 5000)])
def test_principal_axes_match_the_full_svd(shape) -> None:
    """The map's top two axes by subspace iteration equal the full SVD's (up to sign) on
    gradient-like data: a few strong directions over isotropic noise."""
    from gdig.report.figures import principal_axes

    rng = np.random.default_rng(1)
    n, d = shape
    strong = rng.standard_normal((4, d)) * np.array([[9.0], [6.0], [4.0], [3.0]])
    x = rng.standard_normal((n, 4)) @ strong + rng.standard_normal((n, d))
    x -= x.mean(axis=0)
    exact = np.linalg.svd(x, full_matrices=False)[2][:2]
    fast = principal_axes(x, 2)
    assert fast.shape == (2, d)
    cos = np.abs(np.sum(exact * fast, axis=1))  # unit vectors: |cos| 1 = the same axis
    np.testing.assert_allclose(cos, 1.0, atol=1e-8)
    np.testing.assert_allclose(fast @ fast.T, np.eye(2), atol=1e-10)


def test_principal_axes_small_inputs() -> None:
    from gdig.report.figures import principal_axes

    x = np.array([[1.0, 2.0, 3.0]])
    assert principal_axes(x, 2).shape == (1, 3)  # one row: one axis
    x = np.random.default_rng(0).standard_normal((30, 1))
    np.testing.assert_allclose(np.abs(principal_axes(x, 2)), [[1.0]])
