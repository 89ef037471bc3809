"""gdig.train.precision: what ``auto`` picks from given timings (nothing is timed here), that
fine-tuning and evaluation record the choice and why, and that a resumed fine-tuning keeps
the choice its checkpoint holds instead of measuring again."""

from __future__ import annotations

import dataclasses
import importlib
import json

import pytest
import torch
from helpers_models import save_tiny, toy_pairs

from gdig.io.validate import OptionError
from gdig.train import EvalConfig, FinetuneConfig, evaluate, finetune

precision_mod = importlib.import_module("gdig.train.precision")
finetune_mod = importlib.import_module("gdig.train.finetune")
decide = precision_mod.decide


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("base") / "tiny")


def _inject(monkeypatch, fp32_s, bf16_s):
    """Make every measurement report these timings; return the list of its calls."""
    calls = []

    def fake(hidden, inter, tokens, *, train, **kw):
        calls.append({"hidden": hidden, "inter": inter, "tokens": tokens, "train": train})
        return fp32_s, bf16_s

    monkeypatch.setattr(precision_mod, "measure", fake)
    return calls


def test_auto_on_a_cpu_keeps_bf16_only_when_clearly_faster():
    assert decide("auto", "cpu", timings=(0.020, 0.010)).name == "bf16"  # half the time
    assert decide("auto", "cpu", timings=(0.020, 0.0175)).name == "bf16"  # 0.875x
    assert decide("auto", "cpu", timings=(0.020, 0.0185)).name == "fp32"  # 0.925x: a tie
    assert decide("auto", "cpu", timings=(0.020, 0.020)).name == "fp32"
    slow = decide("auto", "cpu", timings=(0.0105, 0.0213))  # this Zen3: bf16 ~2x fp32
    assert (slow.name, slow.requested, slow.fp32_s, slow.bf16_s) == ("fp32", "auto", 0.0105, 0.0213)
    # the reason names both timings and their ratio
    assert "10.5 ms" in slow.reason and "21.3 ms" in slow.reason and "2.03x" in slow.reason
    assert slow.describe().startswith("precision fp32 (auto: ")
    with pytest.raises(ValueError, match="timings"):
        decide("auto", "cpu")


def test_auto_on_cuda_follows_bf16_support_and_asked_precisions_are_kept():
    assert decide("auto", "cuda", cuda_bf16=True).name == "bf16"
    assert decide("auto", "cuda", cuda_bf16=False).name == "fp32"
    assert decide("auto", "mps").name == "fp32"
    for asked in ("fp32", "bf16"):
        for device in ("cpu", "cuda"):
            got = decide(asked, device, timings=(1.0, 0.1) if asked == "fp32" else (0.1, 1.0))
            assert (got.name, got.reason, got.fp32_s) == (asked, "as asked", None)
    with pytest.raises(ValueError, match="fp16"):
        decide("fp16", "cpu")
    for cls in (FinetuneConfig, EvalConfig):
        assert cls().precision == "auto"
        with pytest.raises(OptionError, match="precision"):
            cls(precision="fp16")


def test_choose_measures_at_the_model_shapes_only_for_auto(monkeypatch):
    from helpers_models import tiny_model

    model, _ = tiny_model("llama", hidden=16, inter=40)
    calls = _inject(monkeypatch, 0.004, 0.001)
    got = precision_mod.choose("auto", model, tokens=96, train=True)
    assert got.name == "bf16" and got.bf16_s == 0.001
    assert calls == [{"hidden": 16, "inter": 40, "tokens": 96, "train": True}]
    assert precision_mod.choose("fp32", model, tokens=96, train=True).name == "fp32"
    assert len(calls) == 1  # an explicit precision is not measured


