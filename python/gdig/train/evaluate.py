"""Translating test pairs with a causal LM and scoring the translations (BLEU, chrF).

The prompt of a test pair is rendered exactly as in training and influence scoring
(:func:`gdig.engine.template.encode_pair`, its prompt part), left-padded for batching, and
decoded greedily. A translation ends at EOS, or at the first newline that follows some
non-space generated text (leading newlines are skipped; the text after the newline is dropped
and the rest stripped), or after ``max_new_tokens`` tokens: such a translation is a
*runaway*. Empty and runaway outputs are counted, never fatal; a tiny or untrained model
produces plenty of both.

Scores are sacrebleu's corpus BLEU and chrF (their signatures are returned with them).
:func:`paired_bootstrap` compares two systems on the same references.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from gdig.engine.template import encode_pair
from gdig.io.atomic import atomic_open, atomic_write_text
from gdig.io.errors import UsageError
from gdig.train.config import EvalConfig

METRICS = ("chrf", "bleu")


@dataclass
class Hypothesis:
    """One translation. ``n_tokens`` counts the generated tokens up to and including the one
    that stopped it (EOS or the token holding the newline); ``stop`` is ``'eos'``,
    ``'newline'`` or ``'length'`` (a runaway: ``max_new_tokens`` without either)."""

    id: str | None
    text: str
    n_tokens: int
    empty: bool
    runaway: bool
    stop: str


# --------------------------------------------------------------------------------------
# translation


def prompt_ids(pair: Any, tokenizer: Any, template: str, max_length: int) -> list[int]:
    """The prompt tokens of ``pair`` exactly as :func:`encode_pair` renders them in training.

    The reference is not looked at: the pair is encoded with an empty target (so only EOS
    follows the prompt), which also makes the prompt's truncation independent of it.
    """
    bare = SimpleNamespace(
        src=pair.src,
        tgt="",
        src_lang=getattr(pair, "src_lang", None),
        tgt_lang=getattr(pair, "tgt_lang", None),
    )
    enc = encode_pair(bare, tokenizer, template, max_length)
    return enc.input_ids[: enc.n_prompt]


@dataclass
class TokenTable:
    """Per token id: does its text hold a newline, non-space text before its last newline,
    non-space text anywhere. Ids the tokenizer cannot decode have none of these."""

    newline: list[bool]
    text_before_newline: list[bool]
    text: list[bool]
    valid: int  # ids below this decode

    @classmethod
    def build(cls, tokenizer: Any, size: int) -> TokenTable:
        n = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(n)])
        texts += [""] * (max(size, n) - n)
        eos = tokenizer.eos_token_id
        newline = [("\n" in t) and i != eos for i, t in enumerate(texts)]
        before = [
            nl and bool(t.rsplit("\n", 1)[0].strip()) for nl, t in zip(newline, texts, strict=True)
        ]
        return cls(newline, before, [bool(t.strip()) for t in texts], n)

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(
            torch.tensor(x, dtype=torch.bool, device=device)
            for x in (self.newline, self.text_before_newline, self.text)
        )


def _vocab_size(model: Any) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    size = getattr(head, "out_features", None) or getattr(model.config, "vocab_size", 0)
    return int(size or 0)


def _finish(tokens: list[int], tokenizer: Any, eos: int, table: TokenTable, cap: int, pid):
    """A Hypothesis from the generated tokens of one row (padding after the stop included).

    The translation stops at EOS, or at the first newline once some non-space text has been
    generated (newlines before any text are skipped), the rule the decoding loop applies.
    """
    stop, kept, n = "length", tokens[:cap], min(len(tokens), cap)
    seen_text = False
    for i, t in enumerate(tokens[:cap]):
        if t == eos:
            stop, kept, n = "eos", tokens[:i], i + 1
            break
        if (
            t < len(table.newline)
            and table.newline[t]
            and (seen_text or table.text_before_newline[t])
        ):
            stop, kept, n = "newline", tokens[: i + 1], i + 1
            break
        seen_text = seen_text or bool(t < len(table.text) and table.text[t])
    text = tokenizer.decode([t for t in kept if t < table.valid], skip_special_tokens=True)
    text = text.lstrip().split("\n", 1)[0].strip()
    return Hypothesis(
        id=pid, text=text, n_tokens=n, empty=not text, runaway=stop == "length", stop=stop
    )


def translate_loaded(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Any],
    cfg: EvalConfig,
    *,
    template: str = "paper",
    max_length: int = 512,
    progress: bool = True,
) -> list[Hypothesis]:
    """:func:`translate` with a model and tokenizer already in memory (order of ``pairs``)."""
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    if not pairs:
        return []
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UsageError("translate: the tokenizer has no eos_token; set one")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    try:
        prompts = [prompt_ids(p, tokenizer, template, max_length) for p in pairs]
    except ValueError as e:
        raise UsageError(f"translate: {e}") from None
    dev = next(model.parameters()).device
    table = TokenTable.build(tokenizer, _vocab_size(model))
    has_newline, text_before_newline, has_text = table.tensors(dev)

    class _StopAtNewline(StoppingCriteria):
        """Stops a row at a newline that follows some non-space generated text."""

        def __init__(self, rows: int) -> None:
            self.seen_text = torch.zeros(rows, dtype=torch.bool, device=dev)

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kw: Any) -> torch.Tensor:
            last = input_ids[:, -1].clamp(0, len(has_newline) - 1)
            stop = has_newline[last] & (self.seen_text | text_before_newline[last])
            self.seen_text |= has_text[last]
            return stop

    gen_cfg = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=tokenizer.bos_token_id,
    )
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    batches = [
        order[s : s + cfg.eval_batch_size] for s in range(0, len(order), cfg.eval_batch_size)
    ]
    autocast = (
        torch.autocast(dev.type, dtype=torch.bfloat16) if cfg.bf16 else contextlib.nullcontext()
    )
    out: list[Hypothesis | None] = [None] * len(pairs)
    was_training, saved_gen_cfg = model.training, model.generation_config
    model.eval()
    # The model's own generation defaults (sampling, repetition penalty, ...) must not leak in:
    # decoding is plain greedy.
    model.generation_config = gen_cfg
    try:
        for rows in tqdm(batches, desc="translate", unit="batch", disable=not progress):
            width = max(len(prompts[r]) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            att = torch.zeros((len(rows), width), dtype=torch.long)
            for b, r in enumerate(rows):
                p = prompts[r]
                ids[b, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                att[b, width - len(p) :] = 1
            with torch.inference_mode(), autocast:
                gen = model.generate(
                    input_ids=ids.to(dev),
                    attention_mask=att.to(dev),
                    generation_config=gen_cfg,
                    stopping_criteria=StoppingCriteriaList([_StopAtNewline(len(rows))]),
                )
            new = gen[:, width:].tolist()
            for b, r in enumerate(rows):
                pid = getattr(pairs[r], "id", None)
                out[r] = _finish(new[b], tokenizer, eos, table, cfg.max_new_tokens, pid)
    finally:
        model.generation_config = saved_gen_cfg
        model.train(was_training)
    return [h for h in out if h is not None]


def translate(
    model_path: str | os.PathLike,
    pairs: Sequence[Any],
    cfg: EvalConfig,
    *,
    template: str = "paper",
    max_length: int = 512,
    device: str = "cpu",
    progress: bool = True,
) -> list[Hypothesis]:
    """Greedy translations of ``pairs`` (in their order) by the model in ``model_path``.

    ``max_length`` caps the prompt as in training (the head of a longer prompt is kept).
    """
    from gdig.model.load import load_model

    model, tokenizer = load_model(model_path, device=device, dtype="float32", progress=progress)
    return translate_loaded(
        model, tokenizer, pairs, cfg, template=template, max_length=max_length, progress=progress
    )


# --------------------------------------------------------------------------------------
# scoring


def _common_lang(pairs: Sequence[Any]) -> str | None:
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


def _check_lengths(refs: Sequence[str], *hyps: Sequence[str]) -> None:
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
    _check_lengths(refs, hyps)
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


def evaluate(
    model_path: str | os.PathLike,
    pairs: Sequence[Any],
    cfg: EvalConfig,
    *,
    out_file: str | os.PathLike | None = None,
    template: str = "paper",
    max_length: int = 512,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Translate ``pairs`` and score them against their targets.

    Returns the scores (``bleu``, ``chrf``, both signatures), counts (``n``, ``n_empty``,
    ``n_runaway``, ``n_stop_eos``, ``n_stop_newline``, ``mean_tokens``), the settings, and
    ``rows``: one record per pair (id, src, ref, hyp, empty, runaway, n_tokens). With
    ``out_file`` the rows are written there as JSONL and everything else to ``out_file``
    with suffix ``.json``, both atomically.
    """
    pairs = list(pairs)
    if not pairs:
        raise UsageError("evaluate: no test pairs; give a non-empty file of pairs")
    out_file = Path(out_file) if out_file is not None else None
    if out_file is not None and out_file.suffix == ".json":
        raise UsageError(
            f"{out_file}: the scores go to the same name with suffix .json; name the "
            "hypotheses file .jsonl"
        )
    t0 = time.perf_counter()
    hyps = translate(
        model_path,
        pairs,
        cfg,
        template=template,
        max_length=max_length,
        device=device,
        progress=progress,
    )
    result = summarize(pairs, hyps)
    result.update(
        {
            "model": str(Path(model_path)),
            "template": template,
            "max_length": max_length,
            "config": dataclasses.asdict(cfg),
            "wall_s": time.perf_counter() - t0,
        }
    )
    rows = result.pop("rows")
    if out_file is not None:
        with atomic_open(out_file) as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
        atomic_write_text(
            out_file.with_suffix(".json"), json.dumps(result, indent=1, ensure_ascii=False)
        )
    result["rows"] = rows
    return result


