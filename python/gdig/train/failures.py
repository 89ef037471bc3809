"""Format failures of a translation: outputs that are no attempt at a translation at all.

A base model prompted to translate often answers with the format rather than the content:
nothing, a label such as ``English:`` and a stop, a line of the prompt, the source itself,
or text that never stops. Such outputs score near zero whatever the model knows, so they
are counted apart from translation quality (:func:`gdig.train.metrics.summarize` scores the
well-formed outputs on their own too). The first rule that applies names the failure:

    empty     nothing but spaces (it stopped at once, or only produced newlines)
    runaway   reached --max-new-tokens without EOS or a newline
    label     only a label: one to three words ending with a colon (``English:``)
    echo      whole words of the prompt's own wording (the instruction, ``Text:``), not the source
    copy      the source, untranslated, where the reference differs from it
    script    mostly letters of another script than the reference's: the source's Chinese
              edited a little for an English target, say (untranslated or another language)

Quotes and spaces around the output are ignored; echo and copy compare case-insensitively.
A script is the first word of the Unicode name of most of the letters (LATIN, CYRILLIC,
CJK; kana count as CJK), so no language identifier is needed.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from gdig.engine.template import render_prompt

FAILURES = ("empty", "runaway", "label", "echo", "copy", "script")
_SAME_SCRIPT = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "FULLWIDTH": "LATIN"}

_LABEL = re.compile(r"^\W*\w+(?:[ \t]+\w+){0,2}[ \t]*[:：]\W*$")
_QUOTES = "\"'“”‘’「」『』«» \t"


def _bare(text: str) -> str:
    return " ".join(text.strip(_QUOTES).split()).casefold()


def instruction_text(pair: Any, template: str, tokenizer: Any) -> str:
    """The prompt of ``pair`` with its source left out: what an echo would repeat."""
    bare = SimpleNamespace(
        src="", src_lang=getattr(pair, "src_lang", None), tgt_lang=getattr(pair, "tgt_lang", None)
    )
    return render_prompt(bare, template, tokenizer)


def format_failure(text: str, *, runaway: bool, src: str, ref: str, instruction: str) -> str | None:
    """The failure kind of one output (see the module's table), or None when well formed."""
    bare = _bare(text)
    if not bare:
        return "empty"
    if runaway:
        return "runaway"
    if _LABEL.match(text.strip()):
        return "label"
    if re.search(r"(?<!\w)" + re.escape(bare) + r"(?!\w)", _bare(instruction)):
        return "echo"
    if bare == _bare(src) and _bare(src) != _bare(ref):
        return "copy"
    ref_script = script(ref)
    if ref_script is not None and script(text) not in (None, ref_script):
        return "script"
    return None


def script(text: str) -> str | None:
    """The script most of ``text``'s letters are written in (None without letters)."""
    counts: Counter[str] = Counter()
    for ch in text:
        if ch.isalpha():
            name = unicodedata.name(ch, "").split(" ", 1)[0]
            counts[_SAME_SCRIPT.get(name, name)] += 1
    return counts.most_common(1)[0][0] if counts else None


def format_failures(
    pairs: Sequence[Any], hyps: Sequence[Any], template: str, tokenizer: Any
) -> list[str | None]:
    """:func:`format_failure` of each hypothesis (``text``, ``runaway``) against its pair."""
    return [
        format_failure(
            h.text,
            runaway=h.runaway,
            src=p.src,
            ref=p.tgt,
            instruction=instruction_text(p, template, tokenizer),
        )
        for p, h in zip(pairs, hyps, strict=True)
    ]
