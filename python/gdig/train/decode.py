"""Greedy translation of test pairs with a causal LM: the prompt rendered as in training
and scoring, left-padded batches, stop at EOS or a newline, empty and runaway outputs
counted (see :mod:`gdig.train.evaluate`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from gdig.engine.template import encode_pair
from gdig.io.errors import UsageError
from gdig.train.config import EvalConfig
from gdig.train.precision import Precision
from gdig.train.precision import choose as choose_precision


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


class StopRule:
    """Which rows of a batch stop at the token just generated: at EOS, or at a newline once
    some non-space text has been generated (the rule :func:`_finish` applies to the text)."""

    def __init__(self, table: TokenTable, eos: int, rows: int, device: torch.device) -> None:
        self.newline, self.text_before_newline, self.text = table.tensors(device)
        self.eos = eos
        self.seen_text = torch.zeros(rows, dtype=torch.bool, device=device)

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        t = token.clamp(0, len(self.newline) - 1)
        stop = (token == self.eos) | (
            self.newline[t] & (self.seen_text | self.text_before_newline[t])
        )
        self.seen_text |= self.text[t]
        return stop

    def keep(self, idx: torch.Tensor) -> None:
        self.seen_text = self.seen_text[idx]


def _forward_kwargs(model: Any) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def greedy(
    model: Any, prompts: Sequence[list[int]], pad: int, max_new: int, stop: StopRule
) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (one batch, left-padded), key-value cache reused.

    The prompts are read once; every later step feeds one token a row and the cache of the
    ones before. A row leaves the batch (and its cache rows are dropped) once ``stop``
    says it stopped, so the batch shrinks as translations end instead of running every row
    until the longest one stops. Returns each row's tokens up to and including its stop
    (or ``max_new`` of them).
    """
    dev = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    att = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        att[b, width - len(p) :] = 1
    ids, att = ids.to(dev), att.to(dev)
    # Left padding: positions count real tokens only (as generate() computes them).
    pos = (att.cumsum(-1) - 1).clamp_min(0)
    accepts = _forward_kwargs(model)
    # transformers 5 names the cache argument `cache`; 4.x `past_key_values`.
    cache_arg = "cache" if "cache" in accepts else "past_key_values"
    extra = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}
    cache = None  # the model makes one on the first call (use_cache=True)
    active = torch.arange(len(prompts), device=dev)  # batch row -> prompt index
    out: list[list[int]] = [[] for _ in prompts]
    step_ids, step_pos = ids, pos
    for _ in range(max_new):
        kw = {"position_ids": step_pos} if "position_ids" in accepts else {}
        kw[cache_arg] = cache
        res = model(input_ids=step_ids, attention_mask=att, use_cache=True, **kw, **extra)
        cache = getattr(res, "cache", None) or getattr(res, "past_key_values", None)
        if cache is None:
            raise RuntimeError(f"{type(model).__name__} returned no key-value cache")
        token = res.logits[:, -1].argmax(-1)
        for row, t in zip(active.tolist(), token.tolist(), strict=True):
            out[row].append(t)
        going = ~stop(token)
        if not bool(going.any()):
            break
        if not bool(going.all()):
            idx = going.nonzero().squeeze(1)
            cache.batch_select_indices(idx)
            active, att, token, step_pos = active[idx], att[idx], token[idx], step_pos[idx]
            stop.keep(idx)
        att = torch.cat([att, att.new_ones((len(active), 1))], dim=1)
        step_ids, step_pos = token[:, None], step_pos[:, -1:] + 1
    return out


def translate_loaded(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Any],
    cfg: EvalConfig,
    *,
    template: str = "paper",
    max_length: int = 512,
    progress: bool = True,
    precision: Precision | None = None,
) -> list[Hypothesis]:
    """:func:`translate` with a model and tokenizer already in memory (order of ``pairs``).

    Pairs are decoded in batches of similar prompt length (longest first: less padding,
    and the slowest batch comes first); the hypotheses come back in the order of
    ``pairs``. ``precision`` overrides ``cfg.precision`` with a choice already made
    (:func:`gdig.train.precision.choose`).
    """
    from tqdm.auto import tqdm

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
    if precision is None:
        precision = choose_precision(
            cfg.precision, model, tokens=min(len(pairs), cfg.eval_batch_size), train=False
        )
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    batches = [
        order[s : s + cfg.eval_batch_size] for s in range(0, len(order), cfg.eval_batch_size)
    ]
    out: list[Hypothesis | None] = [None] * len(pairs)
    was_training = model.training
    model.eval()
    try:
        for rows in tqdm(batches, desc="translate", unit="batch", disable=not progress):
            stop = StopRule(table, eos, len(rows), dev)
            with torch.inference_mode(), precision.autocast(dev.type):
                new = greedy(model, [prompts[r] for r in rows], pad, cfg.max_new_tokens, stop)
            for b, r in enumerate(rows):
                pid = getattr(pairs[r], "id", None)
                out[r] = _finish(new[b], tokenizer, eos, table, cfg.max_new_tokens, pid)
    finally:
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
