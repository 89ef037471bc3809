"""Length-bucketed batches, padded on the right, sized to fit memory unless told otherwise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gdig.engine.template import Encoded

# Past this many padded tokens a CPU batch is no faster per token, only bigger.
_CPU_TOKEN_CAP = 4096
_GPU_TOKEN_CAP = 65536
_MAX_EXAMPLES = 256


@dataclass
class Batch:
    """Right-padded token batch. ``target_mask[b, t]`` marks target tokens (loss positions);
    ``rows`` are the examples' indices in the list the batch was drawn from."""

    input_ids: torch.Tensor  # [B,T] int64
    attention_mask: torch.Tensor  # [B,T] int64, 1 = real token
    target_mask: torch.Tensor  # [B,T] bool
    rows: list[int]

    @property
    def size(self) -> int:
        return len(self.rows)


def collate(encoded: Sequence[Encoded], rows: Sequence[int], pad_id: int, device) -> Batch:
    """Pad ``encoded[rows]`` into one batch on ``device``."""
    seqs = [encoded[r] for r in rows]
    width = max(len(e) for e in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    tgt = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, e in enumerate(seqs):
        n = len(e)
        ids[i, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        att[i, :n] = 1
        tgt[i, e.n_prompt : n] = True
    return Batch(ids.to(device), att.to(device), tgt.to(device), list(rows))


def plan_batches(
    lengths: Sequence[int], batch_size: int | None = None, max_tokens: int = 4096
) -> list[list[int]]:
    """Group indices by length (longest first) so padding stays small.

    With ``batch_size`` each batch has that many examples; otherwise a batch grows while
    (its longest length x its size) stays within ``max_tokens``.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur:
            full = (
                len(cur) >= batch_size
                if batch_size is not None
                else (len(cur) + 1) * lengths[cur[0]] > max_tokens or len(cur) >= _MAX_EXAMPLES
            )
            if full:
                batches.append(cur)
                cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def auto_max_tokens(model: nn.Module, device: torch.device | None = None) -> int:
    """Padded tokens per batch that fit in a quarter of the free memory of ``device``.

    Per token the pass keeps, per block, about a dozen hidden-size and a few
    intermediate-size activations for the backward, plus the target logits and their
    gradient (about half the tokens are targets).
    """
    cfg = getattr(model, "config", None)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 1024)
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden
    blocks = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 24)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 16)
    vocab = getattr(cfg, "vocab_size", 32000)
    per_token = 4 * (blocks * (12 * hidden + 4 * inter + 2 * heads * 64) + 2 * vocab)
    device = device or next(model.parameters()).device
    budget = _available_bytes(device) // 4 // max(per_token, 1)
    cap = _GPU_TOKEN_CAP if device.type == "cuda" else _CPU_TOKEN_CAP
    return int(max(64, min(cap, budget)))
