"""gdig.train: fine-tuning (loss goes down, determinism, kill-and-resume, refusal of a foreign
checkpoint) and evaluation (greedy translation, stop rules, BLEU/chrF, paired bootstrap) on a
tiny random LLaMA."""

from __future__ import annotations

import dataclasses
import importlib
import json
import random

import pytest
import torch
from helpers_models import byte_tokenizer, save_tiny, tiny_model, toy_pairs
from safetensors.torch import load_file

from gdig.data.pairs import Pair
from gdig.engine.batching import collate
from gdig.engine.capture import example_losses
from gdig.engine.template import encode_pair
from gdig.io.errors import UsageError
from gdig.io.validate import OptionError
from gdig.model.load import load_model
from gdig.train import (
    EvalConfig,
    FinetuneConfig,
    evaluate,
    finetune,
    paired_bootstrap,
    score_hypotheses,
    translate_loaded,
)

# The package re-exports the functions under the modules' names: get the modules themselves.
finetune_mod = importlib.import_module("gdig.train.finetune")
schedule_mod = importlib.import_module("gdig.train.schedule")
decode_mod = importlib.import_module("gdig.train.decode")
metrics_mod = importlib.import_module("gdig.train.metrics")

# A short run: 6 optimizer steps of 2 micro-batches of 4 examples, checkpoints at 2 and 4.
SHORT = FinetuneConfig(
    max_steps=6,
    learning_rate=1e-2,
    train_batch_size=4,
    grad_accum=2,
    checkpoint_every=2,
    precision="fp32",
)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("base") / "tiny")


@pytest.fixture(scope="module")
def pairs():
    return toy_pairs(12)


@pytest.fixture(scope="module")
def reference_run(base, pairs, tmp_path_factory):
    """The uninterrupted SHORT run: (weights, meta)."""
    out = finetune(base, pairs, tmp_path_factory.mktemp("ref") / "ft", SHORT, progress=False)
    return _weights(out), json.loads((out / "gdig_finetune.json").read_text())


def _weights(out):
    return load_file(out / "model.safetensors")


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _mean_loss(path, pairs):
    model, tok = load_model(path, progress=False)
    enc = [encode_pair(p, tok, "paper", 512) for p in pairs]
    with torch.no_grad():
        batch = collate(enc, list(range(len(enc))), tok.pad_token_id, "cpu")
        return float(example_losses(model, batch).mean())


# --------------------------------------------------------------------------------------
# config


