"""The result of selection: per-candidate statistics, flags, and the chosen rows."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gdig.data.idlist import IdList, as_idlist
from gdig.io.atomic import atomic_open
from gdig.io.errors import GdigError
from gdig.io.validate import read_saved

from .config import SelectConfig


class ShortfallError(GdigError):
    """Fewer candidates are eligible than the budget asks for (and --on-short stop)."""

    def __init__(
        self,
        message: str,
        *,
        available: int,
        budget: int,
        pool_size: int,
        selection: Selection | None = None,
    ) -> None:
        super().__init__(message)
        self.available = available
        self.budget = budget
        self.pool_size = pool_size
        self.selection = selection  # the quality statistics, nothing selected


@dataclass
class Selection:
    """Everything selection decided, aligned with the pool's row order.

    Benefits are ``grad L(s)^T H^-1 grad L(m)`` under the configured scoring:
    positive means the candidate helps.
    """

    ids: Sequence[str]  # an IdList when it comes from a gradient store
    n_pos: np.ndarray  # int32 [N]: seed groups the candidate benefits
    n_seeds: int  # G: seed groups that n_pos counts out of
    need: int  # n_pos needed to pass quality: ceil(tau * G)
    benefit_mean: np.ndarray  # float64 [N]
    benefit_min: np.ndarray  # float32 [N]
    passed_quality: np.ndarray  # bool [N]
    cluster: np.ndarray  # int32 [N], -1 where not clustered
    selected: np.ndarray  # bool [N]
    filled: np.ndarray  # bool [N]: selected only to fill a shortfall (failed quality)
    selected_rows: np.ndarray  # int64, ascending pool order
    cluster_sizes_before: np.ndarray  # int64 [K]; empty when nothing was clustered
    cluster_sizes_after: np.ndarray  # int64 [K]: selected per cluster
    config: SelectConfig
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    notes: list[str] = field(default_factory=list)  # warnings a user must see

    _ARRAYS = (
        "n_pos",
        "benefit_mean",
        "benefit_min",
        "passed_quality",
        "cluster",
        "selected",
        "filled",
        "selected_rows",
        "cluster_sizes_before",
        "cluster_sizes_after",
    )

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def n_clusters(self) -> int:
        return len(self.cluster_sizes_before)

    def summary(self) -> dict:
        """Counts and settings, JSON-ready, for manifests and the report."""
        return {
            "pool_size": self.n,
            "seed_groups": self.n_seeds,
            "need_positive": self.need,
            "passed_quality": int(self.passed_quality.sum()),
            "clusters": self.n_clusters,
            "selected": int(self.selected.sum()),
            "filled": int(self.filled.sum()),
            "selector": self.config.selector,
            "scoring": self.config.scoring,
            "tau": self.config.tau,
            "budget": self.config.budget,
        }

    def save(self, path: Path) -> None:
        """Write to one ``.npz``: arrays, the ids as text + offsets (no Python string per
        candidate), and JSON of config, timings and notes."""
        id_blob, id_ends = as_idlist(self.ids).to_arrays()
        meta = {
            "n_seeds": self.n_seeds,
            "need": self.need,
            "config": dataclasses.asdict(self.config),
            "timings": self.timings,
            "notes": self.notes,
        }
        arrays = {name: getattr(self, name) for name in self._ARRAYS}
        # A file object keeps numpy from renaming the path; atomic: whole file or none.
        with atomic_open(path) as f:
            np.savez(f, meta=np.array(json.dumps(meta)), id_blob=id_blob, id_ends=id_ends, **arrays)

    @classmethod
    def load(cls, path: Path) -> Selection:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {name: z[name] for name in cls._ARRAYS}
            # Files of earlier versions keep the ids in the JSON.
            ids = (
                IdList.from_arrays(z["id_blob"], z["id_ends"])
                if "id_blob" in z.files
                else meta["ids"]
            )
        return cls(
            ids=ids,
            n_seeds=meta["n_seeds"],
            need=meta["need"],
            config=SelectConfig(**read_saved(SelectConfig, meta["config"], str(path))),
            timings=meta["timings"],
            notes=meta["notes"],
            **arrays,
        )
