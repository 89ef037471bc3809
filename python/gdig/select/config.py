"""Options of the selection step (METHOD.md section 5), one field per CLI flag."""

from __future__ import annotations

from dataclasses import dataclass, field

SELECTORS = ("gdig", "quality", "diversity", "random")
SCORINGS = ("raw", "zscore", "cosine")
ON_SHORT = ("stop", "fill")
WITHIN_CLUSTER = ("random", "best")
DEVICES = ("cpu", "cuda")


@dataclass
class SelectConfig:
    budget: int = field(
        default=1000,
        metadata={"help": "Number of candidates to select (n)."},
    )
    selector: str = field(
        default="gdig",
        metadata={
            "help": "gdig: quality filter then diversity resampling (the method); "
            "quality: quality filter then top by mean benefit; "
            "diversity: k-means on all candidates then resampling; "
            "random: uniform random baseline."
        },
    )
    tau: float = field(
        default=1.0,
        metadata={
            "help": "Quality threshold: a candidate passes when it benefits at least "
            "ceil(tau * G) of the G seed groups (1.0 = every seed, the paper's rule)."
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
            "help": "raw: benefit as is (the paper); zscore: each seed's benefits "
            "standardised over the pool (positive = better than the pool average for "
            "that seed); cosine: benefit / (|grad m| * |grad s|) using the store's norms."
        },
    )
    on_short: str = field(
        default="stop",
        metadata={
            "help": "When fewer than budget candidates pass the quality filter: stop "
            "(raise ShortfallError) or fill (top up by mean benefit, flagged as filled)."
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
            "help": "How each cluster gives its share: random (uniform, seeded) or "
            "best (highest mean benefit first)."
        },
    )
    pca_dim: int | None = field(
        default=None,
        metadata={
            "help": "PCA the L2-normalised gradients to this size before k-means; "
            "0 = never; default: 256 when the feature size exceeds 1024, else none."
        },
    )
    kmeans_iters: int = field(
        default=25,
        metadata={"help": "k-means iterations (FAISS niter)."},
    )
    device: str = field(
        default="cpu",
        metadata={"help": "Where k-means runs: cpu, or cuda (needs faiss built with GPU)."},
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Seed of every random choice (k-means init, sampling, random "
            "selector): a fixed seed gives the same selection."
        },
    )

    def __post_init__(self) -> None:
        _one_of("selector", self.selector, SELECTORS)
        _one_of("scoring", self.scoring, SCORINGS)
        _one_of("on_short", self.on_short, ON_SHORT)
        _one_of("within_cluster", self.within_cluster, WITHIN_CLUSTER)
        _one_of("device", self.device, DEVICES)
        if self.budget < 1:
            raise ValueError(f"SelectConfig.budget must be >= 1, got {self.budget}")
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"SelectConfig.tau must be in [0, 1], got {self.tau}")
        if self.seed_group < 1:
            raise ValueError(f"SelectConfig.seed_group must be >= 1, got {self.seed_group}")
        if self.clusters is not None and self.clusters < 1:
            raise ValueError(
                f"SelectConfig.clusters must be >= 1 or None (auto), got {self.clusters}"
            )
        if self.pca_dim is not None and self.pca_dim < 0:
            raise ValueError(
                f"SelectConfig.pca_dim must be >= 0 (0 = off) or None (auto), got {self.pca_dim}"
            )
        if self.kmeans_iters < 1:
            raise ValueError(f"SelectConfig.kmeans_iters must be >= 1, got {self.kmeans_iters}")


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"SelectConfig.{name} must be one of {', '.join(allowed)}; got {value!r}")
