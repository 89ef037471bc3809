"""Options of the selection step (METHOD.md section 5), one field per CLI flag."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gdig.io.validate import (
    OptionError,
    at_least,
    check_count_or_fraction,
    count_or_fraction,
    one_of,
)

from .choosers import SELECTORS, selector_help
from .scorings import SCORINGS, scoring_help

LESS_REDUCE = ("mean", "max")
ON_SHORT = ("stop", "fill")
WITHIN_CLUSTER = ("random", "best")


@dataclass
class SelectConfig:
    """Selection: quality filter, diversity, budget (METHOD.md §5)."""

    budget: int | float = field(
        default=1000,
        metadata={
            "metavar": "N|FRACTION|PCT%",
            "parse": count_or_fraction,
            "help": "How many candidates to select: a number of pairs (40), or a fraction "
            "(0.15) or percentage (15%) of the scored pool (after any --prefilter).",
        },
    )
    selector: str = field(
        default="gdig",
        metadata={
            "choices": SELECTORS,  # the table itself: a registered selector is a choice
            "help": selector_help(),
        },
    )
    tau: float = field(
        default=0.9,
        metadata={
            "help": "Quality threshold: a candidate passes when it benefits at least "
            "ceil(tau * G) of the G seed groups (1.0 = every seed, the paper's rule, lets "
            "too few pass on a base model; 0.9 won on dev in benchmarks/quality)."
        },
    )
    seed_group: int = field(
        default=1,
        metadata={
            "help": "Average this many consecutive seeds into one group before counting "
            "(G = ceil(S / seed_group) groups; the last group may be smaller)."
        },
    )
    scoring: str = field(
        default="raw",
        metadata={
            "choices": SCORINGS,  # the table itself: a registered scoring is a choice
            "help": scoring_help(),
        },
    )
    on_short: str = field(
        default="fill",
        metadata={
            "choices": ON_SHORT,
            "help": "When fewer than budget candidates pass the quality filter: fill (top up "
            "by mean benefit, flagged as filled, and say how many) or stop (an error; "
            "scores.csv is still written).",
        },
    )
    clusters: int | None = field(
        default=None,
        metadata={
            "help": "Number of k-means clusters K; default round(sqrt(budget)) clamped "
            "to [2, budget] and to the number of points clustered."
        },
    )
    within_cluster: str = field(
        default="random",
        metadata={
            "choices": WITHIN_CLUSTER,
            "help": "How each cluster gives its share: random (uniform, seeded) or "
            "best (highest mean benefit first).",
        },
    )
    pca_dim: int | None = field(
        default=None,
        metadata={
            "help": "PCA the L2-normalised gradients to this size before k-means; "
            "0 = never; default: 256 when the feature size exceeds 1024, else none."
        },
    )
    less_reduce: str = field(
        default="mean",
        metadata={
            "choices": LESS_REDUCE,
            "help": "--selector less: mean (LESS's average over the target examples) or max "
            "of a candidate's cosines to the seeds.",
        },
    )
    kmeans_iters: int = field(
        default=25,
        metadata={"help": "k-means iterations (FAISS niter)."},
    )
    random_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of every random choice (k-means init, sampling, random "
            "selector): a fixed seed gives the same selection.",
            "was": "seed",  # its name before 0.2: manifests and selection files still read
        },
    )

    def __post_init__(self) -> None:
        one_of("selector", self.selector, tuple(SELECTORS))
        one_of("scoring", self.scoring, tuple(SCORINGS))
        one_of("less_reduce", self.less_reduce, LESS_REDUCE)
        one_of("on_short", self.on_short, ON_SHORT)
        one_of("within_cluster", self.within_cluster, WITHIN_CLUSTER)
        check_count_or_fraction("budget", self.budget)
        at_least(self, 1, "seed_group", "clusters", "kmeans_iters")
        at_least(self, 0, "pca_dim")
        if not 0.0 <= self.tau <= 1.0:
            raise OptionError("tau", f"must be in [0, 1]; got {self.tau}")

    def budget_of(self, n: int) -> int:
        """The budget as a number of pairs of a pool of ``n``: a fraction is rounded half
        up (25% of 42 is 11), and at least 1."""
        if isinstance(self.budget, float):
            return max(1, math.floor(self.budget * n + 0.5))
        return self.budget
