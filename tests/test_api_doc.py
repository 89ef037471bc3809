"""docs/API.md's notebook session runs as written: every cell but the first (the demo's
data and SmolLM2), which is replaced by a tiny random model and a toy pool."""

from __future__ import annotations

import re
from pathlib import Path

from helpers_models import toy_run_files

DOC = Path(__file__).resolve().parents[1] / "docs" / "API.md"


def cells() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_the_doc_has_a_setup_cell_then_the_session():
    found = cells()
    assert found[0].startswith("# setup:") and len(found) >= 8
    # the data and model are chosen in the setup cell alone, which the next test replaces
    assert not any(re.search(r"^(seeds|pool|model) *=", c, flags=re.M) for c in found[1:])


def test_the_notebook_session_runs(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    seeds, pool = toy_run_files(tmp_path, n_seeds=8, n_pool=52, seed=5, noise_every=3)
    setup = (
        "import gdig\n"
        f"seeds, pool = {str(seeds)!r}, {str(pool)!r}\n"
        f"model = {str(tiny_llama_dir)!r}\n"
        "out = 'runs/api-demo'\n"
        "budget = 12\n"
        "sizes = {'factor_samples': 40, 'k_in': 4, 'k_out': 4, 'rank': 4}\n"
    )
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for cell in [setup, *cells()[1:]]:
        exec(compile(cell, str(DOC), "exec"), namespace)  # the doc's own code
    printed = capsys.readouterr().out
    assert "refused: gdig.select(): selector: use one of gdig, " in printed
    # what the session made is what the command makes
    run = namespace["run"]
    assert (tmp_path / "runs/api-demo/scores.csv").is_file() and run.reused == []
    assert namespace["n"] == 6 and (tmp_path / "runs/api-demo-random-half/state.json").is_file()
    table = namespace["table"]
    assert table.column("id").to_pylist() == ["good", "copy", "wrong"]
