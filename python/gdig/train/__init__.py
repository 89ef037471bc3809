"""Fine-tuning on selected pairs and evaluating the result: the half of the paper's loop
that turns a selection into a translator and measures it."""

from gdig.train.config import EvalConfig, FinetuneConfig
from gdig.train.decode import Hypothesis, translate, translate_loaded
from gdig.train.evaluate import evaluate
from gdig.train.finetune import finetune
from gdig.train.metrics import paired_bootstrap, score_hypotheses

__all__ = [
    "EvalConfig",
    "FinetuneConfig",
    "Hypothesis",
    "evaluate",
    "finetune",
    "paired_bootstrap",
    "score_hypotheses",
    "translate",
    "translate_loaded",
]
