"""The capture hooks: the model is left exactly as found, no parameter gradient is computed,
the backward stops at the lowest tracked layer, and per-example gradients do not depend on
the batch an example is in."""

from __future__ import annotations

import pytest
import torch
from helpers_models import ARCHES, tiny_model, toy_pairs

from gdig.engine import GradientCapture, collate, encode_pair, select_layers


def _hook_count(model) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


@pytest.mark.parametrize("arch", ARCHES)
def test_hooks_leave_model_unchanged(arch):
    model, tok = tiny_model(arch, blocks=3)
    model.train()  # the capture switches to eval; it must switch back
    frozen = next(model.parameters())
    frozen.requires_grad_(False)  # a user's own flags must be restored, not reset to True
    enc = [encode_pair(p, tok, "paper", 512) for p in toy_pairs(4)]
    batch = collate(enc, [0, 1, 2, 3], tok.pad_token_id, "cpu")
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    hooks = _hook_count(model)
    model.eval()
    with torch.no_grad():
        before = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    model.train()

    with GradientCapture(model, select_layers(model, stride=1)) as cap:
        assert not model.training
        got = cap.run(batch)
    assert len(got.layers) == 3

    assert model.training
    assert _hook_count(model) == hooks
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters()), "a parameter gradient was computed"
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), f"parameter {n} changed"
    model.eval()
    with torch.no_grad():
        after = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(before, after)


def test_backward_stops_below_lowest_tracked_layer():
    model, tok = tiny_model("llama", blocks=3)
    names = [n for n in select_layers(model, stride=1) if ".0." not in n]  # blocks 1 and 2
    seen = {}

    def spy(name):
        def hook(mod, inp, out):
            seen[name] = out.requires_grad

        return hook

    handles = [
        model.model.embed_tokens.register_forward_hook(spy("embed")),
        model.model.layers[0].mlp.register_forward_hook(spy("block0.mlp")),
        model.model.layers[1].mlp.up_proj.register_forward_hook(spy("block1.up_proj")),
        model.model.layers[2].mlp.up_proj.register_forward_hook(spy("block2.up_proj")),
    ]
    enc = [encode_pair(p, tok, "paper", 512) for p in toy_pairs(2)]
    with GradientCapture(model, names) as cap:
        got = cap.run(collate(enc, [0, 1], tok.pad_token_id, "cpu"))
    for h in handles:
        h.remove()
    # Nothing at or below block 1's down-projection input is in the graph; above it, all is.
    assert seen == {
        "embed": False,
        "block0.mlp": False,
        "block1.up_proj": False,
        "block2.up_proj": True,
    }
    assert all(g.abs().sum() > 0 for _, g in got.layers)


def test_per_example_gradients_do_not_depend_on_the_batch():
    model, tok = tiny_model("qwen2", dtype=torch.float64)
    names = select_layers(model, stride=1)
    enc = [encode_pair(p, tok, "paper", 512) for p in toy_pairs(5, seed=3)]
    with GradientCapture(model, names) as cap:
        together = cap.run(collate(enc, [0, 1, 2, 3, 4], tok.pad_token_id, "cpu"))
        for b in range(5):
            alone = cap.run(collate(enc, [b], tok.pad_token_id, "cpu"))
            n = len(enc[b])
            for (a1, g1), (a2, g2) in zip(alone.layers, together.layers, strict=True):
                assert torch.allclose(a1[0], a2[b, :n], atol=1e-12)
                assert torch.allclose(g1[0], g2[b, :n], atol=1e-12)
            # padding carries no gradient
            assert all(g[b, n:].abs().max() == 0 for _, g in together.layers if g.shape[1] > n)


def test_run_outside_context_is_an_error():
    model, tok = tiny_model("llama")
    cap = GradientCapture(model, select_layers(model))
    enc = [encode_pair(p, tok, "paper", 512) for p in toy_pairs(1)]
    with pytest.raises(RuntimeError, match="outside its `with` block"):
        cap.run(collate(enc, [0], tok.pad_token_id, "cpu"))
