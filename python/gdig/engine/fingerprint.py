"""What identifies a network for its factors: class, config and tracked-weight statistics.

Saved factors are refused (:class:`~gdig.engine.factors.FactorsMismatchError`) for another
architecture, config or set of weights than they were fitted on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from torch import nn

from gdig.engine.layers import weight_stats
from gdig.io.errors import UsageError


class FactorsMismatchError(UsageError):
    """Saved factors do not belong to this model, layer set or configuration."""


# Config keys that describe a checkpoint, not the network (ignored when comparing models).
_VOLATILE_CONFIG = (
    "_name_or_path",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "architectures",
    "use_cache",
    "quantization_config",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "_commit_hash",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
)


def model_fingerprint(model: nn.Module, names: Sequence[str]) -> dict[str, Any]:
    """What identifies a network for its factors: class, config and tracked-weight stats."""
    cfg = model.config.to_dict() if hasattr(model, "config") else {}
    cfg = {k: v for k, v in cfg.items() if k not in _VOLATILE_CONFIG}
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return {
        "class": type(model).__name__,
        "config": json.loads(json.dumps(cfg, sort_keys=True, default=str)),
        "dtype": dtype,
        "weight_stats": weight_stats(model, list(names)),
    }


def compare_fingerprints(saved: dict, now: dict, path: str) -> None:
    if saved["class"] != now["class"]:
        raise FactorsMismatchError(
            f"{path}: factors were fitted on a {saved['class']}, not this {now['class']}; "
            "refit them (fit_factors) for this model"
        )
    diff = sorted(
        k
        for k in set(saved["config"]) | set(now["config"])
        if saved["config"].get(k) != now["config"].get(k)
    )
    if diff:
        raise FactorsMismatchError(
            f"{path}: factors were fitted on a model whose config differs in {diff[:8]}; "
            "refit them for this model"
        )
    # Same dtype: weights must agree to rounding; across dtypes, to the coarser rounding.
    rtol = 1e-6 if saved["dtype"] == now["dtype"] else 2e-2
    for (s_sum, s_sq), (n_sum, n_sq) in zip(
        saved["weight_stats"], now["weight_stats"], strict=True
    ):
        if abs(s_sq - n_sq) > rtol * max(abs(s_sq), 1e-30) or abs(s_sum - n_sum) > rtol * (
            abs(s_sq) ** 0.5 * 100 + 1e-30
        ):
            raise FactorsMismatchError(
                f"{path}: the tracked weights differ from those the factors were fitted on "
                "(another checkpoint of the same architecture?); refit them for this model"
            )
