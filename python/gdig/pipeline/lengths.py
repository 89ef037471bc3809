"""Pairs longer than the model can take: measure, count, and truncate or skip them.

The engine already truncates a rendered example to ``max_length`` tokens (keeping the
instruction and at least one target token). Whether that is acceptable is the user's call
(``--too-long truncate|skip``); either way the run counts such pairs and records the
counts in its manifest, and skipped ones are listed with file, line and length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gdig.data.pairs import Pair
from gdig.data.pool import PoolIndex
from gdig.engine.template import encode_parts, render_prompt

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length")


def model_context(model: Any) -> int | None:
    """Longest sequence the model's position scheme allows, from its config (None: unknown)."""
    cfg = getattr(model, "config", None)
    for key in _CONTEXT_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


_CHUNK = 4096  # pairs tokenised at once: a pool is measured without holding its texts


def byte_bounded(tokenizer: Any) -> bool:
    """True when no text can have more tokens than UTF-8 bytes: a fast byte-level BPE
    tokenizer without a normalizer (GPT-2 style, SmolLM2's). Every BPE token is a merge of
    one or more byte symbols, and the pre-tokenizer only splits, so ``tokens <= bytes``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.normalizer is not None:
        return False
    return "ByteLevel" in repr(backend.pre_tokenizer) and type(backend.model).__name__ == "BPE"


def token_lengths(
    pairs: Sequence[Pair],
    tokenizer: Any,
    template: str,
    progress: bool = False,
    limit: int | None = None,
) -> np.ndarray:
    """Untruncated tokens of each rendered example (prompt + target + EOS), as the engine
    counts them (prompt and target tokenised separately); int64 ``[len(pairs)]``.

    With ``limit`` and a :func:`byte_bounded` tokenizer, a pair whose UTF-8 bytes (plus the
    special tokens) cannot exceed ``limit`` is not tokenised: its entry is that bound, which
    is ``<= limit``, so every comparison with ``limit`` is exact while most of a pool of
    sentences is never tokenised (the check was two thirds of the time after scoring).
    """
    from tqdm.auto import tqdm

    chat = template == "chat"
    specials = len(tokenizer("", add_special_tokens=not chat)["input_ids"])
    bounded = limit is not None and byte_bounded(tokenizer)
    out = np.zeros(len(pairs), dtype=np.int64)
    with tqdm(total=len(pairs), desc="measure lengths", unit="ex", disable=not progress) as bar:
        for start in range(0, len(pairs), _CHUNK):
            chunk = pairs[start : start + _CHUNK]
            todo = range(len(chunk))
            if bounded:  # encode_parts' tokens: at most the bytes, the specials and EOS
                bound = [
                    len(render_prompt(p, template, tokenizer).encode())
                    + len(p.tgt.encode())
                    + specials
                    + 1
                    for p in chunk
                ]
                out[start : start + len(chunk)] = bound
                todo = [i for i, b in enumerate(bound) if b > limit]
            if todo:
                parts = encode_parts([chunk[i] for i in todo], tokenizer, template)
                for i, (prompt, target) in zip(todo, parts, strict=True):
                    out[start + i] = len(prompt) + len(target)
            bar.update(len(chunk))
    return out


def too_long_records(
    pairs: PoolIndex, lengths: np.ndarray, limit: int, path: str
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``(mask of the pairs within limit, skip records of the others)``."""
    keep = np.asarray(lengths) <= limit
    long_rows = np.flatnonzero(~keep)
    long_pairs = pairs.take(long_rows)
    skipped = [
        {
            "file": path,
            "line": pair.line,
            "field": "<pair>",
            "id": pair.id,
            "reason": f"too long: {int(lengths[r])} tokens > max_length {limit}",
        }
        for r, pair in zip(long_rows.tolist(), long_pairs, strict=True)
    ]
    return keep, skipped
