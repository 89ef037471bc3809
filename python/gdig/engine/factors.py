"""K-FAC / EK-FAC factors of the tracked layers (METHOD.md §3): fit, save, load, precondition.

Per layer: ``A = E[a aᵀ]`` and ``S = E[g gᵀ]`` over the (non-padding) tokens of a sample of
the pool, their eigendecompositions in float64, and the eigen-diagonal ``Λ``: EK-FAC refits
it with a second pass, ``Λ = E_z[(Q_Sᵀ G(z) Q_A)²]``; K-FAC uses ``outer(λ_S, λ_A)``. Both
precondition the same way, ``H⁻¹G = Q_S ((Q_Sᵀ G Q_A) / (Λ + λ)) Q_Aᵀ``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

import gdig_ext
from gdig.data.examples import Example, Examples, as_examples
from gdig.engine.batching import auto_max_tokens, collate, plan_batches
from gdig.engine.capture import GradientCapture
from gdig.engine.config import EngineConfig, FactorConfig, ScoreConfig, as_dict
from gdig.engine.distributed import SINGLE, Dist
from gdig.engine.faults import finite_rows, run_with_backoff
from gdig.engine.fingerprint import (
    FactorsMismatchError,
    compare_fingerprints,
    model_fingerprint,
)
from gdig.engine.layers import select_layers, tracked_layers
from gdig.engine.precision import acc_dtype, matmul_acc, op_dtype
from gdig.engine.projection import make_projections, projection_key
from gdig.engine.template import encode_pair

FORMAT_VERSION = 1
_TENSORS = ("q_a", "eig_a", "q_s", "eig_s", "lam")


@dataclass
class LayerFactors:
    """Eigenbases and eigen-diagonal of one tracked layer (all float64 on CPU)."""

    name: str
    q_a: torch.Tensor  # [d_in, d_in]
    eig_a: torch.Tensor  # [d_in]
    q_s: torch.Tensor  # [d_out, d_out]
    eig_s: torch.Tensor  # [d_out]
    lam: torch.Tensor  # [d_out, d_in]
    # (Q_S, Q_A) cast for a device and dtype, made once: seeds cast them every batch.
    _bases: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def bases(self, device: Any, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Q_S, Q_A)`` on ``device`` in ``dtype`` (cast once, then kept)."""
        key = (str(device), dtype)
        if key not in self._bases:
            self._bases[key] = (self.q_s.to(device, dtype), self.q_a.to(device, dtype))
        return self._bases[key]

    def damping(self, scoring: ScoreConfig) -> float:
        """λ: the absolute ``scoring.damping`` or ``scoring.damping_factor * mean(Λ)``."""
        if scoring.damping is not None:
            return float(scoring.damping)
        return float(scoring.damping_factor * self.lam.mean())

    def denominator(self, scoring: ScoreConfig, device: Any, dtype: torch.dtype) -> torch.Tensor:
        """``Λ + λ`` ``[d_out, d_in]``; raises ValueError when an entry is not positive."""
        denom = (self.lam.to(device, torch.float64) + self.damping(scoring)).to(dtype)
        if bool((denom <= 0).any()):
            raise ValueError(
                f"layer {self.name}: Λ + λ has non-positive entries; set a positive damping"
            )
        return denom

    def precondition(self, grads: torch.Tensor, scoring: ScoreConfig) -> torch.Tensor:
        """``H⁻¹ G`` for ``grads [B, d_out, d_in]``, in ``grads``' dtype (float32 or float64)."""
        g = grads
        q_s, q_a = self.bases(g.device, g.dtype)
        denom = self.denominator(scoring, g.device, g.dtype)
        return q_s @ ((q_s.T @ g @ q_a) / denom) @ q_a.T

    def precondition_tokens(
        self, a: torch.Tensor, g: torch.Tensor, scoring: ScoreConfig
    ) -> torch.Tensor:
        """``Q_Sᵀ (H⁻¹ G) Q_A`` (``H⁻¹G`` in the eigenbasis), ``[B, d_out, d_in]``, for
        ``G = Σ_t g_t a_tᵀ`` given by its tokens ``a [B, T, d_in]``, ``g [B, T, d_out]`` (rows
        to leave out zero in ``g``), in ``a``'s dtype.

        A seed's gradient has rank at most T, so rotating its tokens costs
        ``T (d_in² + d_out²)`` multiply-adds per example against ``d_out d_in (d_in + d_out)``
        to rotate a dense ``G`` (and as much again to rotate ``H⁻¹G`` back): on SmolLM2's
        down_proj at T = 80, 13x fewer than :meth:`precondition`. Callers compress and
        project in the eigenbasis, so ``H⁻¹G`` itself is never formed.
        """
        q_s, q_a = self.bases(a.device, a.dtype)
        t, d_in, d_out = a.shape[1], q_a.shape[0], q_s.shape[0]
        if t * (d_in**2 + d_out**2) <= d_in * d_out * (d_in + d_out):  # rotate the tokens
            rotated = (g @ q_s).transpose(1, 2) @ (a @ q_a)
        else:
            rotated = q_s.T @ (g.transpose(1, 2) @ a) @ q_a
        return rotated / self.denominator(scoring, a.device, a.dtype)