def test_repeats_alternate_until_the_budget_or_a_decisive_bf16_loss():
    def scripted(fp32, bf16):
        calls = []
        seq = {"fp32": iter(fp32), "bf16": iter(bf16)}

        def run(precision):
            calls.append(precision)
            return next(seq[precision])

        return run, calls

    def ticking():  # a clock that advances one second a call
        t = iter(range(1000))
        return lambda: float(next(t))

    # bf16 over 2x fp32 at the first repeat: stop there, keep fp32's verdict
    run, calls = scripted([1.0], [2.5])
    assert precision_mod.repeat(run, 100.0, ticking()) == (1.0, 2.5)
    assert calls == ["fp32", "bf16"]
    # otherwise at least MIN_REPEATS, then until the budget: medians resist one outlier
    run, calls = scripted([1.0, 5.0, 1.0, 1.0, 1.0], [0.5, 0.5, 1.9, 0.5, 0.5])
    fp32_s, bf16_s = precision_mod.repeat(run, 2.5, ticking())
    assert (fp32_s, bf16_s) == (1.0, 0.5)
    assert calls == ["fp32", "bf16"] * 5  # clock 0 at start, 1 after repeat 3, 2, then 3
    # and never more than MAX_REPEATS
    n = precision_mod.MAX_REPEATS
    run, calls = scripted([1.0] * n, [1.0] * n)
    precision_mod.repeat(run, 1e9, ticking())
    assert len(calls) == 2 * n


def test_measure_returns_two_medians():
    # Whatever the machine: two positive durations, from a few repeats within the budget,
    # measured in one thread, the caller's thread count restored.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fp32_s, bf16_s = precision_mod.measure(16, 32, 8, train=True, budget_s=0.05)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert fp32_s > 0 and bf16_s > 0


def test_finetune_records_the_choice_and_a_resume_keeps_it(base, tmp_path, monkeypatch):
    pairs = toy_pairs(12)
    cfg = FinetuneConfig(max_steps=4, train_batch_size=4, checkpoint_every=2, learning_rate=1e-2)
    calls = _inject(monkeypatch, 0.002, 0.001)
    out = tmp_path / "ft"
    real = finetune_mod.example_losses
    n = {"calls": 0}

    def killing(*a, **k):
        n["calls"] += 1
        if n["calls"] == 3:  # step 3, after the step-2 checkpoint
            raise KeyboardInterrupt
        return real(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(finetune_mod, "example_losses", killing)
        with pytest.raises(KeyboardInterrupt):
            finetune(base, pairs, out, cfg, progress=False)
    assert len(calls) == 1 and calls[0]["train"] is True
    # The machine now measures the other way round: the resumed run must not ask it.
    _inject(monkeypatch, 0.001, 0.002)
    lines = []
    finetune(base, pairs, out, cfg, progress=False, echo=lines.append)
    meta = json.loads((out / "gdig_finetune.json").read_text())
    assert meta["resumed_at_steps"] == [2]
    assert meta["precision"] == {
        "name": "bf16",
        "requested": "auto",
        "reason": meta["precision"]["reason"],
        "fp32_s": 0.002,
        "bf16_s": 0.001,
    }
    assert lines[0].startswith("finetune: precision bf16 (auto: bf16 autocast 1.0 ms vs fp32")


def test_evaluate_records_the_choice(base, tmp_path, monkeypatch):
    calls = _inject(monkeypatch, 0.001, 0.003)
    cfg = EvalConfig(max_new_tokens=3, eval_batch_size=4)
    res = evaluate(base, toy_pairs(5), cfg, out_file=tmp_path / "h.jsonl", progress=False)
    assert calls == [{"hidden": 8, "inter": 24, "tokens": 4, "train": False}]
    saved = json.loads((tmp_path / "h.json").read_text())
    assert saved["precision"]["name"] == res["precision"]["name"] == "fp32"
    assert "bf16 not faster" in saved["precision"]["reason"]
    fixed = evaluate(base, toy_pairs(5), dataclasses.replace(cfg, precision="bf16"), progress=False)
    assert fixed["precision"]["reason"] == "as asked" and len(calls) == 1
