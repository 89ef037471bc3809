"""``gdig eval``: translate a test file with a causal LM and score the translations
(BLEU, chrF); the hypotheses are written next to the scores.

Decoding (:mod:`gdig.train.decode`): the prompt of a test pair is rendered exactly as in
training and influence scoring (:func:`gdig.engine.template.encode_pair`, its prompt part),
left-padded for batching, and decoded greedily. A translation ends at EOS, or at the first
newline that follows some non-space generated text (leading newlines are skipped; the text
after the newline is dropped and the rest stripped), or after ``max_new_tokens`` tokens:
such a translation is a *runaway*. Empty and runaway outputs are counted, never fatal; a
tiny or untrained model produces plenty of both. They and the other format failures of a
base model (a bare ``English:``, a line of the prompt, the source copied) are counted
apart from translation quality, which is also scored on the well-formed outputs alone.

Scores (:mod:`gdig.train.metrics`) are sacrebleu's corpus BLEU and chrF (their signatures
are returned with them); ``paired_bootstrap`` compares two systems on the same references.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gdig.io.atomic import atomic_open, atomic_write_text
from gdig.io.errors import UsageError
from gdig.train.config import EvalConfig
from gdig.train.decode import translate_loaded
from gdig.train.failures import format_failures
from gdig.train.metrics import summarize
from gdig.train.precision import choose as choose_precision


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
    ``n_runaway``, ``n_stop_eos``, ``n_stop_newline``, ``mean_tokens``), the format
    failures apart from quality (``format_failures`` by kind, ``n_format_failures``,
    ``well_formed``: BLEU and chrF of the other outputs; :mod:`gdig.train.failures`), the
    settings, the precision used and why (``precision``), times (``wall_s`` with the model
    load, ``decode_s``, ``seconds_per_sentence``) and ``rows``: one record per pair (id,
    src, ref, hyp, empty, runaway, n_tokens, format_failure). With ``out_file`` the rows
    are written there as JSONL and everything else to ``out_file`` with suffix ``.json``,
    both atomically.
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
    from gdig.model.load import load_model

    t0 = time.perf_counter()
    model, tokenizer = load_model(model_path, device=device, dtype="float32", progress=progress)
    precision = choose_precision(
        cfg.precision, model, tokens=min(len(pairs), cfg.eval_batch_size), train=False
    )
    t1 = time.perf_counter()
    hyps = translate_loaded(
        model,
        tokenizer,
        pairs,
        cfg,
        template=template,
        max_length=max_length,
        progress=progress,
        precision=precision,
    )
    decode_s = time.perf_counter() - t1
    try:
        failures = format_failures(pairs, hyps, template, tokenizer)
    except ValueError as e:  # the template cannot be rendered (translate_loaded said so first)
        raise UsageError(f"evaluate: {e}") from None
    result = summarize(pairs, hyps, failures)
    result.update(
        {
            "model": str(Path(model_path)),
            "template": template,
            "max_length": max_length,
            "config": dataclasses.asdict(cfg),
            "precision": precision.as_dict(),
            "wall_s": time.perf_counter() - t0,
            "decode_s": decode_s,
            "seconds_per_sentence": decode_s / len(pairs),
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
