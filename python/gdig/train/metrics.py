"""Scoring translations: sacrebleu's corpus BLEU and chrF with their signatures, a
summary of the outputs, and the paired bootstrap that compares two systems (on one test
set, or over training seeds and test sentences: the two-level bootstrap).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gdig.io.errors import UsageError
from gdig.train.decode import Hypothesis
from gdig.train.failures import FAILURES

METRICS = ("chrf", "bleu")


def common_lang(pairs: Sequence[Any]) -> str | None:
    langs = {getattr(p, "tgt_lang", None) for p in pairs}
    return langs.pop() if len(langs) == 1 else None


def _bleu(tgt_lang: str | None):
    """sacrebleu BLEU with the tokenizer sacrebleu picks for the target language; where that
    tokenizer needs missing extras (ja, ko: MeCab) character tokenization instead."""
    from sacrebleu.metrics import BLEU

    try:
        return BLEU(trg_lang=tgt_lang or "")
    except (RuntimeError, ImportError):
        return BLEU(tokenize="char")


def _metric(name: str, tgt_lang: str | None):
    from sacrebleu.metrics import CHRF

    if name == "chrf":
        return CHRF()
    if name == "bleu":
        return _bleu(tgt_lang)
    raise ValueError(f"metric={name!r}: use one of {', '.join(METRICS)}")


def check_lengths(refs: Sequence[str], *hyps: Sequence[str]) -> None:
    for h in hyps:
        if len(h) != len(refs):
            raise UsageError(f"{len(h)} hypotheses for {len(refs)} references; they must pair up")


def score_hypotheses(
    refs: Sequence[str], hyps: Sequence[str], *, tgt_lang: str | None = None
) -> dict[str, Any]:
    """Corpus BLEU and chrF of ``hyps`` against ``refs`` (one reference each), with signatures.

    ``tgt_lang`` picks BLEU's tokenizer as sacrebleu does (``zh`` -> zh, else 13a).
    """
    from sacrebleu.metrics import CHRF

    refs, hyps = list(refs), list(hyps)
    check_lengths(refs, hyps)
    bleu, chrf = _bleu(tgt_lang), CHRF()
    b = bleu.corpus_score(hyps, [refs])
    c = chrf.corpus_score(hyps, [refs])
    return {
        "n": len(refs),
        "bleu": float(b.score),
        "chrf": float(c.score),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def summarize(
    pairs: Sequence[Any],
    hyps: Sequence[Hypothesis],
    failures: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """Scores and counts of ``hyps`` (from :func:`translate`) against the pairs' targets.

    With ``failures`` (:func:`gdig.train.failures.format_failures`) also the count of each
    format failure and, apart from them, BLEU and chrF of the well-formed outputs alone
    (``well_formed``: ``n``, ``bleu``, ``chrf``; ``None`` scores when there are none).
    """
    check_lengths([p.tgt for p in pairs], hyps)
    tgt_lang = common_lang(pairs)
    scores = score_hypotheses([p.tgt for p in pairs], [h.text for h in hyps], tgt_lang=tgt_lang)
    rows = [
        {
            "id": getattr(p, "id", None),
            "src": p.src,
            "ref": p.tgt,
            "hyp": h.text,
            "empty": h.empty,
            "runaway": h.runaway,
            "n_tokens": h.n_tokens,
        }
        for p, h in zip(pairs, hyps, strict=True)
    ]
    n = len(hyps)
    result = {
        **scores,
        "n_empty": sum(h.empty for h in hyps),
        "n_runaway": sum(h.runaway for h in hyps),
        "n_stop_eos": sum(h.stop == "eos" for h in hyps),
        "n_stop_newline": sum(h.stop == "newline" for h in hyps),
        "mean_tokens": sum(h.n_tokens for h in hyps) / n if n else 0.0,
    }
    if failures is not None:
        check_lengths([p.tgt for p in pairs], failures)
        for row, kind in zip(rows, failures, strict=True):
            row["format_failure"] = kind
        ok = [i for i, kind in enumerate(failures) if kind is None]
        result["format_failures"] = {k: sum(f == k for f in failures) for k in FAILURES}
        result["n_format_failures"] = n - len(ok)
        well = {"n": len(ok), "bleu": None, "chrf": None}
        if ok:
            part = score_hypotheses(
                [pairs[i].tgt for i in ok], [hyps[i].text for i in ok], tgt_lang=tgt_lang
            )
            well.update(bleu=part["bleu"], chrf=part["chrf"])
        result["well_formed"] = well
    result["rows"] = rows
    return result


def paired_bootstrap(
    refs: Sequence[str],
    hyps_a: Sequence[str],
    hyps_b: Sequence[str],
    metric: str = "chrf",
    n: int = 1000,
    seed: int = 0,
    *,
    tgt_lang: str | None = None,
) -> dict[str, Any]:
    """Paired bootstrap resampling (Koehn 2004) of system a against system b.

    Each of the ``n`` resamples draws ``len(refs)`` sentence indices with replacement (the
    same indices for both systems) and computes the *corpus* metric of each system on it:
    sacrebleu's per-sentence sufficient statistics (chrF: character n-gram hyp/ref/match
    counts; BLEU: lengths and n-gram matches/totals) are summed over the resample and
    turned into a corpus score by sacrebleu's own formula, exactly what ``corpus_score``
    gives on that resample. Sums of all resamples are one matrix product.

    Returns ``score_a``/``score_b`` and ``delta`` (a - b) on the full set, ``mean_delta``
    and the 95% percentile interval ``ci_low``/``ci_high`` of the resampled differences,
    and ``p_value``: the share of resamples where a does not beat b (a < b counts 1,
    a tie 1/2), i.e. the one-sided p-value of "a <= b".
    """
    refs, hyps_a, hyps_b = list(refs), list(hyps_a), list(hyps_b)
    check_lengths(refs, hyps_a, hyps_b)
    if not refs:
        raise UsageError("paired_bootstrap: no sentences")
    if n < 1:
        raise ValueError(f"n={n}: must be >= 1")
    m = _metric(metric, tgt_lang)
    # sacrebleu has no public per-sentence statistics; its own significance tests use these.
    stats_a = np.asarray(m._extract_corpus_statistics(hyps_a, [refs]), dtype=np.float64)
    stats_b = np.asarray(m._extract_corpus_statistics(hyps_b, [refs]), dtype=np.float64)

    def score(summed: np.ndarray) -> float:
        return float(m._compute_score_from_stats(np.rint(summed).astype(np.int64).tolist()).score)

    size = len(refs)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, size, size=(n, size))
    flat = (idx + np.arange(n)[:, None] * size).ravel()
    weights = np.bincount(flat, minlength=n * size).reshape(n, size).astype(np.float64)
    sums_a, sums_b = weights @ stats_a, weights @ stats_b
    diffs = np.array([score(a) - score(b) for a, b in zip(sums_a, sums_b, strict=True)])
    score_a, score_b = score(stats_a.sum(0)), score(stats_b.sum(0))
    return {
        "metric": metric,
        "signature": str(m.get_signature()),
        "n_sentences": size,
        "n_resamples": n,
        "seed": seed,
        "score_a": score_a,
        "score_b": score_b,
        "delta": score_a - score_b,
        **_interval(diffs),
    }


def _interval(diffs: np.ndarray) -> dict[str, float]:
    """Mean, 95% percentile interval and one-sided p-value ("a <= b") of resampled a - b."""
    p_value = (np.sum(diffs < 0) + 0.5 * np.sum(diffs == 0)) / len(diffs)
    return {
        "mean_delta": float(diffs.mean()),
        "ci_low": float(np.percentile(diffs, 2.5)),
        "ci_high": float(np.percentile(diffs, 97.5)),
        "p_value": float(p_value),
    }


def sentence_stats(
    refs: Sequence[str], hyps: Sequence[str], metric: str = "chrf", *, tgt_lang: str | None = None
) -> np.ndarray:
    """``[len(refs), d]`` float64: sacrebleu's per-sentence sufficient statistics of
    ``metric`` (what :func:`paired_bootstrap` sums), the input of :func:`two_level_bootstrap`.
    Summed over any multiset of sentences they give that multiset's corpus score."""
    refs, hyps = list(refs), list(hyps)
    check_lengths(refs, hyps)
    m = _metric(metric, tgt_lang)
    return np.asarray(m._extract_corpus_statistics(hyps, [refs]), dtype=np.float64)


