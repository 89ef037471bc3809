"""Hooks that capture each tracked layer's inputs ``a_t`` and output gradients ``g_t``.

No parameter gradient is ever computed: weights are frozen for the duration, the lowest
tracked layer's output is turned into a leaf that requires grad (so the backward stops
there), and the loss is the *sum* of per-example mean losses, so the ``g_t`` of each
example's tokens is that example's own gradient (examples in a batch do not interact).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gdig.engine.batching import Batch
from gdig.io.dtypes import resolve_dtype

# Config attributes that make logits more than `lm_head(hidden)`; such models go the slow way.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


@dataclass
class Captured:
    """One batch's capture: per tracked layer ``(a [B,T,d_in], g [B,T,d_out])``."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor  # [B,T] attention (non-padding) mask
    losses: torch.Tensor  # [B] per-example mean target loss (detached)


class GradientCapture:
    """Context manager: while open, :meth:`run` does one forward/backward on a batch.

    On exit every hook is removed and the parameters' ``requires_grad`` and the model's
    training flag are restored, so the model is left exactly as found.
    """

    def __init__(self, model: nn.Module, layer_names: list[str], autocast: str | None = None):
        self.model = model
        self.layer_names = list(layer_names)
        modules = dict(model.named_modules())
        missing = [n for n in self.layer_names if n not in modules]
        if missing:
            raise ValueError(f"tracked layers {missing} are not modules of {type(model).__name__}")
        self._modules = [modules[n] for n in self.layer_names]
        self._autocast = resolve_dtype(autocast)
        self._handles: list = []
        self._saved_flags: list[tuple[nn.Parameter, bool]] = []
        self._was_training = model.training
        self._reset()

    # --- context ---
    def __enter__(self) -> GradientCapture:
        self._was_training = self.model.training
        self.model.eval()
        self._saved_flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in self._saved_flags:
            p.requires_grad_(False)
        for i, module in enumerate(self._modules):
            self._handles.append(module.register_forward_hook(self._make_hook(i)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for p, flag in self._saved_flags:
            p.requires_grad_(flag)
        self._saved_flags.clear()
        self.model.train(self._was_training)
        self._reset()

    def _reset(self) -> None:
        n = len(self.layer_names)
        self._a: list[torch.Tensor | None] = [None] * n
        self._g: list[torch.Tensor | None] = [None] * n
        self._leaf: torch.Tensor | None = None
        self._leaf_index = -1

    def _make_hook(self, i: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor):
            if self._a[i] is not None:
                raise RuntimeError(
                    f"tracked layer {self.layer_names[i]!r} ran twice in one forward pass; "
                    "shared layers cannot be tracked"
                )
            a = inputs[0].detach()
            if self._autocast is not None and a.dtype == torch.float32:
                # The layer's GEMM multiplies this input in the autocast dtype (autocast
                # casts it there): capture what it used, at half the memory.
                a = a.to(self._autocast)
            self._a[i] = a
            if self._leaf is None:
                # First tracked layer to run: cut the graph here so the backward stops.
                output = output.detach().requires_grad_(True)
                self._leaf, self._leaf_index = output, i
                return output
            if not output.requires_grad:
                raise RuntimeError(
                    f"tracked layer {self.layer_names[i]!r} does not depend on the lowest "
                    f"tracked layer {self.layer_names[self._leaf_index]!r}; track layers on "
                    "one path of the network"
                )
            output.register_hook(lambda grad: self._g.__setitem__(i, grad))
            return None

        return hook

    # --- one batch ---
    def run(
        self, batch: Batch, labels: str = "empirical", generator: torch.Generator | None = None
    ) -> Captured:
        """Forward + truncated backward of ``batch``; returns the tracked ``a`` and ``g``."""
        if not self._handles:
            raise RuntimeError("GradientCapture.run() called outside its `with` block")
        self._reset()
        try:
            device_type = batch.input_ids.device.type
            ctx = (
                torch.autocast(device_type, dtype=self._autocast)
                if self._autocast is not None
                else contextlib.nullcontext()
            )
            with ctx:
                losses = example_losses(self.model, batch, labels, generator)
            if self._leaf is None:
                raise RuntimeError("no tracked layer ran in the forward pass")
            (leaf_grad,) = torch.autograd.grad(losses.sum(), self._leaf)
            self._g[self._leaf_index] = leaf_grad
            missing = [self.layer_names[i] for i, g in enumerate(self._g) if g is None]
            if missing:
                raise RuntimeError(f"no output gradient reached tracked layers {missing}")
            layers = [(a, g) for a, g in zip(self._a, self._g, strict=True)]
            return Captured(layers=layers, mask=batch.attention_mask, losses=losses.detach())
        finally:
            self._reset()


def _fast_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(base model, lm_head) when logits are exactly ``lm_head(base(...)[0])``."""
    cfg = getattr(model, "config", None)
    if any(getattr(cfg, name, None) not in (None, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if not isinstance(head, nn.Linear) or not isinstance(base, nn.Module) or base is model:
        return None
    return base, head


def example_losses(
    model: nn.Module,
    batch: Batch,
    labels: str = "empirical",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[B] mean cross-entropy over each example's target tokens (prompt and padding masked).

    The LM head is applied only at positions that predict a target token, which skips most
    of the vocabulary projection's cost. ``labels='sampled'`` draws each label from the
    model's own prediction (true Fisher) instead of using the data's token.
    """
    ids, att = batch.input_ids, batch.attention_mask
    sel = batch.target_mask[:, 1:]  # position t-1 predicts target token t
    parts = _fast_head(model)
    if parts is not None:
        base, head = parts
        hidden = base(input_ids=ids, attention_mask=att, use_cache=False)[0]
        logits = head(hidden[:, :-1][sel])
    else:
        logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits[:, :-1][sel]
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    target = ids[:, 1:][sel]
    if labels == "sampled":
        probs = torch.softmax(logits.detach().float(), dim=-1)
        target = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    ce = F.cross_entropy(logits, target, reduction="none")
    which = sel.nonzero()[:, 0]
    total = torch.zeros(ids.shape[0], dtype=ce.dtype, device=ce.device).index_add(0, which, ce)
    count = sel.sum(dim=1).clamp_min(1).to(ce.dtype)
    return total / count
