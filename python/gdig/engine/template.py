"""Rendering a translation pair as prompt + target tokens, with the loss mask (METHOD.md §1).

The prompt and the target are tokenised separately and concatenated, so the boundary between
them (where the loss starts) is exact whatever the tokenizer merges across it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PAPER_TEMPLATE = 'Translate the following text into {tgt_lang_name}\n\nText:\n"{src}"\n\n'

LANGUAGE_NAMES = {
    "ar": "Arabic",
    "cs": "Czech",
    "de": "German",
    "en": "English",
    "es": "Spanish",
    "fi": "Finnish",
    "fr": "French",
    "hi": "Hindi",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "nl": "Dutch",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "sv": "Swedish",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "vi": "Vietnamese",
    "zh": "Chinese",
}


def language_name(code: str | None, default: str = "English") -> str:
    """English name of a language code ('zh', 'de-DE', 'zh_Hans'); unknown codes pass through."""
    if not code:
        return default
    base = code.replace("_", "-").split("-")[0].lower()
    return LANGUAGE_NAMES.get(base, code)


@dataclass
class Encoded:
    """One tokenised example: ``input_ids`` and how many leading tokens are prompt."""

    input_ids: list[int]
    n_prompt: int

    def __len__(self) -> int:
        return len(self.input_ids)


def render_prompt(pair: Any, template: str, tokenizer: Any) -> str:
    """Prompt text of a pair (anything with src, src_lang, tgt_lang attributes)."""
    values = {
        "src": pair.src,
        "src_lang_name": language_name(getattr(pair, "src_lang", None), default="the source"),
        "tgt_lang_name": language_name(getattr(pair, "tgt_lang", None)),
    }
    if template == "chat":
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                "template='chat' but the tokenizer has no chat template; use template='paper' "
                "or a format string"
            )
        user = PAPER_TEMPLATE.format(**values).rstrip("\n")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    fmt = PAPER_TEMPLATE if template == "paper" else template
    try:
        return fmt.format(**values)
    except (KeyError, IndexError) as exc:
        raise ValueError(
            f"template {fmt!r} uses an unknown field {exc}; available: {sorted(values)}"
        ) from exc


def encode_parts(
    pairs: Sequence[Any], tokenizer: Any, template: str
) -> list[tuple[list[int], list[int]]]:
    """Untruncated ``(prompt ids, target ids + EOS)`` of each pair: the one rule by which an
    example is tokenised. :func:`encode_pair` truncates it; the run's length check
    (``gdig.pipeline.lengths``) counts it, so "too long" means what the engine would cut."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; set one (tokenizer.eos_token = ...)")
    prompts = [render_prompt(p, template, tokenizer) for p in pairs]
    # Chat templates already carry their special tokens (BOS included).
    prompt_ids = tokenizer(prompts, add_special_tokens=template != "chat")["input_ids"]
    target_ids = tokenizer([p.tgt for p in pairs], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id]
    return [(list(a), list(b) + eos) for a, b in zip(prompt_ids, target_ids, strict=True)]


def encode_pair(pair: Any, tokenizer: Any, template: str, max_length: int) -> Encoded:
    """Tokens of prompt + target + EOS; the loss covers target and EOS only.

    Too-long examples keep the head of the prompt (the instruction) and as much of the target
    as fits, always at least one target token.
    """
    prompt, target = encode_parts([pair], tokenizer, template)[0]
    if len(prompt) + len(target) > max_length:
        room = max(max_length - len(prompt), max_length // 2, 1)
        keep_target = min(len(target), room)
        prompt = prompt[: max(max_length - keep_target, 0)]
        target = target[:keep_target]
    return Encoded(input_ids=list(prompt) + list(target), n_prompt=len(prompt))
