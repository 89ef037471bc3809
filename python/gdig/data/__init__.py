"""Input data: translation pairs (read/write) and the shipped demo data set."""

from gdig.data.demo_files import demo_paths
from gdig.data.pairs import Pair, PairsError, iter_pairs, read_pairs, write_jsonl

__all__ = ["Pair", "PairsError", "demo_paths", "iter_pairs", "read_pairs", "write_jsonl"]