def test_configs_validate_and_carry_help():
    clash = {"budget", "seed", "batch_size", "max_length", "template", "device", "out"}
    clash |= {"model", "pool", "seeds", "dtype", "progress"}
    for cls in (FinetuneConfig, EvalConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f.name
            assert f.name not in clash, f.name
    assert FinetuneConfig().epochs == 2.0 and EvalConfig().max_new_tokens == 96
    for bad in (
        {"epochs": 0},
        {"max_steps": 0},
        {"learning_rate": 0.0},
        {"train_batch_size": 0},
        {"grad_accum": 0},
        {"warmup_ratio": 1.0},
        {"weight_decay": -1.0},
        {"checkpoint_every": -1},
    ):
        with pytest.raises(OptionError, match=next(iter(bad)).replace("_", "-")):
            FinetuneConfig(**bad)
    with pytest.raises(OptionError, match="max-new-tokens"):
        EvalConfig(max_new_tokens=0)


def test_schedule_warms_up_then_decays_to_zero():
    cfg = FinetuneConfig(epochs=1.5, train_batch_size=4, grad_accum=2, warmup_ratio=0.2)
    total = schedule_mod.total_steps(cfg, 30)  # 8 micro-batches an epoch -> 12 -> 6 steps
    assert total == 6 and schedule_mod.warmup_steps(cfg, total) == 2
    f = [schedule_mod.lr_factor(s, 6, 2) for s in range(6)]
    assert f == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    assert schedule_mod.total_steps(dataclasses.replace(cfg, max_steps=3), 30) == 3


# --------------------------------------------------------------------------------------
# fine-tuning


def test_finetune_lowers_the_loss_and_loads(base, tmp_path):
    from transformers import AutoModelForCausalLM

    data = toy_pairs(30)
    cfg = FinetuneConfig(max_steps=20, learning_rate=1e-2, train_batch_size=4, checkpoint_every=0)
    out = finetune(base, data, tmp_path / "ft", cfg, progress=False)
    meta = json.loads((out / "gdig_finetune.json").read_text())
    assert len(meta["losses"]) == 20 and meta["config"]["precision"] == "auto"
    # auto measured both precisions on this CPU and kept one, saying why
    chosen = meta["precision"]
    assert chosen["requested"] == "auto" and chosen["name"] in ("fp32", "bf16")
    assert chosen["fp32_s"] > 0 and chosen["bf16_s"] > 0 and "ms" in chosen["reason"]
    assert sum(meta["losses"][-5:]) / 5 < 0.8 * meta["losses"][0]
    before, after = _mean_loss(base, data), _mean_loss(out, data)
    assert after < before - 1.0, (before, after)
    assert not (out / "checkpoint").exists()
    assert not list(tmp_path.glob(".*tmp*"))
    AutoModelForCausalLM.from_pretrained(out, local_files_only=True)


def test_same_seed_same_weights_other_seed_differs(base, pairs, reference_run, tmp_path):
    ref_weights, ref_meta = reference_run
    again = finetune(base, pairs, tmp_path / "again", SHORT, progress=False)
    assert _same(_weights(again), ref_weights)
    assert json.loads((again / "gdig_finetune.json").read_text())["losses"] == ref_meta["losses"]
    other = dataclasses.replace(SHORT, train_seed=1)
    other_out = finetune(base, pairs, tmp_path / "other", other, progress=False)
    assert not _same(_weights(other_out), ref_weights)


class _Killed(KeyboardInterrupt):
    pass


def _kill_at_forward(monkeypatch, n_call):
    """Make the n_call-th training forward raise, as a kill would stop the run there."""
    calls = {"n": 0}
    real = finetune_mod.example_losses

    def killing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n_call:
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune_mod, "example_losses", killing)


def test_kill_and_resume_gives_the_uninterrupted_weights(
    base, pairs, reference_run, tmp_path, monkeypatch
):
    ref_weights, ref_meta = reference_run
    out = tmp_path / "ft"
    with monkeypatch.context() as m:
        _kill_at_forward(m, 9)  # step 5's first micro-batch: last checkpoint is step 4's
        with pytest.raises(_Killed):
            finetune(base, pairs, out, SHORT, progress=False)
    assert (out / "checkpoint" / "state.pt").is_file()
    assert not (out / "model.safetensors").exists()
    finetune(base, pairs, out, SHORT, progress=False)
    meta = json.loads((out / "gdig_finetune.json").read_text())
    assert meta["resumed_at_steps"] == [4]
    # Exact: the resumed run restores fp32 weights, AdamW moments, scheduler and RNG state
    # and redoes steps 5-6 with the same batches and the same kernels on the same threads,
    # so nothing differs, not even the rounding.
    assert _same(_weights(out), ref_weights)
    assert meta["losses"] == ref_meta["losses"]
    assert not (out / "checkpoint").exists()