def two_level_bootstrap(
    stats_a: Sequence[np.ndarray],
    stats_b: Sequence[np.ndarray],
    metric: str = "chrf",
    n: int = 1000,
    seed: int = 0,
    *,
    tgt_lang: str | None = None,
) -> dict[str, Any]:
    """Paired two-level bootstrap of system a against system b over training seeds.

    ``stats_a[k]``/``stats_b[k]`` are :func:`sentence_stats` of the two systems trained with
    the k-th training seed, on the same references. A resample first draws ``K`` seeds with
    replacement, then, within each drawn seed, ``N`` sentences with replacement; the *same*
    draws serve both systems, whose corpus metric on the resample comes from the summed
    statistics (sacrebleu's own formula, as in :func:`paired_bootstrap`). So the interval
    holds the training-seed variance as well as the test-set variance, which pooling the
    seeds' sentences into one paired bootstrap leaves out. With one seed it is exactly
    :func:`paired_bootstrap` (the same random draws, the same numbers).

    Returns ``score_a``/``score_b`` (corpus metric over all seeds' sentences together; the
    metric's signature is :func:`score_hypotheses`'),
    ``delta`` (a - b on them), ``seed_deltas`` (a - b on each seed's sentences alone), and
    over the ``n`` resamples ``mean_delta``, the 95% percentile interval ``ci_low``/
    ``ci_high`` and ``p_value`` (share of resamples where a does not beat b, ties 1/2).
    """
    if len(stats_a) != len(stats_b) or not stats_a:
        raise UsageError(
            f"two_level_bootstrap: {len(stats_a)} and {len(stats_b)} seeds; give the same "
            "non-zero number of seeds for both systems"
        )
    shapes = {np.shape(s) for s in (*stats_a, *stats_b)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or next(iter(shapes))[0] == 0:
        raise UsageError(
            "two_level_bootstrap: every seed of both systems needs the statistics of the "
            "same sentences ([n_sentences, d] each, n_sentences > 0)"
        )
    if n < 1:
        raise ValueError(f"n={n}: must be >= 1")
    a = np.stack([np.asarray(s, np.float64) for s in stats_a])
    b = np.stack([np.asarray(s, np.float64) for s in stats_b])
    m = _metric(metric, tgt_lang)

    def score(summed: np.ndarray) -> float:
        return float(m._compute_score_from_stats(np.rint(summed).astype(np.int64).tolist()).score)

    k, size, d = a.shape
    rng = np.random.default_rng(seed)
    # Sentences first, seeds second: with one seed the draws are paired_bootstrap's.
    sentence = rng.integers(0, size, size=(n, k * size))
    drawn_seed = rng.integers(0, k, size=(n, k))
    unit = np.repeat(drawn_seed, size, axis=1) * size + sentence  # row of a.reshape(k*size, d)
    flat = (unit + np.arange(n)[:, None] * (k * size)).ravel()
    weights = np.bincount(flat, minlength=n * k * size).reshape(n, k * size).astype(np.float64)
    sums_a, sums_b = weights @ a.reshape(k * size, d), weights @ b.reshape(k * size, d)
    diffs = np.array([score(x) - score(y) for x, y in zip(sums_a, sums_b, strict=True)])
    score_a, score_b = score(a.sum((0, 1))), score(b.sum((0, 1)))
    return {
        "metric": metric,
        "n_seeds": k,
        "n_sentences": size,
        "n_resamples": n,
        "seed": seed,
        "score_a": score_a,
        "score_b": score_b,
        "delta": score_a - score_b,
        "seed_deltas": [score(a[i].sum(0)) - score(b[i].sum(0)) for i in range(k)],
        **_interval(diffs),
    }