@dataclass
class Factors:
    """Fitted factors of every tracked layer, with the configuration that produced them."""

    layers: list[LayerFactors]
    method: str
    fingerprint: dict[str, Any]
    config: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)
    # The same factors in the projected space of `projection` (None in exact mode).
    projected: list[LayerFactors] | None = None
    projection: dict[str, Any] | None = None
    # Seconds of the fit's eigendecompositions (its fixed cost, whatever the sample):
    # kept apart from `stats`, which the file holds, so that equal fits save equal bytes.
    eigen_seconds: float = field(default=0.0, compare=False)

    @property
    def layer_names(self) -> list[str]:
        return [lf.name for lf in self.layers]

    def __getitem__(self, name: str) -> LayerFactors:
        for lf in self.layers:
            if lf.name == name:
                return lf
        raise KeyError(f"no factors for layer {name!r}; have {self.layer_names}")

    def projected_for(self, cfg: FactorConfig) -> list[LayerFactors] | None:
        """Projected-space factors when they were fitted with ``cfg``'s projections."""
        if self.projected is None or self.projection != projection_key(cfg):
            return None
        return self.projected

    # --- persistence ---
    def save(self, path: str | Path, dtype: torch.dtype = torch.float64) -> Path:
        """Write one safetensors file (atomic rename) holding tensors and metadata.

        ``dtype`` is the precision kept on disk: scoring in float32 casts the bases to
        float32 anyway, so a run stores them so (half the bytes of float64); :meth:`load`
        gives float64 back either way."""
        from safetensors.torch import save

        from gdig.io.atomic import atomic_write_bytes

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for prefix, group in (("", self.layers), ("proj.", self.projected or [])):
            for i, lf in enumerate(group):
                for key in _TENSORS:
                    tensors[f"{prefix}{i}.{key}"] = getattr(lf, key).to(dtype).contiguous()
        meta = {
            "format": "gdig-factors",
            "version": FORMAT_VERSION,
            "method": self.method,
            "layers": self.layer_names,
            "fingerprint": self.fingerprint,
            "config": self.config,
            "stats": self.stats,
            "projection": self.projection,
        }
        atomic_write_bytes(path, save(tensors, metadata={"gdig": json.dumps(meta)}))
        return path

    @classmethod
    def load(cls, path: str | Path, model: nn.Module, cfg: FactorConfig) -> Factors:
        """Read factors, refusing (FactorsMismatchError) if they belong to another model,
        layer set or method than ``model`` under ``cfg``."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"factors file {path} does not exist; run fit_factors first")
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("gdig")
            if raw is None:
                raise FactorsMismatchError(f"{path} is not a gdig factors file (no metadata)")
            meta = json.loads(raw)
            groups = {}
            for prefix in ("", "proj."):
                if prefix and meta.get("projection") is None:
                    continue
                groups[prefix] = [
                    LayerFactors(
                        name,
                        **{k: f.get_tensor(f"{prefix}{i}.{k}").to(torch.float64) for k in _TENSORS},
                    )
                    for i, name in enumerate(meta["layers"])
                ]
        factors = cls(
            groups[""],
            meta["method"],
            meta["fingerprint"],
            meta["config"],
            meta["stats"],
            projected=groups.get("proj."),
            projection=meta.get("projection"),
        )
        factors.check(model, cfg, where=str(path))
        return factors

    def check(self, model: nn.Module, cfg: FactorConfig, where: str = "factors") -> None:
        """Raise FactorsMismatchError unless these factors fit ``model`` and ``cfg``."""
        if self.fingerprint["class"] != type(model).__name__:
            raise FactorsMismatchError(
                f"{where}: factors were fitted on a {self.fingerprint['class']}, not this "
                f"{type(model).__name__}; refit them (fit_factors) for this model"
            )
        expected = select_layers(model, cfg.layers, cfg.layer_stride)
        if expected != self.layer_names:
            raise FactorsMismatchError(
                f"{where}: factors cover layers {self.layer_names} but the configuration tracks "
                f"{expected}; refit them or set --layers to match"
            )
        # Every factor option, not only layers and method: template, lengths, Fisher labels,
        # sample and projections all change the numbers.
        want = as_dict(cfg)
        diff = [
            f"{k}: {self.config.get(k)!r} -> {want.get(k)!r}"
            for k in sorted(set(self.config) | set(want))
            if self.config.get(k) != want.get(k)
        ]
        if diff:
            raise FactorsMismatchError(
                f"{where}: factors were fitted with other options ({'; '.join(diff)}); refit "
                "them or use the options they were fitted with"
            )
        compare_fingerprints(self.fingerprint, model_fingerprint(model, expected), where)


def _sample(n: int, k: int, seed: int) -> list[int]:
    if k == 0 or k >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), k))


def _acc_dtype(model: nn.Module) -> torch.dtype:
    return acc_dtype(next(model.parameters()).dtype)


class _SpaceFit:
    """Accumulates one layer's factors in one space (the full one or the projected one)."""

    def __init__(self, name: str, d_out: int, d_in: int, device) -> None:
        self.name = name
        self.cov_a = torch.zeros(d_in, d_in, dtype=torch.float64, device=device)
        self.cov_s = torch.zeros(d_out, d_out, dtype=torch.float64, device=device)
        self.lam: torch.Tensor | None = None
        self.result: LayerFactors | None = None

    def add_cov(self, a: torch.Tensor, g: torch.Tensor, mask: torch.Tensor) -> None:
        m = mask.to(a.dtype).unsqueeze(-1)  # 0/1: exact in any dtype
        a2, g2 = (a * m).flatten(0, 1), (g * m).flatten(0, 1)
        acc = acc_dtype(a.dtype)  # bf16/fp16 tokens: fp32 sums of their exact products
        self.cov_a += matmul_acc(a2.T, a2, acc).to(torch.float64)
        self.cov_s += matmul_acc(g2.T, g2, acc).to(torch.float64)

    def eigen(self, n_tokens: int) -> None:
        eig_a, q_a = torch.linalg.eigh(self.cov_a / max(n_tokens, 1))
        eig_s, q_s = torch.linalg.eigh(self.cov_s / max(n_tokens, 1))
        eig_a, eig_s = eig_a.clamp_min(0), eig_s.clamp_min(0)  # round-off negatives
        self.result = LayerFactors(
            self.name,
            q_a.cpu(),
            eig_a.cpu(),
            q_s.cpu(),
            eig_s.cpu(),
            torch.outer(eig_s, eig_a).cpu(),
        )
        self.cov_a = self.cov_s = None  # type: ignore[assignment]

    def add_lam(self, a: torch.Tensor, g: torch.Tensor, mask: torch.Tensor) -> None:
        assert self.result is not None
        if self.lam is None:  # the op accumulates bf16/fp16 tokens into a float32 lam
            self.lam = torch.zeros_like(self.result.lam, dtype=acc_dtype(a.dtype), device=a.device)
            self._q = (self.result.q_a.to(a.device, a.dtype), self.result.q_s.to(a.device, a.dtype))
        gdig_ext.ekfac_accumulate(a, g, mask, self._q[0], self._q[1], self.lam)

    def sum_lam(self, dist: Dist, dtype: torch.dtype, device) -> None:
        """Sum the diagonal across ranks (a rank without examples adds zeros)."""
        assert self.result is not None
        if self.lam is None:
            self.lam = torch.zeros_like(self.result.lam, dtype=dtype, device=device)
        dist.sum_(self.lam)

    def finish_lam(self, n_examples: int) -> None:
        assert self.result is not None and self.lam is not None
        self.result.lam = (self.lam.to(torch.float64) / max(n_examples, 1)).cpu()


