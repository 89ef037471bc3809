"""Pairs longer than the model can take: measure, count, and truncate or skip them.

The engine already truncates a rendered example to ``max_length`` tokens (keeping the
instruction and at least one target token). Whether that is acceptable is the user's call
(``--too-long truncate|skip``); either way the run counts such pairs and records the
counts in its manifest, and skipped ones are listed with file, line and length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gdig.data.pairs import Pair
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


def token_lengths(pairs: Sequence[Pair], tokenizer: Any, template: str) -> list[int]:
    """Untruncated tokens of each rendered example (prompt + target + EOS), as the engine
    counts them (prompt and target tokenised separately)."""
    if not pairs:
        return []
    chat = template == "chat"
    prompts = [render_prompt(p, template, tokenizer) for p in pairs]
    n_prompt = tokenizer(prompts, add_special_tokens=not chat)["input_ids"]
    n_target = tokenizer([p.tgt for p in pairs], add_special_tokens=False)["input_ids"]
    return [len(a) + len(b) + 1 for a, b in zip(n_prompt, n_target, strict=True)]


def split_too_long(
    pairs: Sequence[Pair], lengths: Sequence[int], limit: int, path: str
) -> tuple[list[Pair], list[dict[str, Any]]]:
    """``(pairs within limit, skip records of the others)``."""
    kept, skipped = [], []
    for pair, n in zip(pairs, lengths, strict=True):
        if n <= limit:
            kept.append(pair)
        else:
            skipped.append(
                {
                    "file": path,
                    "line": pair.line,
                    "field": "<pair>",
                    "id": pair.id,
                    "reason": f"too long: {n} tokens > max_length {limit}",
                }
            )
    return kept, skipped
