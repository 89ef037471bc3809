"""A Hugging Face dataset saved with ``Dataset.save_to_disk``: a folder whose
``state.json`` lists Arrow stream files. gdig reads and writes it with pyarrow alone
(memory-mapped, so a large dataset is not loaded); the ``datasets`` package is not
needed, and ``datasets.load_from_disk`` opens what :func:`write_dataset` writes. Rows are
numbered from 1 and stand in for line numbers in every message.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from gdig.data.parquet import records_table, table_records
from gdig.io.errors import UsageError
from gdig.io.integrity import sha256_file

STATE = "state.json"
INFO = "dataset_info.json"
DICT = "dataset_dict.json"  # a DatasetDict: one folder per split
_CHUNK = 4096


def is_dataset_folder(path: Path) -> bool:
    """True for a folder ``save_to_disk`` wrote (a Dataset or a DatasetDict)."""
    return path.is_dir() and ((path / STATE).is_file() or (path / DICT).is_file())


def _files(path: Path) -> list[Path]:
    if (path / DICT).is_file():
        splits = sorted(p.name for p in path.iterdir() if (p / STATE).is_file())
        raise UsageError(
            f"{path}: a DatasetDict (splits: {', '.join(splits) or 'none'}); give the folder "
            f"of one split, e.g. {path / (splits[0] if splits else 'train')}"
        )
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
        files = [path / f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path / STATE}: not a saved Hugging Face dataset ({exc})") from None
    if state.get("_indices_data_files"):
        raise UsageError(
            f"{path}: the dataset keeps an indices mapping; save it again with "
            "dataset.flatten_indices().save_to_disk(...)"
        )
    return files


def _table(path: Path):
    """The dataset's rows as one Arrow table over memory-mapped files."""
    import pyarrow as pa

    parts = [pa.ipc.open_stream(pa.memory_map(str(f))).read_all() for f in _files(path)]
    return pa.concat_tables(parts) if parts else pa.table({})


def iter_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number from 1, record)`` of every row, a chunk of rows decoded at a time."""
    row = 0
    for batch in _table(Path(path)).to_batches(max_chunksize=_CHUNK):
        for rec in table_records(batch):
            row += 1
            yield row, rec


class RowReader:
    """Random access to the rows (numbered from 1) of a saved dataset."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._rows = _table(self.path)

    def read(self, rows: Iterable[int]) -> Iterator[dict[str, Any]]:
        """The records of the given row numbers, in this order."""
        import pyarrow as pa

        rows = list(rows)
        for start in range(0, len(rows), _CHUNK):
            index = [r - 1 for r in rows[start : start + _CHUNK]]
            if index and (min(index) < 0 or max(index) >= self._rows.num_rows):
                raise IndexError(f"{self.path}: a row is past the end")
            yield from table_records(self._rows.take(pa.array(index, type=pa.int64())))

    def close(self) -> None:
        self._rows = None


def write_dataset(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records as a dataset folder that ``datasets.load_from_disk`` opens; return
    how many. The folder appears whole (written beside it, then renamed) and replaces
    an earlier dataset folder there."""
    import pyarrow as pa

    path = Path(path)
    if path.exists() and not is_dataset_folder(path):
        raise UsageError(f"{path}: exists and is not a saved dataset; give a new folder")
    table = records_table(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        name = "data-00000-of-00001.arrow"
        with pa.OSFile(str(tmp / name), "wb") as fh, pa.ipc.new_stream(fh, table.schema) as out:
            out.write_table(table)
        state = {
            "_data_files": [{"filename": name}],
            "_fingerprint": sha256_file(tmp / name)[:16],  # the same rows, the same name
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        (tmp / STATE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        # No "features": datasets takes them from the Arrow schema.
        (tmp / INFO).write_text("{}\n", encoding="utf-8")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return table.num_rows
