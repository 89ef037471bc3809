"""Batching of gdig.train: length-grouped training batches (a seeded random order that pads
less) and decoding on the key-value cache (the same hypotheses as recomputing every prefix
one sentence at a time, in the order of the input)."""

from __future__ import annotations

import functools
import importlib
import json
import math
import random

import pytest
import torch
from helpers_models import save_tiny, tiny_model, toy_pairs

from gdig.data.pairs import Pair
from gdig.train import EvalConfig, FinetuneConfig, finetune, translate_loaded

schedule_mod = importlib.import_module("gdig.train.schedule")
decode_mod = importlib.import_module("gdig.train.decode")
DataOrder = schedule_mod.DataOrder


def _padding(batches, lengths):
    return sum(max(lengths[r] for r in b) * len(b) - sum(lengths[r] for r in b) for b in batches)


@pytest.mark.parametrize("n, bsz, grouping", [(150, 8, 16), (37, 4, 3), (5, 8, 4), (64, 8, 1)])
def test_grouped_batches_cover_each_example_once_per_epoch(n, bsz, grouping):
    lengths = [random.Random(i).randint(5, 60) for i in range(n)]
    order = DataOrder(n, bsz, 7, lengths, grouping)
    for epoch in range(3):
        batches = [order.rows(epoch * order.per_epoch + j) for j in range(order.per_epoch)]
        assert order.per_epoch == math.ceil(n / bsz)
        assert sorted(r for b in batches for r in b) == list(range(n))
        assert all(1 <= len(b) <= bsz for b in batches)


def test_grouping_one_is_the_plain_seeded_permutation():
    n, bsz = 30, 4
    g = torch.Generator().manual_seed(schedule_mod.epoch_seed(3, 1))
    perm = torch.randperm(n, generator=g).tolist()
    order = DataOrder(n, bsz, 3, list(range(n)), grouping=1)
    got = [order.rows(order.per_epoch + j) for j in range(order.per_epoch)]
    assert got == [perm[s : s + bsz] for s in range(0, n, bsz)]


def test_grouped_order_pads_less_is_seeded_and_still_random():
    n, bsz = 400, 8
    rng = random.Random(0)
    lengths = [rng.randint(20, 90) for _ in range(n)]

    def epoch(seed, grouping, e=0):
        return DataOrder(n, bsz, seed, lengths, grouping).epoch_batches(e)

    grouped, plain = epoch(1, 16), epoch(1, 1)
    assert _padding(grouped, lengths) < 0.3 * _padding(plain, lengths)
    # a pure function of (seed, epoch): a fresh object (as after a resume) agrees
    assert epoch(1, 16) == grouped and epoch(1, 16, e=1) != grouped
    assert epoch(2, 16) != grouped
    # batches are not served by length: the epoch's longest batches are spread out
    longest = [max(lengths[r] for r in b) for b in grouped]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)
    # and each batch is not always the same set across epochs
    assert {frozenset(b) for b in grouped} != {frozenset(b) for b in epoch(1, 16, e=1)}


def test_finetune_records_less_padding_with_grouping(tmp_path):
    base = save_tiny("llama", tmp_path / "tiny")
    rng = random.Random(0)
    words = ["haus", "katze", "hund", "baum", "auto", "buch"]
    pairs = [
        Pair(
            f"p{i}",
            " ".join(rng.choices(words, k=k)),
            " ".join(rng.choices(words, k=k)),
            "de",
            "en",
        )
        for i, k in enumerate(rng.choices([1, 2, 8, 16], k=16))
    ]
    shares = {}
    for grouping in (1, 4):
        cfg = FinetuneConfig(
            epochs=1, train_batch_size=4, length_grouping=grouping, precision="fp32", log_every=0
        )
        out = finetune(base, pairs, tmp_path / f"g{grouping}", cfg, progress=False)
        meta = json.loads((out / "gdig_finetune.json").read_text())
        assert meta["examples_seen"] == 16 and meta["seconds_per_example"] > 0
        shares[grouping] = meta["padding_share"]
    assert shares[4] < 0.5 * shares[1], shares


# --------------------------------------------------------------------------------------
# decoding


def _no_cache_greedy(model, prompt, max_new):
    """The oracle: one sentence, no padding, the whole prefix recomputed for every token."""
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(input_ids=torch.tensor([prompt + out]), use_cache=False).logits
            out.append(int(logits[0, -1].argmax()))
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cached_batched_decoding_equals_the_no_cache_oracle(arch):
    model, tok = tiny_model(arch, hidden=16, inter=32)
    eos = tok.eos_token_id
    newline = tok.encode("\n", add_special_tokens=False)[0]
    with torch.no_grad():  # make EOS and newline likely enough that rows stop at many steps
        model.get_output_embeddings().weight[[eos, newline]] *= 1.5
    pairs = toy_pairs(12)
    max_new = 12
    widths = []
    real_forward = model.forward

    @functools.wraps(real_forward)  # the decoder reads the signature
    def recording(*a, **k):
        widths.append(tuple(k["input_ids"].shape))
        return real_forward(*a, **k)

    model.forward = recording
    cfg = EvalConfig(max_new_tokens=max_new, eval_batch_size=5, precision="fp32")
    hyps = translate_loaded(model, tok, pairs, cfg, progress=False)
    model.forward = real_forward

    table = decode_mod.TokenTable.build(tok, len(tok))
    for p, h in zip(pairs, hyps, strict=True):
        prompt = decode_mod.prompt_ids(p, tok, "paper", 512)
        want = decode_mod._finish(
            _no_cache_greedy(model, prompt, max_new), tok, eos, table, max_new, p.id
        )
        assert h == want
    if arch == "llama":  # with these weights rows stop in all three ways
        assert {h.stop for h in hyps} == {"eos", "newline", "length"}
    # the cache is used: after each batch's first pass every pass feeds one token a row,
    # and a row leaves the batch once it stopped
    firsts = [i for i, (_, t) in enumerate(widths) if t > 1]
    assert len(firsts) == 3  # 12 pairs in batches of 5
    assert all(t == 1 for i, (_, t) in enumerate(widths) if i not in firsts)
    rows = [b for b, _ in widths]
    if any(h.stop != "length" for h in hyps):
        assert any(rows[i + 1] < rows[i] for i in range(len(rows) - 1) if i + 1 not in firsts)


def test_decoding_sorts_by_length_and_returns_the_input_order():
    model, tok = tiny_model("llama")
    pairs = [Pair(f"p{i}", "w " * k, "x", "de", "en") for i, k in enumerate([1, 9, 3, 12, 2, 7, 5])]
    seen = []
    real = decode_mod.greedy

    def spy(model, prompts, *a, **k):
        seen.append([len(p) for p in prompts])
        return real(model, prompts, *a, **k)

    decode_mod.greedy = spy
    try:
        cfg = EvalConfig(max_new_tokens=3, eval_batch_size=3, precision="fp32")
        hyps = translate_loaded(model, tok, pairs, cfg, progress=False)
    finally:
        decode_mod.greedy = real
    flat = [n for b in seen for n in b]
    assert flat == sorted(flat, reverse=True) and [len(b) for b in seen] == [3, 3, 1]
    assert [h.id for h in hyps] == [p.id for p in pairs]
    # each hypothesis is its own pair's: decoding one pair alone gives the same
    alone = translate_loaded(model, tok, [pairs[3]], cfg, progress=False)
    assert alone[0] == hyps[3]
