"""Rendering, tokenising and masking examples; length-bucketed batches."""

from __future__ import annotations

import pytest
import torch
from helpers_models import byte_tokenizer, tiny_model, toy_pairs

from gdig.data.pairs import Pair
from gdig.engine import (
    PAPER_TEMPLATE,
    collate,
    encode_pair,
    example_losses,
    language_name,
    plan_batches,
    render_prompt,
)


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_paper_template_and_language_names(tok):
    pair = Pair("x", "我们试试看", "Let's try.", "zh", "en")
    assert render_prompt(pair, "paper", tok) == (
        'Translate the following text into English\n\nText:\n"我们试试看"\n\n'
    )
    assert PAPER_TEMPLATE.startswith("Translate the following text into {tgt_lang_name}")
    assert language_name("de") == "German" and language_name("zh_Hans") == "Chinese"
    assert language_name("xx") == "xx" and language_name(None) == "English"
    custom = "{src_lang_name} -> {tgt_lang_name}: {src} = "
    assert render_prompt(pair, custom, tok) == "Chinese -> English: 我们试试看 = "
    with pytest.raises(ValueError, match="unknown field"):
        render_prompt(pair, "{src} {nope}", tok)
    with pytest.raises(ValueError, match="no chat template"):
        render_prompt(pair, "chat", tok)


def test_encoding_masks_prompt_and_ends_with_eos(tok):
    pair = Pair("x", "haus", "house", "de", "en")
    e = encode_pair(pair, tok, "paper", 512)
    assert e.input_ids[-1] == tok.eos_token_id
    assert tok.decode(e.input_ids[e.n_prompt :]) == "house</s>"
    assert tok.decode(e.input_ids[: e.n_prompt]).endswith('"haus"\n\n')
    short = encode_pair(pair, tok, "paper", 20)
    assert len(short) == 20 and len(short) - short.n_prompt >= 1  # some target is kept


def test_chat_template(tok):
    tok = byte_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    )
    e = encode_pair(Pair("x", "haus", "house", "de", "en"), tok, "chat", 512)
    prompt = tok.decode(e.input_ids[: e.n_prompt])
    assert prompt.startswith("<user>Translate the following text into English")
    assert prompt.endswith("<assistant>")
    assert tok.decode(e.input_ids[e.n_prompt :]) == "house</s>"


def test_loss_is_mean_over_target_tokens_only(tok):
    model, tok = tiny_model("gpt2", dtype=torch.float64)
    pairs = toy_pairs(3, seed=9)
    enc = [encode_pair(p, tok, "paper", 512) for p in pairs]
    batch = collate(enc, [0, 1, 2], tok.pad_token_id, "cpu")
    with torch.no_grad():
        got = example_losses(model, batch)
        for i, e in enumerate(enc):
            ids = torch.tensor([e.input_ids])
            logits = model(input_ids=ids).logits[0]
            want = torch.nn.functional.cross_entropy(
                logits[e.n_prompt - 1 : -1], ids[0, e.n_prompt :]
            )
            assert torch.allclose(got[i], want, rtol=1e-10)


def test_plan_batches_buckets_by_length():
    lengths = [5, 50, 7, 48, 6, 49, 30]
    batches = plan_batches(lengths, max_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert all(len(b) * max(lengths[i] for i in b) <= 100 for b in batches)
    assert batches[0] == [1, 5]  # longest first, neighbours in length together
    fixed = plan_batches(lengths, batch_size=3)
    assert [len(b) for b in fixed] == [3, 3, 1]
    one_long = plan_batches([500], max_tokens=100)
    assert one_long == [[0]]  # a single example never gets split or dropped
