"""The influence engine (METHOD.md §1-4): EK-FAC/K-FAC factors of tracked layers, seed
gradients, and streaming scoring of a pool into an on-disk gradient store.

Benefit convention: ``B(m, s) = ∇L(s)ᵀ H⁻¹ ∇L(m)``; positive means candidate ``m`` helps seed
``s`` (lowers its loss).

    factors = fit_factors(model, tokenizer, pool, cfg)
    seeds = prepare_seeds(model, tokenizer, seed_pairs, factors, cfg)
    store = score_candidates(model, tokenizer, pool, seeds, cfg, "runs/store")
"""

from gdig.engine.batching import Batch, auto_max_tokens, collate, plan_batches
from gdig.engine.capture import Captured, GradientCapture, example_losses
from gdig.engine.config import EngineConfig, ExecutionConfig, FactorConfig, ScoreConfig
from gdig.engine.factors import Factors, FactorsMismatchError, LayerFactors, fit_factors
from gdig.engine.layers import TrackedLayer, default_layer_names, select_layers
from gdig.engine.projection import Projection, make_projections
from gdig.engine.score import rescore, score_candidates
from gdig.engine.seeds import SeedGradients, prepare_seeds
from gdig.engine.store import GradStore
from gdig.engine.template import PAPER_TEMPLATE, Encoded, encode_pair, language_name, render_prompt

__all__ = [
    "PAPER_TEMPLATE",
    "Batch",
    "Captured",
    "Encoded",
    "EngineConfig",
    "ExecutionConfig",
    "FactorConfig",
    "Factors",
    "FactorsMismatchError",
    "GradStore",
    "GradientCapture",
    "LayerFactors",
    "Projection",
    "ScoreConfig",
    "SeedGradients",
    "TrackedLayer",
    "auto_max_tokens",
    "collate",
    "default_layer_names",
    "encode_pair",
    "example_losses",
    "fit_factors",
    "language_name",
    "make_projections",
    "plan_batches",
    "prepare_seeds",
    "render_prompt",
    "rescore",
    "score_candidates",
    "select_layers",
]
