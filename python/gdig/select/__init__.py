"""Selection (METHOD.md section 5): quality filter by seed benefits, diversity by k-means.

Benefit convention: ``B(m, s) = grad L(s)^T H^-1 grad L(m)``; positive means
candidate ``m`` helps seed ``s``.
"""

from .config import SelectConfig
from .metrics import noise_auc, noise_detection, precision_recall
from .quality import QualityStats, quality_stats
from .selection import Selection, ShortfallError
from .selectors import select
from .source import ArraySource, ScoreSource

__all__ = [
    "ArraySource",
    "QualityStats",
    "ScoreSource",
    "SelectConfig",
    "Selection",
    "ShortfallError",
    "noise_auc",
    "noise_detection",
    "precision_recall",
    "quality_stats",
    "select",
]
