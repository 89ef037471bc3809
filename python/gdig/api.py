"""gdig from Python: the same stages, run folder, fingerprints and resume as the command
(the command is a thin layer over this module).

    import gdig

    run = gdig.run(model="smollm2", seeds="seeds.jsonl", pool="pool.jsonl",
                   out="runs/x", budget=200)
    run.scores().to_pandas()            # one row per scored candidate, as scores.csv
    for record in run.selected(): ...   # the chosen pairs, every input field kept
    run.select(budget=100, selector="quality")   # re-select from the store: no model pass
    gdig.score("smollm2", seeds, pairs) # a few pairs in memory, no run folder

Options are the command's, under their config-file names (``factor_samples=400``,
``random_seed=1``, ``label_field="noise"``). A value not given comes from the run folder
(a run remembers its options), else the default. Errors are the command's:
:class:`~gdig.io.errors.GdigError` and its subclasses, with the same one-line messages.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gdig.io.errors import UsageError
from gdig.pipeline.folder import REPORT_FILE, SCORES_FILE, SELECTED_FILE, SELECTION_FILE

if TYPE_CHECKING:
    import pyarrow as pa

    from gdig.pipeline.config import RunOptions
    from gdig.pipeline.folder import Manifest
    from gdig.select.selection import Selection

__all__ = ["Run", "execute", "open_run", "options_for", "run", "score"]

PathLike = str | os.PathLike[str]


def options_for(
    verb: str,
    values: Mapping[str, Any] | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
    config: PathLike | None = None,
    defaults: Mapping[str, Any] | None = None,
    defaults_name: str | None = None,
) -> RunOptions:
    """The options of ``gdig VERB``: ``flags`` (the command line's, already typed) or
    ``values`` (Python's, type-checked here) > the ``config`` file > ``defaults`` (the
    demo's) > the run folder's saved options > the dataclass defaults. A name the verb
    does not take is refused with the names it does."""
    from gdig.pipeline.config import VERB_SECTIONS, VERB_SKIPS
    from gdig.pipeline.folder import saved_options
    from gdig.pipeline.options import check_values, flag, known_keys, read_config_file, resolve

    keys = known_keys(VERB_SECTIONS[verb]) - VERB_SKIPS[verb]
    given = dict(flags or {})
    if values:
        unknown = sorted(set(values) - keys)
        if unknown:
            raise UsageError(
                f"gdig.{verb}(): unknown option(s) {', '.join(unknown)}; this verb takes: "
                f"{', '.join(sorted(keys))}"
            )
        given.update(check_values(dict(values), f"gdig.{verb}()"))
    file_values: dict[str, Any] = dict(defaults or {})
    file_name = defaults_name
    if config is not None:
        file_values.update(read_config_file(config))
        file_name = str(config)
    out = given.get("out", file_values.get("out"))
    named = (lambda name: f"gdig.{verb}(): {name}") if values and not flags else flag
    return resolve(given, file_values, file_name, saved_options(out), flag_name=named)


def execute(verb: str, opts: RunOptions, stages: tuple[str, ...] | None = None) -> Run:
    """Run a verb's stages (or ``stages``) with ``opts`` in ``opts.run.out``; the one
    implementation behind the command and the functions here."""
    from gdig.pipeline.config import VERB_STAGES
    from gdig.pipeline.stages import run_stages

    outcome = run_stages(opts, stages or VERB_STAGES[verb])
    return Run(outcome.folder.path, outcome=outcome)


def run(
    model: PathLike | None = None,
    seeds: PathLike | None = None,
    pool: PathLike | None = None,
    out: PathLike | None = None,
    budget: int | float | None = None,
    *,
    config: PathLike | None = None,
    **options: Any,
) -> Run:
    """Every stage (fit, score, select, report) in run folder ``out``, resuming what an
    earlier run left there, as ``gdig run`` does. ``model`` is a local Hugging Face
    folder, a hub id in the local cache, or ``"smollm2"``; ``seeds`` and ``pool`` are
    pairs files (JSONL, TSV, Parquet or a saved Hugging Face dataset)."""
    named = {"model": model, "seeds": seeds, "pool": pool, "out": out, "budget": budget}
    values = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in named.items()}
    values = {k: v for k, v in values.items() if v is not None}
    return execute("run", options_for("run", {**values, **options}, config=config))


def open_run(out: PathLike) -> Run:
    """The run in folder ``out`` (made by ``gdig run`` or :func:`run`)."""
    from gdig.pipeline.folder import Manifest

    path = Path(out)
    if not path.is_dir() or Manifest.read(path) is None:
        raise UsageError(f"{path}: no gdig run there; run gdig.run(...) or `gdig run` first")
    return Run(path)


class Run:
    """A run folder seen from Python. Reading needs no model; :meth:`select` re-selects
    from the gradient store as ``gdig select`` does."""

    def __init__(self, out: PathLike, *, outcome: Any = None) -> None:
        self.out = Path(out)
        # what the command that returned this Run did (a RunOutcome; None for open_run)
        self.outcome = outcome

    def __repr__(self) -> str:
        return f"gdig.Run({str(self.out)!r})"

    @property
    def reused(self) -> list[str]:
        """The stages the command that returned this Run found done (resumed)."""
        return list(self.outcome.reused) if self.outcome is not None else []

    @property
    def manifest(self) -> Manifest:
        """The folder's manifest (options, input identities, stage records), read now."""
        from gdig.pipeline.folder import Manifest

        got = Manifest.read(self.out)
        if got is None:
            raise UsageError(f"{self.out}: the run folder has no manifest")
        return got

    @property
    def options(self) -> RunOptions:
        """The options the run was last made with."""
        from gdig.pipeline.folder import saved_options
        from gdig.pipeline.options import resolve

        return resolve({}, {}, None, saved_options(self.out))

    @property
    def warnings(self) -> list[str]:
        return list(self.manifest.warnings)

    def _file(self, file: str, name: str | None) -> Path:
        """A selection's output: the run's own, or named selection ``name``'s."""
        from gdig.pipeline.folder import SELECTIONS_DIR

        return (self.out / SELECTIONS_DIR / name if name else self.out) / file

    def select(
        self,
        budget: int | float | None = None,
        selector: str | None = None,
        *,
        report: bool = True,
        name: str | None = None,
        config: PathLike | None = None,
        **options: Any,
    ) -> Selection:
        """Select again from the scores (no model pass), as ``gdig select --out RUN``:
        options not given keep the run's; the same fingerprints decide whether select
        and report are redone. ``name`` makes a named selection beside the run's own
        (``selections/NAME/``); ``report=False`` skips the report."""
        values = {"out": str(self.out), **options}
        for key, value in (("budget", budget), ("selector", selector), ("name", name)):
            if value is not None:
                values[key] = value
        opts = options_for("select", values, config=config)
        execute("select", opts, ("select", "report") if report else ("select",))
        return self.selection(name)

    def selection(self, name: str | None = None) -> Selection:
        """The whole selection (per-candidate statistics, flags, clusters, config)."""
        from gdig.select.selection import Selection

        path = self._file(SELECTION_FILE, name)
        if not path.is_file():
            raise UsageError(f"{path} is missing: run the select stage first")
        return Selection.load(path)

    def scores(self, name: str | None = None) -> pa.Table:
        """``scores.csv`` as a pyarrow Table (the same columns; ids and top seeds as
        text, ``top_seeds`` ``;``-joined); ``.to_pandas()`` gives a DataFrame."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        path = self._file(SCORES_FILE, name)
        if not path.is_file():
            raise UsageError(f"{path} is missing: run the select stage first")
        text = {"id": pa.string(), "top_seeds": pa.string(), "scoring": pa.string()}
        return pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                column_types=text, strings_can_be_null=False, quoted_strings_can_be_null=False
            ),
        )

    def selected(self, name: str | None = None) -> Iterator[dict[str, Any]]:
        """The chosen pairs as records (every input field plus benefit_mean, n_pos,
        cluster, rank, top_seeds), in ``selected.jsonl``'s order, read as they go."""
        path = self._file(SELECTED_FILE, name)
        if not path.is_file():
            raise UsageError(f"{path} is missing: run the select stage first")
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)

    def report_path(self, name: str | None = None) -> Path:
        return self._file(REPORT_FILE, name)

    def export_selected(self, path: PathLike, name: str | None = None) -> int:
        """Write the chosen pairs in the format ``path`` names (``.jsonl``, ``.parquet``,
        or any other path: a Hugging Face dataset folder that ``datasets.load_from_disk``
        opens); returns how many."""
        from gdig.data.formats import FORMATS, format_from_name

        target = Path(path)
        fmt = format_from_name(target) or FORMATS["hf"]
        if fmt.write is None:
            raise UsageError(f"{target}: gdig cannot write {fmt.label}; use .jsonl or .parquet")
        return fmt.write(target, self.selected(name))


def score(
    model: Any,
    seeds: Iterable[Any],
    pairs: Iterable[Any],
    *,
    device: str = "cpu",
    dtype: str = "float32",
    progress: bool = False,
    **engine_options: Any,
) -> pa.Table:
    """Score a few ``pairs`` in memory against ``seeds``, without a run folder: the
    factors are fitted on ``pairs`` (as a run fits them on its pool), the seeds prepared,
    every pair scored. For small jobs; a pool of thousands belongs in :func:`run`.

    ``model`` is a model spec (a folder, a cached hub id, ``"smollm2"``) or a loaded
    ``(model, tokenizer)``; ``seeds`` and ``pairs`` are :class:`~gdig.data.pair.Pair`
    objects (anything with id, src, tgt, src_lang, tgt_lang) or dicts with those keys
    (``id`` defaults to the position). ``engine_options`` are the engine's flat options
    (``factor_samples``, ``k_in``, ``rank``, ``batch_size``, ...). Returns one row per
    pair: id, n_pos, n_seeds, benefit_mean, benefit_min, top_seeds (the seeds it helps
    most), finite (False where its loss or gradient was NaN/Inf: its numbers are 0).
    """
    import pyarrow as pa

    from gdig.data.examples import ExampleList
    from gdig.engine import fit_factors, prepare_seeds, score_candidates
    from gdig.engine.config import EngineConfig
    from gdig.io.validate import parse_device

    cfg = EngineConfig.from_flat(**engine_options)
    pool, seed_set = ExampleList(_examples(pairs)), ExampleList(_examples(seeds))
    if not len(pool) or not len(seed_set):
        raise UsageError("gdig.score(): give at least one pair and one seed")
    net, tok = _model(model, parse_device(device), dtype, progress)
    factors = fit_factors(net, tok, pool, cfg, progress=progress)
    grads = prepare_seeds(net, tok, seed_set, factors, cfg, progress=progress)
    with tempfile.TemporaryDirectory(prefix="gdig-score-") as tmp:
        store = score_candidates(net, tok, pool, grads, cfg, Path(tmp) / "store", progress=progress)
        stats, top = store.stats(), store.top_seeds()
        bad = set(store.nonfinite_ids)
        return pa.table(
            {
                "id": list(store.ids),
                "n_pos": stats["n_pos"],
                "n_seeds": [store.n_seeds] * store.n,
                "benefit_mean": stats["mean"].astype("float64"),
                "benefit_min": stats["min"],
                "top_seeds": [top[i] for i in range(store.n)],
                "finite": [cid not in bad for cid in store.ids],
            }
        )


def _examples(items: Iterable[Any]) -> list[Any]:
    """Pairs as the engine reads them: Example objects as they are, dicts made Pairs."""
    from gdig.data.examples import Example
    from gdig.data.pair import Pair

    out = []
    for i, item in enumerate(items):
        if isinstance(item, Example):
            out.append(item)
        elif isinstance(item, Mapping) and "src" in item and "tgt" in item:
            known = ("id", "src", "tgt", "src_lang", "tgt_lang")
            out.append(
                Pair(
                    str(item.get("id", i)),
                    item["src"],
                    item["tgt"],
                    item.get("src_lang"),
                    item.get("tgt_lang"),
                    extra={k: v for k, v in item.items() if k not in known},
                )
            )
        else:
            raise UsageError(
                f"gdig.score(): item {i} is neither a pair (id, src, tgt, src_lang, tgt_lang) "
                f"nor a dict with 'src' and 'tgt': {item!r:.80}"
            )
    return out


def _model(model: Any, device: str, dtype: str, progress: bool) -> tuple[Any, Any]:
    """A loaded ``(model, tokenizer)`` as given, or one loaded from a model spec."""
    if isinstance(model, tuple) and len(model) == 2:
        return model
    from gdig.model import check_device_available, load_model
    from gdig.model.load import resolve_model

    check_device_available(device)
    return load_model(resolve_model(str(model), progress), device=device, dtype=dtype,
                      progress=progress)  # fmt: skip