def test_foreign_checkpoint_refused_unless_restart(base, pairs, tmp_path, monkeypatch):
    cfg = FinetuneConfig(max_steps=3, train_batch_size=4, checkpoint_every=1, precision="fp32")
    out = tmp_path / "ft"
    with monkeypatch.context() as m:
        _kill_at_forward(m, 2)
        with pytest.raises(_Killed):
            finetune(base, pairs, out, cfg, progress=False)
    other = dataclasses.replace(cfg, learning_rate=5e-3, max_steps=2)
    with pytest.raises(UsageError, match=r"learning_rate.*restart") as err:
        finetune(base, pairs, out, other, progress=False)
    assert "max_steps" in str(err.value)
    with pytest.raises(UsageError, match="training pairs"):
        finetune(base, pairs[:-1], out, cfg, progress=False)
    finetune(base, pairs, out, other, progress=False, restart=True)
    meta = json.loads((out / "gdig_finetune.json").read_text())
    assert meta["config"]["learning_rate"] == 5e-3 and meta["resumed_at_steps"] == []
    # A finished model: the same run again is a no-op; another one is refused.
    monkeypatch.setattr("gdig.model.load.load_model", lambda *a, **k: pytest.fail("reloaded"))
    assert finetune(base, pairs, out, other, progress=False) == out
    # Killed between the two renames of the final swap: the old folder is put back.
    out.rename(tmp_path / ".ft.tmp-old")
    assert finetune(base, pairs, out, other, progress=False) == out
    assert (out / "model.safetensors").is_file() and not (tmp_path / ".ft.tmp-old").exists()
    with pytest.raises(UsageError, match="model of another"):
        finetune(base, pairs, out, cfg, progress=False)


