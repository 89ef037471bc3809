"""Seed gradients: per-example gradients of the seed set, preconditioned by the factors and
compressed to rank r (METHOD.md §4). Seeds are few, so their gradients are formed densely,
one batch at a time, and only the compressed form is kept.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import gdig_ext
from gdig.data.examples import Example, Examples, as_examples
from gdig.engine.batching import auto_max_tokens, collate, plan_batches
from gdig.engine.capture import GradientCapture
from gdig.engine.config import EngineConfig
from gdig.engine.distributed import Dist
from gdig.engine.factors import Factors
from gdig.engine.faults import finite_rows, run_with_backoff
from gdig.engine.layers import TrackedLayer, tracked_layers
from gdig.engine.projection import make_projections, projection_key
from gdig.engine.template import encode_pair
from gdig.io.errors import UsageError


@dataclass
class SeedGradients:
    """Preconditioned seed gradients ``Ĝ_s = H⁻¹ G(s)``, per tracked layer, as ``Σ_k u_k v_kᵀ``.

    ``u[l]`` is ``[S, r_l, d_out]`` and ``v[l]`` ``[S, r_l, d_in]`` (``r_l`` = min(rank, d_out,
    d_in), or the full rank when ``rank == 0``). ``features`` ``[S, D]`` are the seeds'
    projected gradients preconditioned by the projected-space factors, so that
    ``candidate_features @ features.T`` approximates the benefits; ``norm`` is ``||Ĝ_s||_F``.
    ``raw_features`` ``[S, D]`` are the seeds' projected gradients without the Hessian, in
    the candidates' feature space (LESS-style similarity, ``--selector less``).
    """

    ids: list[str]
    layers: list[TrackedLayer]
    u: list[torch.Tensor]
    v: list[torch.Tensor]
    features: np.ndarray  # [S, D] float32
    norm: np.ndarray  # [S] float32
    rank: int
    proj_key: dict[str, Any]
    raw_features: np.ndarray | None = None  # [S, D] float32; None in seeds.pt of older runs

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def layer_names(self) -> list[str]:
        return [ly.name for ly in self.layers]


def truncated_svd(x: torch.Tensor, rank: int, n_iter: int = 3, seed: int = 0):
    """Rank-``rank`` SVD of each ``x [B, m, n]`` by a seeded randomized range finder.

    With a few power iterations it is as accurate as the full SVD for the top singular
    pairs that are kept, at a fraction of its cost (``O(m n rank)`` instead of ``O(m n²)``).
    The range is found on the shorter side and each iteration orthonormalises once (subspace
    iteration on ``x xᵀ``): this keeps the singular values down to about ``√ε`` of the
    largest, which is all a rank cut ever keeps, with two thirds fewer QRs of the long side.
    The final SVD is a QR of the long side and the SVD of a small ``q × q`` matrix.
    """
    if x.shape[1] > x.shape[2]:  # work on the shorter side: x = (xᵀ)ᵀ
        u, s, vh = truncated_svd(x.transpose(1, 2), rank, n_iter, seed)
        return vh.transpose(1, 2), s, u.transpose(1, 2)
    m, n = x.shape[1:]
    q = min(rank + 10, m, n)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    omega = torch.randn(n, q, generator=gen, dtype=x.dtype).to(x.device)
    basis = torch.linalg.qr(x @ omega).Q  # [B, m, q], m <= n
    xt = x.transpose(1, 2)
    for _ in range(n_iter):
        basis = torch.linalg.qr(x @ (xt @ basis)).Q
    # basisᵀ x = (xᵀ basis)ᵀ = (Q_n R)ᵀ = Rᵀ Q_nᵀ; the SVD of the small Rᵀ finishes it.
    q_n, r = torch.linalg.qr(xt @ basis)  # [B, n, q], [B, q, q]
    ub, s, vh = torch.linalg.svd(r.transpose(1, 2))
    return (basis @ ub)[:, :, :rank], s[:, :rank], (vh @ q_n.transpose(1, 2))[:, :rank]


def compress(grads: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``grads [B, d_out, d_in]`` as ``u [B, r, d_out]``, ``v [B, r, d_in]`` with
    ``grads ≈ Σ_k u_k v_kᵀ``: truncated SVD for ``rank > 0``; exact for ``rank == 0``
    (columns or rows against an identity, whichever side is smaller)."""
    b, d_out, d_in = grads.shape
    if rank == 0:
        if d_in <= d_out:
            eye = torch.eye(d_in, dtype=grads.dtype, device=grads.device)
            return grads.transpose(1, 2).contiguous(), eye.expand(b, d_in, d_in).contiguous()
        eye = torch.eye(d_out, dtype=grads.dtype, device=grads.device)
        return eye.expand(b, d_out, d_out).contiguous(), grads.contiguous()
    rank = min(rank, d_out, d_in)
    if 4 * rank >= min(d_out, d_in):  # small matrices: the full SVD is cheap and exact
        u, s, vh = torch.linalg.svd(grads, full_matrices=False)
        u, s, vh = u[:, :, :rank], s[:, :rank], vh[:, :rank]
    else:
        u, s, vh = truncated_svd(grads, rank)
    return (u * s[:, None, :]).transpose(1, 2).contiguous(), vh.contiguous()


