"""Which layers are tracked: nn.Linear (and GPT-2's Conv1D) chosen by name (METHOD.md §2).

Every tracked layer is seen the same way, as ``out = W a (+ b)`` with ``W`` of shape
``d_out x d_in``; GPT-2's Conv1D stores ``W`` transposed, which only matters for its sizes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from gdig.io.errors import UsageError

# `<block index>.<mlp module>.<down projection>` across LLaMA/Qwen2/Mistral (mlp.down_proj),
# GPT-2 (mlp.c_proj), BLOOM (mlp.dense_4h_to_h), OPT/Phi (fc2), GPT-J/NeoX-style and others.
_DOWN_PROJ = re.compile(
    r"(?:^|\.)(\d+)\.(?:mlp|feed_forward|ffn|block_sparse_moe)\."
    r"(?:down_proj|c_proj|dense_4h_to_h|fc2|fc_out|w2|proj_out|wo)$"
)
_FC2 = re.compile(r"(?:^|\.)(\d+)\.(?:fc2)$")  # OPT keeps fc2 directly in the block


@dataclass(frozen=True)
class TrackedLayer:
    """A tracked layer: its module name and ``W``'s shape ``(d_out, d_in)``."""

    name: str
    d_out: int
    d_in: int

    @property
    def numel(self) -> int:
        return self.d_out * self.d_in


def is_linear(module: nn.Module) -> bool:
    """nn.Linear or transformers' Conv1D (GPT-2), the two layer kinds the engine can track."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def layer_shape(module: nn.Module) -> tuple[int, int]:
    """``(d_out, d_in)`` of a tracked layer."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    w = module.weight  # Conv1D: weight is [d_in, d_out]
    return int(w.shape[1]), int(w.shape[0])


def default_layer_names(model: nn.Module, stride: int = 3) -> list[str]:
    """The MLP down-projection of every ``stride``-th block (blocks stride-1, 2*stride-1, ...).

    Counting from 1, blocks 3, 6, 9, ... as in the paper's code; a model with fewer than
    ``stride`` blocks gets its last block.
    """
    found: list[tuple[int, str]] = []
    for name, module in model.named_modules():
        if not is_linear(module):
            continue
        m = _DOWN_PROJ.search(name) or _FC2.search(name)
        if m:
            found.append((int(m.group(1)), name))
    if not found:
        raise UsageError(
            f"{type(model).__name__}: no MLP down-projection found by name; pass "
            "--layers, a regex over module names (see model.named_modules())"
        )
    found.sort()
    blocks = sorted({b for b, _ in found})
    chosen = {b for b in blocks if (b + 1) % stride == 0} or {blocks[-1]}
    return [name for b, name in found if b in chosen]


def select_layers(model: nn.Module, pattern: str | None = None, stride: int = 3) -> list[str]:
    """Names of the tracked layers in module order: ``pattern`` (regex) or the default rule."""
    if pattern is None:
        names = set(default_layer_names(model, stride))
    else:
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"--layers {pattern!r} is not a valid regex: {exc}") from exc
        names = {n for n, m in model.named_modules() if rx.search(n) and is_linear(m)}
        if not names:
            linear = [n for n, m in model.named_modules() if is_linear(m)][:8]
            raise UsageError(
                f"--layers {pattern!r} matches no nn.Linear/Conv1D module of "
                f"{type(model).__name__}; linear modules look like {linear}"
            )
    return [n for n, _ in model.named_modules() if n in names]


def tracked_layers(model: nn.Module, names: list[str]) -> list[TrackedLayer]:
    modules = dict(model.named_modules())
    out = []
    for name in names:
        if name not in modules or not is_linear(modules[name]):
            raise UsageError(f"{name!r} is not an nn.Linear/Conv1D module of this model")
        d_out, d_in = layer_shape(modules[name])
        out.append(TrackedLayer(name, d_out, d_in))
    return out


def weight_stats(model: nn.Module, names: list[str]) -> list[list[float]]:
    """Cheap fingerprint of the tracked weights: (sum, sum of squares) per layer, in float64."""
    modules = dict(model.named_modules())
    stats = []
    for name in names:
        w = modules[name].weight.detach().to(torch.float64)
        stats.append([float(w.sum()), float(w.square().sum())])
    return stats
