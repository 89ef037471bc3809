"""The shipped demo data (seed.jsonl, pool.jsonl; see README.md here).

Importable so that ``gdig.data.demo.demo_paths()`` works; the code lives in
``gdig.data.demo_files``.
"""

from gdig.data.demo_files import DEMO_DIR, demo_paths

__all__ = ["DEMO_DIR", "demo_paths"]
