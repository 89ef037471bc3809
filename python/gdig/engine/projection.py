"""Fixed random projections of each tracked layer's gradient (METHOD.md §4, projected mode).

``P_in [d_in, k_in]`` and ``P_out [d_out, k_out]`` are Gaussian scaled by ``1/sqrt(k)`` (so
``E[P Pᵀ] = I`` and inner products are preserved in expectation), drawn from a generator
seeded by ``proj_seed`` and the layer's name: the same layer always gets the same matrices,
whichever other layers are tracked. In exact mode they are identities.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from gdig.engine.layers import TrackedLayer


@dataclass
class Projection:
    """Projection of one layer; ``k_out * k_in`` features."""

    p_in: torch.Tensor  # [d_in, k_in]
    p_out: torch.Tensor  # [d_out, k_out]

    @property
    def dim(self) -> int:
        return self.p_in.shape[1] * self.p_out.shape[1]

    def to(self, device, dtype) -> Projection:
        return Projection(self.p_in.to(device, dtype), self.p_out.to(device, dtype))


def projection_key(cfg) -> dict:
    """The settings that fix the projections (candidates, seeds and factors must share them)."""
    return {"k_in": cfg.k_in, "k_out": cfg.k_out, "proj_seed": cfg.proj_seed, "exact": cfg.exact}


def _gaussian(rows: int, cols: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen, dtype=torch.float64) / cols**0.5


def make_projections(
    layers: list[TrackedLayer], k_in: int, k_out: int, seed: int, exact: bool = False
) -> list[Projection]:
    """One :class:`Projection` per layer, float64 on CPU (cast where used)."""
    out = []
    for layer in layers:
        if exact:
            out.append(
                Projection(
                    torch.eye(layer.d_in, dtype=torch.float64),
                    torch.eye(layer.d_out, dtype=torch.float64),
                )
            )
            continue
        base = (seed * 1_000_003 + zlib.crc32(layer.name.encode())) % (1 << 62)
        out.append(
            Projection(_gaussian(layer.d_in, k_in, base), _gaussian(layer.d_out, k_out, base + 1))
        )
    return out
