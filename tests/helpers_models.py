"""Tiny random-weight causal LMs of several architectures and an offline byte-level tokenizer.

Everything is built from configs in memory (nothing downloaded); ``save_tiny`` writes one as
a local Hugging Face directory so ``gdig.model.load_model`` can be tested on it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

ARCHES = ("llama", "qwen2", "gpt2", "bloom")


def byte_tokenizer():
    """A byte-level tokenizer (256 byte symbols + <pad>, <s>, </s>), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def tiny_config(arch: str, vocab_size: int, hidden: int = 8, inter: int = 24, blocks: int = 2):
    """Config of a tiny model: down-projections have ``hidden * inter`` weights."""
    import transformers as tf

    common = {"vocab_size": vocab_size, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if arch == "llama":
        return tf.LlamaConfig(
            hidden_size=hidden, intermediate_size=inter, num_hidden_layers=blocks,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
            tie_word_embeddings=False, **common,
        )  # fmt: skip
    if arch == "qwen2":
        return tf.Qwen2Config(
            hidden_size=hidden, intermediate_size=inter, num_hidden_layers=blocks,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
            tie_word_embeddings=True, **common,
        )  # fmt: skip
    if arch == "gpt2":
        return tf.GPT2Config(
            n_embd=hidden, n_inner=inter, n_layer=blocks, n_head=2, n_positions=512,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common,
        )  # fmt: skip
    if arch == "bloom":
        return tf.BloomConfig(
            hidden_size=hidden, n_layer=blocks, n_head=2, hidden_dropout=0.0,
            attention_dropout=0.0, **common,
        )  # fmt: skip
    raise ValueError(f"unknown tiny architecture {arch!r}; use one of {ARCHES}")


def tiny_model(arch: str, dtype: torch.dtype = torch.float32, seed: int = 0, **kw):
    """``(model, tokenizer)``: a random tiny ``arch`` model in eval mode."""
    from transformers import AutoModelForCausalLM

    tok = byte_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tok), **kw))
    # Random init is tiny (std 0.02): scale up so gradients are far from round-off.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model.to(dtype).eval(), tok


def save_tiny(arch: str, path: Path, **kw) -> Path:
    model, tok = tiny_model(arch, **kw)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def data_dir() -> Path:
    """The project's real parallel text: ``$GDIG_DATA_DIR``, else ``../shared/data`` beside
    the repository (the benchmarks' harness reads the same folder)."""
    root = Path(__file__).resolve().parent.parent
    return Path(os.environ.get("GDIG_DATA_DIR") or root.parent / "shared" / "data")


def real_pairs(name: str = "ding.de-en.jsonl", start: int = 0, n: int = 8):
    """``n`` pairs of a file in :func:`data_dir`, from line ``start``; the test is skipped
    (not failed) where the data is not there."""
    import pytest

    if not (data_dir() / name).is_file():
        pytest.skip(f"real pairs {name} not found in {data_dir()} (set GDIG_DATA_DIR)")
    sys.path.append(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from harness import real_pairs as read

    return read(name, start, n, data_dir())


def toy_pairs(n: int, seed: int = 0):
    """``n`` short synthetic de->en pairs (distinct ids) for tiny-model tests."""
    import random

    from gdig.data.pairs import Pair

    rng = random.Random(seed)
    words = ["haus", "katze", "hund", "baum", "auto", "buch", "see", "berg", "rot", "blau"]
    out = []
    for i in range(n):
        src = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
        tgt = " ".join(rng.choice(words)[::-1] for _ in range(rng.randint(1, 4)))
        out.append(Pair(f"toy-{i}", src, tgt, "de", "en"))
    return out


def toy_run_files(folder, n_seeds: int, n_pool: int, seed: int = 0, noise_every: int = 4):
    """``(seeds.jsonl, pool.jsonl)`` of toy pairs in ``folder``; every ``noise_every``-th
    pool pair is made untranslated (target = source) and labelled in its ``noise`` field."""
    from gdig.data.pairs import write_jsonl

    pairs = toy_pairs(n_seeds + n_pool, seed=seed)
    seeds, pool = folder / "seeds.jsonl", folder / "pool.jsonl"
    write_jsonl(seeds, [p.to_record() for p in pairs[:n_seeds]])
    records = [dict(p.to_record(), noise="clean") for p in pairs[n_seeds:]]
    for rec in records[::noise_every]:
        rec["tgt"], rec["noise"] = rec["src"], "untranslated"
    write_jsonl(pool, records)
    return seeds, pool
