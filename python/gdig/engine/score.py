"""Scoring the pool (METHOD.md §4): one forward/backward per batch gives every candidate's
benefit on every seed (``gdig_ext.lowrank_benefit``, summed over layers) and its projected
gradient (``gdig_ext.project_grads``); both stream into the on-disk gradient store shard by
shard, so memory does not grow with the pool.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import gdig_ext
from gdig.data.examples import Example, Examples, as_examples
from gdig.engine.batching import auto_max_tokens, collate, plan_batches
from gdig.engine.capture import Captured, GradientCapture
from gdig.engine.config import EngineConfig, as_dict
from gdig.engine.distributed import SINGLE, Dist
from gdig.engine.faults import fault_point, finite_rows, is_out_of_memory, run_with_backoff
from gdig.engine.fingerprint import model_fingerprint
from gdig.engine.precision import acc_dtype, matmul_acc, op_dtype
from gdig.engine.projection import Projection, make_projections, projection_key
from gdig.engine.seeds import SeedGradients
from gdig.engine.store import GradStore, StoreWriter
from gdig.engine.template import encode_pair
from gdig.io.errors import UsageError
from gdig.io.integrity import sha256_json

log = logging.getLogger("gdig")


def gram_norm_sq(a: torch.Tensor, g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] ``||Σ_t g_t a_tᵀ||²_F = Σ_{t,t'} (g_t·g_t')(a_t·a_t')`` without forming G, summed
    in float32 (float64 for float64) whatever ``a``/``g``'s dtype."""
    acc = acc_dtype(a.dtype)
    gm = g * mask.to(g.dtype).unsqueeze(-1)
    gg = matmul_acc(gm, gm.transpose(1, 2), acc)
    return (gg * matmul_acc(a, a.transpose(1, 2), acc)).sum(dim=(1, 2))