def compress_rotated(
    x: torch.Tensor, q_s: torch.Tensor, q_a: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`compress` of ``Q_S x Q_Aᵀ`` for ``x [B, d_out, d_in]`` given in the eigenbasis.

    Orthogonal rotations keep singular values, so the rank-``rank`` factors of ``x`` rotated
    (``u Q_Sᵀ``, ``v Q_Aᵀ``) are those of the product, at ``rank (d_out² + d_in²)`` instead
    of forming it; rank 0 (exact) needs the product itself.
    """
    if rank == 0:
        return compress(q_s @ x @ q_a.T, 0)
    u, v = compress(x, rank)
    return u @ q_s.T, v @ q_a.T


def check_finite_seeds(got: Any, pairs: Sequence[Example]) -> None:
    """Raise ValueError naming the seeds whose loss or captured gradients are NaN/Inf: seeds are
    few and trusted, and dropping one would change what "helps every seed" means."""
    ok = torch.isfinite(got.losses)
    for a, g in got.layers:
        ok &= finite_rows(a, g)
    if not bool(ok.all()):
        bad = [pairs[j].id for j in (~ok).nonzero().flatten().tolist()]
        raise UsageError(
            f"seed pair(s) {', '.join(bad)} give a non-finite (NaN/Inf) loss or gradient; fix "
            "or remove them from the seed set"
        )


def prepare_seeds(
    model: nn.Module,
    tokenizer: Any,
    seeds: Examples | Sequence[Example],
    factors: Factors,
    cfg: EngineConfig,
    progress: bool = True,
) -> SeedGradients:
    """Precondition and compress the seed set's gradients (rank ``cfg.scoring.rank``; exact:
    none)."""
    seeds = as_examples(seeds)
    if len(seeds) == 0:
        raise ValueError("prepare_seeds: the seed set is empty")
    factors.check(model, cfg.factors)
    names = factors.layer_names
    layers = tracked_layers(model, names)
    projections = make_projections(
        layers, cfg.factors.k_in, cfg.factors.k_out, cfg.factors.proj_seed, cfg.factors.exact
    )
    device = next(model.parameters()).device
    float64 = cfg.factors.exact or next(model.parameters()).dtype == torch.float64
    compute = torch.float64 if float64 else torch.float32
    rank = cfg.effective_rank
    proj_factors = None if cfg.factors.exact else factors.projected_for(cfg.factors)
    if not cfg.factors.exact and proj_factors is None:
        warnings.warn(
            "the factors hold no projected-space part for this projection (k_in, k_out, "
            "proj_seed); seed features fall back to projecting H⁻¹G, which re-scores less "
            "accurately. Refit the factors with this configuration to fix it.",
            stacklevel=2,
        )

    encoded = [
        encode_pair(p, tokenizer, cfg.factors.template, cfg.factors.max_length)
        for p in seeds.take(range(len(seeds)))
    ]
    max_tokens = cfg.execution.max_batch_tokens or auto_max_tokens(model, device)
    batches = plan_batches([len(e) for e in encoded], cfg.execution.batch_size, max_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    n = len(encoded)
    us: list[list[torch.Tensor | None]] = [[None] * n for _ in layers]
    vs: list[list[torch.Tensor | None]] = [[None] * n for _ in layers]
    feats = [np.zeros((n, p.dim), dtype=np.float32) for p in projections]
    raw_feats = [np.zeros((n, p.dim), dtype=np.float32) for p in projections]
    sq_norm = np.zeros(n, dtype=np.float64)
    with (
        GradientCapture(model, names, cfg.factors.autocast) as cap,
        tqdm(total=n, desc="seed gradients", unit="ex", disable=not progress) as bar,
    ):

        def seed_rows(rows: list[int]) -> None:
            sq_norm[rows] = 0.0  # a retry after running out of memory must not add twice
            got = cap.run(collate(encoded, rows, pad_id, device))
            check_finite_seeds(got, seeds.take(rows))
            keep = got.mask.to(compute)  # [B, T] 0/1: padding out
            for i, (a, g) in enumerate(got.layers):
                # float64 (exact mode or a float64 model) or float32: seeds are few, but a
                # float64 preconditioning of large layers costs more than their model pass.
                lf, proj = factors[names[i]], projections[i].to(device, compute)
                a, g = a.to(compute), g.to(compute) * keep.unsqueeze(-1)
                # H⁻¹G in the eigenbasis, straight from the tokens (METHOD.md §3): the dense
                # gradient is never rotated, and its norm is the eigenbasis norm.
                x = lf.precondition_tokens(a, g, cfg.scoring)
                sq_norm[rows] += x.square().sum(dim=(1, 2)).cpu().numpy()
                q_s, q_a = lf.bases(device, compute)
                # The seed's gradient in the candidates' feature space, no Hessian (LESS).
                raw = gdig_ext.project_grads(a, g, keep, proj.p_in, proj.p_out)
                raw_feats[i][rows] = raw.reshape(len(rows), -1).float().cpu().numpy()
                if proj_factors is not None:
                    # Projected mode: precondition in the projected space, where the factors
                    # match the features' geometry (far less noisy than projecting H⁻¹G).
                    seed_feat = proj_factors[i].precondition(raw, cfg.scoring)
                else:  # P_outᵀ H⁻¹G P_in with H⁻¹G = Q_S x Q_Aᵀ
                    seed_feat = (q_s.T @ proj.p_out).T @ x @ (q_a.T @ proj.p_in)
                feats[i][rows] = seed_feat.reshape(len(rows), -1).float().cpu().numpy()
                u, v = compress_rotated(x, q_s, q_a, rank)
                for j, r in enumerate(rows):
                    us[i][r] = u[j]
                    vs[i][r] = v[j]
            bar.update(len(rows))

        for batch in batches:
            run_with_backoff(lambda sub: seed_rows(list(sub)), batch, "seed batch")
    return SeedGradients(
        ids=list(seeds.ids()),
        layers=layers,
        u=[torch.stack(col) for col in us],
        v=[torch.stack(col) for col in vs],
        features=np.concatenate(feats, axis=1),
        norm=np.sqrt(sq_norm).astype(np.float32),
        rank=rank,
        proj_key=projection_key(cfg.factors),
        raw_features=np.concatenate(raw_feats, axis=1),
    )


def save_seeds(seeds: SeedGradients, path: str | Path, key: str) -> None:
    """Keep prepared seeds (atomically) so that scoring again with the same factors, seeds
    and options never prepares them twice; ``key`` says what they were prepared from."""
    from gdig.io.atomic import atomic_open

    data = {
        "key": key,
        "ids": list(seeds.ids),
        "layers": [(ly.name, ly.d_out, ly.d_in) for ly in seeds.layers],
        "u": [t.cpu() for t in seeds.u],
        "v": [t.cpu() for t in seeds.v],
        "features": torch.from_numpy(np.ascontiguousarray(seeds.features)),
        "norm": torch.from_numpy(np.ascontiguousarray(seeds.norm)),
        "rank": seeds.rank,
        "raw_features": None
        if seeds.raw_features is None
        else torch.from_numpy(np.ascontiguousarray(seeds.raw_features)),
        "proj_key": seeds.proj_key,
    }
    with atomic_open(path) as fh:
        torch.save(data, fh)


def load_seeds(path: str | Path, key: str, device: Any) -> SeedGradients | None:
    """Seeds :func:`save_seeds` kept under ``key``; None when there are none, they were
    prepared from something else, or the file cannot be read (they are prepared again)."""
    import pickle

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    if data.get("raw_features") is None:  # kept by an older gdig: prepare them again
        return None
    return SeedGradients(
        ids=list(data["ids"]),
        layers=[TrackedLayer(name, d_out, d_in) for name, d_out, d_in in data["layers"]],
        u=[t.to(device) for t in data["u"]],
        v=[t.to(device) for t in data["v"]],
        features=data["features"].numpy(),
        norm=data["norm"].numpy(),
        rank=int(data["rank"]),
        proj_key=data["proj_key"],
        raw_features=data["raw_features"].numpy(),
    )


def share_seeds(dist: Dist, seeds: SeedGradients | None, device: Any) -> SeedGradients:
    """Rank 0's prepared seeds on every rank, on each rank's ``device`` (prepared once:
    the other ranks pass None and wait)."""
    if not dist.active:
        assert seeds is not None
        return seeds
    payload = None
    if dist.main:
        assert seeds is not None
        payload = replace(seeds, u=[t.cpu() for t in seeds.u], v=[t.cpu() for t in seeds.v])
    got = dist.share(payload)
    return replace(got, u=[t.to(device) for t in got.u], v=[t.to(device) for t in got.v])