def test_finetune_refuses_bad_outputs(base, pairs, tmp_path):
    with pytest.raises(UsageError, match="no training pairs"):
        finetune(base, [], tmp_path / "ft", SHORT, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        finetune(base, pairs, foreign, SHORT, progress=False, restart=True)
    with pytest.raises(UsageError, match="base model"):
        finetune(base, pairs, base, SHORT, progress=False)


# --------------------------------------------------------------------------------------
# translation and scoring


def test_prompt_is_rendered_as_in_training():
    tok = byte_tokenizer()
    for p in toy_pairs(3):
        enc = encode_pair(p, tok, "paper", 512)
        assert decode_mod.prompt_ids(p, tok, "paper", 512) == enc.input_ids[: enc.n_prompt]


def test_evaluate_counts_garbage_and_writes_files(base, tmp_path):
    data = toy_pairs(6)
    cfg = EvalConfig(max_new_tokens=5, eval_batch_size=4)
    res = evaluate(base, data, cfg, out_file=tmp_path / "hyps.jsonl", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "hyps.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [p.id for p in data]
    assert {"id", "src", "ref", "hyp", "empty", "runaway"} <= set(rows[0])
    assert res["n_runaway"] == sum(r["runaway"] for r in rows)
    assert res["n_empty"] == sum(r["empty"] for r in rows) == sum(not r["hyp"] for r in rows)
    for r in rows:
        assert r["n_tokens"] == 5 if r["runaway"] else 1 <= r["n_tokens"] <= 5
    assert res["n_runaway"] + res["n_stop_eos"] + res["n_stop_newline"] == 6
    assert 0.0 <= res["bleu"] <= 100.0 and 0.0 <= res["chrf"] <= 100.0
    assert "nrefs:1" in res["bleu_signature"] and "nc:6" in res["chrf_signature"]
    scores = json.loads((tmp_path / "hyps.json").read_text())
    assert scores["chrf"] == res["chrf"] and "rows" not in scores
    with pytest.raises(UsageError, match=".jsonl"):
        evaluate(base, data, cfg, out_file=tmp_path / "x.json", progress=False)


class _RowCache:
    """Stands in for the key-value cache: it remembers which prompts' rows are left."""

    def __init__(self, rows):
        self.rows = rows

    def batch_select_indices(self, idx):
        self.rows = [self.rows[i] for i in idx.tolist()]


class _ScriptedLM(torch.nn.Module):
    """A causal LM that makes prompt b emit script[b][k] at decoding step k, following the
    rows the decoder keeps through the cache it is handed back; records the batch sizes."""

    def __init__(self, script, vocab, config):
        super().__init__()
        self.script, self.vocab, self.config = script, vocab, config
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.k, self.widths = 0, []

    def forward(self, input_ids, attention_mask, use_cache, cache=None, position_ids=None):
        from types import SimpleNamespace

        cache = cache if isinstance(cache, _RowCache) else _RowCache(list(range(len(input_ids))))
        assert len(input_ids) == len(cache.rows) == len(attention_mask)
        logits = torch.zeros(len(cache.rows), input_ids.shape[1], self.vocab)
        for b, row in enumerate(cache.rows):
            seq = self.script[row]
            logits[b, -1, seq[min(self.k, len(seq) - 1)]] = 10.0
        self.k += 1
        self.widths.append(len(cache.rows))
        return SimpleNamespace(logits=logits, cache=cache)


def test_decoding_stops_at_eos_or_newline_after_text():
    model, tok = tiny_model("llama")
    ids = {c: tok.encode(c, add_special_tokens=False)[0] for c in "\nabxyz"}
    eos = tok.eos_token_id
    nl, a, b, x, y, z = (ids[c] for c in "\nabxyz")
    script = [
        [nl, a, b, nl, x],  # leading newline skipped, stops at the next: "ab"
        [eos],  # empty at once
        [x, y, z, x, y, z],  # never stops: runaway at max_new_tokens=5
        [nl, nl, eos],  # only newlines, then EOS: empty
        [a, eos],
    ]
    model = _ScriptedLM(script, len(tok), model.config)
    same = [Pair(f"p{i}", "haus", "house", "de", "en") for i in range(len(script))]
    cfg = EvalConfig(max_new_tokens=5, eval_batch_size=8, precision="fp32")
    hyps = translate_loaded(model, tok, same, cfg, progress=False)
    got = [(h.text, h.stop, h.n_tokens, h.empty, h.runaway) for h in hyps]
    assert got == [
        ("ab", "newline", 4, False, False),
        ("", "eos", 1, True, False),
        ("xyzxy", "length", 5, False, True),
        ("", "eos", 3, True, False),
        ("a", "eos", 2, False, False),
    ]
    # a row leaves the batch once it stopped: 5 rows, then 4, 3, 2, and the runaway alone
    assert model.widths == [5, 4, 3, 2, 1]
    res = metrics_mod.summarize(same, hyps)
    assert (res["n_empty"], res["n_runaway"], res["n_stop_newline"]) == (2, 1, 1)


def test_copying_the_reference_scores_100():
    refs = [p.tgt for p in toy_pairs(20)]
    res = score_hypotheses(refs, refs)
    assert res["chrf"] == pytest.approx(100.0) and res["bleu"] == pytest.approx(100.0)
    assert score_hypotheses(refs, [""] * len(refs))["chrf"] == 0.0
    zh = score_hypotheses(["你好世界"], ["你好世界"], tgt_lang="zh")
    assert "tok:zh" in zh["bleu_signature"]
    with pytest.raises(UsageError, match="pair up"):
        score_hypotheses(refs, refs[:-1])


def _corrupt(text, rng):
    chars = list(text)
    rng.shuffle(chars)
    return "".join(chars)


def test_paired_bootstrap():
    rng = random.Random(0)
    refs = [p.tgt + " " + p.src for p in toy_pairs(300)]
    same = paired_bootstrap(refs, refs, refs, n=1000)
    assert same["p_value"] == 0.5 and same["ci_low"] <= 0.0 <= same["ci_high"]
    # a: right on half the sentences, b: right on a quarter, noise elsewhere
    hyps_a = [r if i % 2 == 0 else _corrupt(r, rng) for i, r in enumerate(refs)]
    hyps_b = [r if i % 4 == 0 else _corrupt(r, rng) for i, r in enumerate(refs)]
    better = paired_bootstrap(refs, hyps_a, hyps_b, n=1000, seed=1)
    assert better["delta"] > 0 and better["ci_low"] > 0 and better["p_value"] < 0.05
    assert better["score_a"] == pytest.approx(score_hypotheses(refs, hyps_a)["chrf"])
    worse = paired_bootstrap(refs, hyps_b, hyps_a, n=200, metric="bleu")
    assert worse["p_value"] > 0.95 and worse["metric"] == "bleu"
    assert worse["score_a"] == pytest.approx(score_hypotheses(refs, hyps_b)["bleu"])