def fit_factors(
    model: nn.Module,
    tokenizer: Any,
    pairs: Examples | Sequence[Example],
    cfg: EngineConfig,
    progress: bool = True,
    dist: Dist = SINGLE,
) -> Factors:
    """Fit the factors of the tracked layers on a sample of ``pairs`` (``factor_samples``).

    Under torchrun (``dist``) each rank takes every ``world``-th example of the sample and
    the sums (A, S, tokens, the EK-FAC diagonal, examples) are added across ranks, so every
    rank ends with the same factors; only the order of the additions differs from one
    process (float rounding).

    Pass 1 accumulates ``A`` and ``S``; EK-FAC then refits the eigen-diagonal with
    ``gdig_ext.ekfac_accumulate`` on the same examples, reusing the first pass's captured
    activations while they fit in ``cfg.execution.factor_cache_mb`` and recomputing the rest.
    The same is done, at little extra cost, in the projected space of ``cfg.factors.k_in``/``k_out``
    (unless exact): those factors precondition the seeds' projected gradients so that
    re-scoring from stored features is consistent (METHOD.md §4, projected mode).
    """
    pairs = as_examples(pairs)
    if len(pairs) == 0:
        raise ValueError("fit_factors: no pairs to fit the factors on")
    names = select_layers(model, cfg.factors.layers, cfg.factors.layer_stride)
    layers = tracked_layers(model, names)
    device = next(model.parameters()).device
    acc = _acc_dtype(model)
    # Captured tokens stay in the autocast dtype (precision.py): the ops take them as they
    # are and accumulate in fp32, so the bf16 GEMMs run on tensor cores.
    work = op_dtype(cfg.factors.autocast, acc)
    rows = dist.mine(_sample(len(pairs), cfg.factors.factor_samples, cfg.factors.factor_seed))
    encoded = [
        encode_pair(p, tokenizer, cfg.factors.template, cfg.factors.max_length)
        for p in pairs.take(rows)
    ]
    max_tokens = cfg.execution.max_batch_tokens or auto_max_tokens(model, device)
    batches = plan_batches([len(e) for e in encoded], cfg.execution.batch_size, max_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ekfac = cfg.factors.method == "ekfac"

    full = [_SpaceFit(ly.name, ly.d_out, ly.d_in, device) for ly in layers]
    projections = None
    if not cfg.factors.exact:
        projections = [
            p.to(device, work)
            for p in make_projections(
                layers, cfg.factors.k_in, cfg.factors.k_out, cfg.factors.proj_seed
            )
        ]
        proj = [_SpaceFit(ly.name, cfg.factors.k_out, cfg.factors.k_in, device) for ly in layers]
    n_tokens = 0
    cache: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    cache_bytes, budget = 0, (cfg.execution.factor_cache_mb << 20) if ekfac else 0

    def generator(b: int) -> torch.Generator:
        # Sampled labels must be the same in both passes: one fixed stream per batch.
        return torch.Generator(device=device).manual_seed(cfg.factors.factor_seed * 100_003 + b)

    nonfinite: set[str] = set()

    def capture(cap: GradientCapture, b: int, sub: list[int]):
        batch = collate(encoded, sub, pad_id, device)
        got = cap.run(batch, cfg.factors.fisher_labels, generator(b))
        captured = [(a.to(work), g.to(work)) for a, g in got.layers]
        mask = got.mask.to(acc)  # float32 even for bf16 tokens: it is also counted
        ok = torch.isfinite(got.losses)
        for a, g in captured:
            ok &= finite_rows(a, g)
        if not bool(ok.all()):
            # NaN/Inf: zero and mask the example so it enters no sum, and list it.
            bad = ~ok
            for j in bad.nonzero().flatten().tolist():
                nonfinite.add(pairs.take([rows[sub[j]]])[0].id)
            captured = [
                (a.masked_fill(bad[:, None, None], 0), g.masked_fill(bad[:, None, None], 0))
                for a, g in captured
            ]
            mask = mask.masked_fill(bad[:, None], 0)
        return captured, mask

    def capture_batch(cap: GradientCapture, b: int):
        """``[(captured, mask)]`` of batch ``b``, halved as often as memory requires."""
        parts = run_with_backoff(lambda sub: capture(cap, b, list(sub)), batches[b], "factor batch")
        return [out for _, out in parts]

    def projected(i: int, a: torch.Tensor, g: torch.Tensor):
        return a @ projections[i].p_in, g @ projections[i].p_out

    passes = 2 if ekfac else 1
    with (
        GradientCapture(model, names, cfg.factors.autocast) as cap,
        tqdm(
            total=len(encoded), desc=f"fit factors (pass 1/{passes})", unit="ex",
            disable=not progress,
        ) as bar,
    ):  # fmt: skip
        for b in range(len(batches)):
            parts = capture_batch(cap, b)
            size = 0
            for captured, mask in parts:
                n_tokens += int(mask.sum())
                for i, (a, g) in enumerate(captured):
                    full[i].add_cov(a, g, mask)
                    if projections is not None:
                        proj[i].add_cov(*projected(i, a, g), mask)
                    size += (a.numel() + g.numel()) * a.element_size()
            if cache_bytes + size <= budget:
                cache[b] = parts
                cache_bytes += size
            bar.update(len(batches[b]))
        nonfinite = set().union(*dist.gather(nonfinite))
        n_examples = dist.sum_int(len(encoded), device)
        n_tokens = dist.sum_int(n_tokens, device)
        if len(nonfinite) == n_examples:
            raise ValueError("fit_factors: every example's loss or gradient is NaN/Inf")

        spaces = full + (proj if projections is not None else [])
        eigen_start = time.perf_counter()
        for sp in spaces:
            dist.sum_(sp.cov_a)
            dist.sum_(sp.cov_s)
            sp.eigen(n_tokens)
        eigen_seconds = time.perf_counter() - eigen_start
        if ekfac:  # the bar counts examples, once per pass
            bar.reset(total=len(encoded))
            bar.set_description("fit factors (pass 2/2)")
            for b in range(len(batches)):
                parts = cache.pop(b) if b in cache else capture_batch(cap, b)
                for captured, mask in parts:
                    for i, (a, g) in enumerate(captured):
                        full[i].add_lam(a, g, mask)
                        if projections is not None:
                            proj[i].add_lam(*projected(i, a, g), mask)
                bar.update(len(batches[b]))
            for sp in spaces:
                sp.sum_lam(dist, acc, device)
                sp.finish_lam(n_examples - len(nonfinite))

    return Factors(
        layers=[sp.result for sp in full],
        method=cfg.factors.method,
        fingerprint=model_fingerprint(model, names),
        config=as_dict(cfg.factors),
        stats={
            "examples": n_examples - len(nonfinite),
            "tokens": n_tokens,
            "nonfinite_ids": sorted(nonfinite),
        },
        projected=[sp.result for sp in proj] if projections is not None else None,
        projection=projection_key(cfg.factors) if projections is not None else None,
        eigen_seconds=eigen_seconds,
    )
