"""Where the shipped demo data lives (package data under gdig/data/demo/)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_DIR", "demo_paths"]

DEMO_DIR = Path(__file__).resolve().parent / "demo"


def demo_paths() -> tuple[Path, Path]:
    """(seed_path, pool_path) of the bundled zh→en demo set; see demo/README.md."""
    seed, pool = DEMO_DIR / "seed.jsonl", DEMO_DIR / "pool.jsonl"
    for p in (seed, pool):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p}: demo data missing from the installed package; rebuild it with "
                "`python -m gdig.data.build_demo --source <tatoeba.zh-en.jsonl> "
                f"--out {DEMO_DIR}` or reinstall gdig"
            )
    return seed, pool