def batch_stats(benefit: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """n_pos, mean, min and top-k (descending) of each row of a benefit block ``[B, S]``.

    The top-k order is the compiled ``score_stats``' (``csrc/topk_order.h``): NaN first, then
    larger values, ties to the lower seed index, i.e. a stable descending sort. ``topk``
    leaves the order of ties unspecified, and a row zeroed for a NaN/Inf loss is all ties;
    S is small enough for a full sort to cost nothing beside the model pass."""
    keep = min(k, benefit.shape[1])
    val, idx = benefit.sort(dim=1, descending=True, stable=True)
    val, idx = val[:, :keep], idx[:, :keep]
    return {
        "n_pos": (benefit > 0).sum(dim=1),
        "mean": benefit.mean(dim=1),
        "min": benefit.amin(dim=1),
        "topk_val": val,
        "topk_idx": idx,
    }


# Reading one float of a dense seed matrix costs about as much time as this many FLOPs
# (2-core Xeon: 333 GFLOP/s against ~2.5 G floats/s; an H100's ratio is of the same order).
_READ_FLOPS = 100


def dense_wins(b: int, t: int, s: int, r: int, d_out: int, d_in: int) -> bool:
    """Whether a batch of ``b`` candidates of ``t`` tokens is scored faster against dense
    seed gradients ``[S, d_out·d_in]`` (form each candidate's gradient, one matmul) than by
    the token-wise low-rank contraction (``lowrank_benefit``, cost ``∝ T·S·r·(d_in+d_out)``).
    The dense side is bound by reading the seed matrix unless the batch is large."""
    lowrank = 2 * b * t * (d_in + d_out) * s * r
    dense = 2 * b * t * d_out * d_in + s * d_out * d_in * max(2 * b, _READ_FLOPS)
    return dense < lowrank


class CandidateScorer:
    """Turns one batch's captured ``a``/``g`` into benefits, features and norms.

    Benefits are ``Σ_t Σ_k (g_t·u_sk)(a_t·v_sk)``. On small layers the same sum is cheaper
    in another order, ``<Σ_t g_t a_tᵀ, Σ_k u_sk v_skᵀ>``: the seeds' dense ``Ĝ_s`` are then
    formed once (within ``dense_mb`` of memory, all layers together) and each batch takes
    whichever order costs fewer operations (:func:`dense_wins`); the two agree to rounding.

    ``dtype`` is what the compiled ops receive (:func:`~gdig.engine.precision.op_dtype`: the
    autocast dtype, or the accumulation dtype); benefits, features and norms come out in the
    accumulation dtype (float32, float64 for float64) either way, and the dense path forms
    its products from the same captured values with an fp32 result.
    """

    def __init__(
        self, seeds: SeedGradients, projections: list[Projection], device, dtype, dense_mb: int = 0
    ):
        self.dtype = dtype
        self.acc = acc_dtype(dtype)
        factors = [_factors_in(u, v, dtype) for u, v in zip(seeds.u, seeds.v, strict=True)]
        self.u = [u.to(device) for u, _ in factors]
        self.v = [v.to(device) for _, v in factors]
        self.proj = [p.to(device, dtype) for p in projections]
        self.dense: list[torch.Tensor | None] = [None] * len(self.u)
        self._seeds, self._device = seeds, device  # dense seeds are formed from these
        self._budget = dense_mb << 20  # bytes left for dense seed gradients

    def _dense_seeds(self, i: int, b: int, t: int) -> torch.Tensor | None:
        """Layer ``i``'s dense ``[S, d_out·d_in]`` seeds when they score this batch faster
        and fit the memory left (formed on first use)."""
        u, v = self.u[i], self.v[i]
        (s, r, d_out), d_in = u.shape, v.shape[2]
        if not dense_wins(b, t, s, r, d_out, d_in):
            return None
        if self.dense[i] is None:
            size = s * d_out * d_in * torch.finfo(self.acc).bits // 8
            if size > self._budget:
                return None
            try:
                u, v = (x.to(self._device, self.acc) for x in (self._seeds.u[i], self._seeds.v[i]))
                self.dense[i] = torch.bmm(u.transpose(1, 2), v).reshape(s, d_out * d_in)
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                self._budget = 0  # the device is full: every layer stays low-rank
                log.warning("no memory for dense seed gradients: scoring stays low-rank")
                return None
            self._budget -= size
        return self.dense[i]

    def __call__(self, got: Captured) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = got.mask.to(self.dtype)
        benefit, feats, norm_sq = None, [], None
        for i, (a, g) in enumerate(got.layers):
            a, g = a.to(self.dtype), g.to(self.dtype)
            dense = self._dense_seeds(i, a.shape[0], a.shape[1])
            if dense is not None:
                gm = (g * mask.unsqueeze(-1)).transpose(1, 2)
                grads = matmul_acc(gm, a, self.acc)  # [B,d_out,d_in]
                b = grads.reshape(a.shape[0], -1) @ dense.T
            else:
                b = gdig_ext.lowrank_benefit(a, g, mask, self.u[i], self.v[i])
            benefit = b if benefit is None else benefit + b
            p = gdig_ext.project_grads(a, g, mask, self.proj[i].p_in, self.proj[i].p_out)
            feats.append(p.reshape(p.shape[0], -1))
            n = gram_norm_sq(a, g, mask)
            norm_sq = n if norm_sq is None else norm_sq + n
        return benefit, torch.cat(feats, dim=1), norm_sq.clamp_min(0).sqrt()


def _factors_in(u: torch.Tensor, v: torch.Tensor, dtype: torch.dtype):
    """Seed factors ``u [S,r,d_out]``, ``v [S,r,d_in]`` in the ops' ``dtype``.

    float16 holds only up to 65504, and preconditioned seed gradients can be large: each
    pair ``u_sk``, ``v_sk`` is first rescaled to equal norms (``u_sk v_skᵀ`` is unchanged),
    and a factor that still does not fit is a usage error rather than silent infinities.
    """
    if dtype != torch.float16:
        return u.to(dtype), v.to(dtype)
    nu = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    nv = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    scale = torch.where((nu > 0) & (nv > 0), (nv / nu).sqrt(), torch.ones_like(nu))
    u16, v16 = (u * scale).to(dtype), (v / scale).to(dtype)
    if not (torch.isfinite(u16).all() and torch.isfinite(v16).all()):
        raise UsageError(
            "the seeds' preconditioned gradients exceed float16's range; "
            "use --autocast bf16 (or no autocast)"
        )
    return u16, v16


def run_key(model: nn.Module, seeds: SeedGradients, cfg: EngineConfig) -> dict[str, Any]:
    """Everything the stored numbers depend on; a store is resumed only under the same key."""
    config = {"factors": as_dict(cfg.factors), "scoring": as_dict(cfg.scoring)}
    return {
        "config": config,
        "model": sha256_json(model_fingerprint(model, seeds.layer_names)),
        "seeds": seeds.ids,
        "seed_features": features_digest(seeds.features),
    }


def features_digest(features: np.ndarray) -> str:
    """sha256 of the seed features rounded to float16, so that a bit-level difference in a
    recomputation does not block a resume. They are first scaled by a power of two (exact)
    into [-1, 1]: exact-mode features (whole gradients) exceed float16's range."""
    f = np.asarray(features, dtype=np.float32)
    peak = float(np.abs(f).max()) if f.size else 0.0
    exponent = int(np.frexp(peak)[1]) if np.isfinite(peak) and peak > 0 else 0
    return hashlib.sha256(np.ldexp(f, -exponent).astype(np.float16).tobytes()).hexdigest()


def score_candidates(
    model: nn.Module,
    tokenizer: Any,
    pool: Examples | Sequence[Example],
    seed_grads: SeedGradients,
    cfg: EngineConfig,
    store_dir: str | Path,
    shard_size: int | None = None,
    progress: bool = True,
    verify: str = "quick",
    dist: Dist = SINGLE,
) -> GradStore:
    """Score every pool pair against every seed and write the gradient store at ``store_dir``.

    Benefit ``B(m, s) = ∇L(s)ᵀ H⁻¹ ∇L(m)``: positive means candidate ``m`` helps seed ``s``.
    Shards already written by an identical earlier run are kept (resume) when they pass
    the ``verify`` check: ``quick`` (size and mtime against the store's manifest) or
    ``full`` (sha256); see :class:`~gdig.engine.store.StoreWriter`.

    Under torchrun (``dist``) shard ``i`` is rank ``i % world``'s; every rank writes its
    own shards and rank 0 completes the store once all are written. A shard's numbers do
    not depend on the number of ranks.
    """
    if seed_grads.proj_key != projection_key(cfg.factors):
        raise ValueError(
            f"seed gradients were prepared with projection {seed_grads.proj_key} but the "
            f"configuration says {projection_key(cfg.factors)}; prepare the seeds with this "
            "configuration"
        )
    shard_size = shard_size or cfg.execution.shard_size
    layers = seed_grads.layers
    projections = make_projections(
        layers, cfg.factors.k_in, cfg.factors.k_out, cfg.factors.proj_seed, cfg.factors.exact
    )
    device = next(model.parameters()).device
    dtype = op_dtype(cfg.factors.autocast, acc_dtype(next(model.parameters()).dtype))
    scorer = CandidateScorer(seed_grads, projections, device, dtype, cfg.execution.dense_seeds_mb)
    pool = as_examples(pool)  # distinct ids: a pool file is checked as it is read
    ids = pool.ids()
    writer = StoreWriter(
        store_dir,
        run_key=run_key(model, seed_grads, cfg),
        n=len(pool),
        shard_size=shard_size,
        seed_ids=seed_grads.ids,
        seed_features=seed_grads.features,
        seed_norm=seed_grads.norm,
        seed_raw_features=seed_grads.raw_features,
        layers=[{"name": ly.name, "d_out": ly.d_out, "d_in": ly.d_in} for ly in layers],
        top_k=cfg.scoring.top_k,
        feature_dtype=cfg.scoring.feature_dtype,
        verify=verify,
        part=dist.rank,
        parts=dist.world,
    )
    max_tokens = cfg.execution.max_batch_tokens or auto_max_tokens(model, device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    k = min(cfg.scoring.top_k, seed_grads.n)
    n_shards = (len(pool) + shard_size - 1) // shard_size
    mine = [i for i in range(n_shards) if dist.owns(i)]
    total = sum(min(shard_size, len(pool) - i * shard_size) for i in mine)
    with (
        GradientCapture(model, seed_grads.layer_names, cfg.factors.autocast) as cap,
        tqdm(total=total, desc="score candidates", unit="ex", disable=not progress) as bar,
    ):
        for index in mine:
            start = index * shard_size
            stop = min(start + shard_size, len(pool))
            if writer.shard_done(index, ids[start:stop]):
                bar.update(stop - start)
                continue
            encoded = [
                encode_pair(p, tokenizer, cfg.factors.template, cfg.factors.max_length)
                for p in pool.take(range(start, stop))
            ]
            arrays = _empty_shard(stop - start, seed_grads.n, projections, k)
            bad_rows: list[int] = []

            def score_rows(rows, encoded=encoded):
                got = cap.run(collate(encoded, rows, pad_id, device))
                benefit, feats, norm = scorer(got)
                ok = finite_rows(benefit, feats, norm) & torch.isfinite(got.losses)
                return benefit, feats, norm, got.losses, ok

            for batch in plan_batches(
                [len(e) for e in encoded], cfg.execution.batch_size, max_tokens
            ):
                for rows, (benefit, feats, norm, loss, ok) in run_with_backoff(
                    score_rows, batch, "scoring batch"
                ):
                    if not bool(ok.all()):  # NaN/Inf: zero the row, list the candidate
                        bad = ~ok
                        bad_rows += [rows[j] for j in bad.nonzero().flatten().tolist()]
                        benefit = benefit.masked_fill(bad[:, None], 0)
                        feats = feats.masked_fill(bad[:, None], 0)
                        norm = norm.masked_fill(bad, 0)
                        loss = loss.masked_fill(bad, 0)
                    arrays["benefit"][rows] = benefit.float().cpu().numpy()
                    arrays["features"][rows] = feats.float().cpu().numpy()
                    arrays["cand_norm"][rows] = norm.float().cpu().numpy()
                    arrays["loss"][rows] = loss.detach().float().cpu().numpy()
                    for key, val in batch_stats(benefit, k).items():
                        arrays[key][rows] = val.cpu().numpy()
                    bar.update(len(rows))
                fault_point("score:batch")
            nonfinite = [ids[start + r] for r in sorted(bad_rows)]
            if nonfinite:
                log.warning(
                    "shard %d: %d candidate(s) with a NaN/Inf loss or gradient left out: %s",
                    index,
                    len(nonfinite),
                    ", ".join(nonfinite[:5]),
                )
            writer.write_shard(index, start, ids[start:stop], arrays, nonfinite)
            fault_point("score:shard")
    dist.barrier()  # every rank's shards are on disk
    if dist.main:
        writer.finish(n_shards)
    dist.barrier()
    store = GradStore.open(store_dir)
    if cfg.execution.export_benefit_matrix and dist.main:
        store.export_benefit_matrix()
    return store


def _empty_shard(n: int, s: int, projections: list[Projection], k: int) -> dict[str, np.ndarray]:
    dim = sum(p.dim for p in projections)
    return {
        "benefit": np.zeros((n, s), dtype=np.float32),
        "features": np.zeros((n, dim), dtype=np.float32),
        "cand_norm": np.zeros(n, dtype=np.float32),
        "loss": np.zeros(n, dtype=np.float32),
        "n_pos": np.zeros(n, dtype=np.int64),
        "mean": np.zeros(n, dtype=np.float32),
        "min": np.zeros(n, dtype=np.float32),
        "topk_val": np.zeros((n, k), dtype=np.float32),
        "topk_idx": np.zeros((n, k), dtype=np.int64),
    }


# Rows of stored features read at once by rescore(): 16k rows x D=10,240 float32 = 640 MB
# at most, whatever the shard size.
RESCORE_TILE = 16384


def rescore(
    store: GradStore,
    seed_features: np.ndarray | SeedGradients | None = None,
    top_k: int = 5,
    device: str = "cpu",
    tile_rows: int = RESCORE_TILE,
) -> dict[str, np.ndarray]:
    """Per-candidate stats against (new) seeds from the stored projected gradients alone.

    ``seed_features`` is ``[S, D]`` (or a :class:`SeedGradients` prepared with the store's
    projection settings); default: the store's own seeds. No model pass: one
    ``gdig_ext.score_stats`` GEMM per tile of ``tile_rows`` stored rows, read as float32
    from the memory-mapped shards (features stored as float16 agree closely, not exactly:
    see ``ScoreConfig.feature_dtype``). With ``device="cuda"`` the seeds sit on the GPU and
    the tiles stream from the CPU (the op copies them); memory stays flat in N either way.
    Returns n_pos, mean, min, topk_val, topk_idx in pool order (benefit: positive = helps).
    """
    if seed_features is None:
        seeds = store.seed_features
    elif isinstance(seed_features, SeedGradients):
        seeds = seed_features.features
    else:
        seeds = np.asarray(seed_features, dtype=np.float32)
    if seeds.ndim != 2 or seeds.shape[1] != store.dim:
        raise ValueError(f"rescore: seed features must be [S, {store.dim}], got {seeds.shape}")
    seeds_t = torch.from_numpy(np.ascontiguousarray(seeds, dtype=np.float32)).to(device)
    k = min(top_k, seeds.shape[0])
    # The outputs are allocated once at their final size (76 bytes a candidate at k = 5) and
    # filled tile by tile: gathering pieces and concatenating them held them twice.
    n = store.n
    out = {
        "n_pos": np.zeros(n, np.int64),
        "mean": np.zeros(n, np.float32),
        "min": np.zeros(n, np.float32),
        "topk_val": np.zeros((n, k), np.float32),
        "topk_idx": np.zeros((n, k), np.int64),
    }
    row = 0
    for feats in store.feature_shards():  # float32 (a float16 store's upcast on read)
        for start in range(0, len(feats), tile_rows):
            tile = np.ascontiguousarray(feats[start : start + tile_rows], dtype=np.float32)
            got = gdig_ext.score_stats(torch.from_numpy(tile), seeds_t, k)
            for key, val in zip(out, got, strict=True):
                out[key][row : row + len(tile)] = val.cpu().numpy()
            row += len(tile)
    if row != n:
        raise ValueError(f"rescore: the store's shards hold {row} rows, its manifest says {n}")
    return out