def summarize(pairs: Sequence[Any], hyps: Sequence[Hypothesis]) -> dict[str, Any]:
    """Scores and counts of ``hyps`` (from :func:`translate`) against the pairs' targets."""
    _check_lengths([p.tgt for p in pairs], hyps)
    scores = score_hypotheses(
        [p.tgt for p in pairs], [h.text for h in hyps], tgt_lang=_common_lang(pairs)
    )
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
    return {
        **scores,
        "n_empty": sum(h.empty for h in hyps),
        "n_runaway": sum(h.runaway for h in hyps),
        "n_stop_eos": sum(h.stop == "eos" for h in hyps),
        "n_stop_newline": sum(h.stop == "newline" for h in hyps),
        "mean_tokens": sum(h.n_tokens for h in hyps) / n if n else 0.0,
        "rows": rows,
    }


# --------------------------------------------------------------------------------------
# significance


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
    _check_lengths(refs, hyps_a, hyps_b)
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
    p_value = (np.sum(diffs < 0) + 0.5 * np.sum(diffs == 0)) / n
    return {
        "metric": metric,
        "signature": str(m.get_signature()),
        "n_sentences": size,
        "n_resamples": n,
        "seed": seed,
        "score_a": score_a,
        "score_b": score_b,
        "delta": score_a - score_b,
        "mean_delta": float(diffs.mean()),
        "ci_low": float(np.percentile(diffs, 2.5)),
        "ci_high": float(np.percentile(diffs, 97.5)),
        "p_value": float(p_value),
    }
