"""Greedy translation of test pairs with a causal LM: the prompt rendered as in training
and scoring, left-padded batches, stop at EOS or a newline, empty and runaway outputs
counted (see :mod:`gdig.train.evaluate`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from gdig.engine.template import encode_pair
from gdig.io.errors import UsageError
from gdig.train.config import EvalConfig


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
