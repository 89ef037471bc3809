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
from gdig.engine.template import render_prompt

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


def token_lengths(
    pairs: Sequence[Pair], tokenizer: Any, template: str, progress: bool = False
) -> np.ndarray:
    """Untruncated tokens of each rendered example (prompt + target + EOS), as the engine
    counts them (prompt and target tokenised separately); int64 ``[len(pairs)]``."""
    from tqdm.auto import tqdm

    chat = template == "chat"
    out = np.zeros(len(pairs), dtype=np.int64)
    with tqdm(total=len(pairs), desc="measure lengths", unit="ex", disable=not progress) as bar:
        for start in range(0, len(pairs), _CHUNK):
            chunk = pairs[start : start + _CHUNK]
            prompts = [render_prompt(p, template, tokenizer) for p in chunk]
            n_prompt = tokenizer(prompts, add_special_tokens=not chat)["input_ids"]
            n_target = tokenizer([p.tgt for p in chunk], add_special_tokens=False)["input_ids"]
            out[start : start + len(chunk)] = [
                len(a) + len(b) + 1 for a, b in zip(n_prompt, n_target, strict=True)
            ]
            bar.update(len(chunk))
    return out


def too_long_records(
    pairs: PoolIndex, lengths: np.ndarray, limit: int, path: str
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``(mask of the pairs within limit, skip records of the others)``."""
    keep = np.asarray(lengths) <= limit
    long_rows = np.flatnonzero(~keep)
    long_pairs = pairs.records(long_rows)
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
