"""On-disk gradient store: candidates' benefits, projected gradients and norms, in shards.

Layout::

    STORE/manifest.json            what is where, with sha256 of every file
    STORE/seed_features.npy        [S, D] projected preconditioned seed gradients
    STORE/seed_norm.npy            [S]
    STORE/shard-00000/ids.json     the shard's candidate ids (pool order)
    STORE/shard-00000/benefit.npy  [n_i, S] float32, B(m, s) (positive = m helps s)
    STORE/shard-00000/features.npy [n_i, D] float32 projected per-example gradients
    STORE/shard-00000/cand_norm.npy, n_pos.npy, mean.npy, min.npy, topk_val.npy, topk_idx.npy

Every file is written under a temporary name and renamed into place; the manifest is
rewritten after each shard, so an interrupted run resumes: shards whose files exist and
match their checksums (and whose run key matches) are skipped.
:class:`GradStore` implements ``gdig.select.source.ScoreSource``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gdig.io.atomic import atomic_open, atomic_write_bytes
from gdig.io.errors import UsageError
from gdig.io.integrity import bad_files, sha256_file, sha256_json

FORMAT = "gdig-gradstore"
VERSION = 1
MANIFEST = "manifest.json"
STAT_FILES = ("n_pos", "mean", "min", "topk_val", "topk_idx")
SHARD_FILES = ("benefit", "features", "cand_norm") + STAT_FILES


class StoreError(UsageError):
    """A gradient store that cannot be read or is incomplete (the message says what to do)."""


def _atomic_npy(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as .npy atomically; return the file's sha256."""
    with atomic_open(path) as f:
        np.save(f, np.ascontiguousarray(array))
    return sha256_file(path)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


class StoreWriter:
    """Writes a store shard by shard; resumes the shards of an earlier identical run."""

    def __init__(
        self,
        root: str | Path,
        *,
        run_key: dict[str, Any],
        n: int,
        shard_size: int,
        seed_ids: Sequence[str],
        seed_features: np.ndarray,
        seed_norm: np.ndarray,
        layers: list[dict[str, Any]],
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        key = sha256_json(run_key)
        old = _read_manifest(self.root) if (self.root / MANIFEST).is_file() else None
        resumable = (
            old is not None
            and old.get("run_key") == key
            and old.get("n") == n
            and old.get("shard_size") == shard_size
        )
        self.manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "complete": False,
            "run_key": key,
            "run": run_key,
            "n": n,
            "n_seeds": len(seed_ids),
            "dim": int(seed_features.shape[1]),
            "shard_size": shard_size,
            "layers": layers,
            "seed_ids": list(seed_ids),
            "files": {},
            "shards": dict(old["shards"]) if resumable else {},
        }
        files = self.manifest["files"]
        files["seed_features.npy"] = _atomic_npy(
            self.root / "seed_features.npy", seed_features.astype(np.float32)
        )
        files["seed_norm.npy"] = _atomic_npy(
            self.root / "seed_norm.npy", seed_norm.astype(np.float32)
        )
        self._save()

    def _save(self) -> None:
        data = json.dumps(self.manifest, indent=1, sort_keys=True).encode()
        atomic_write_bytes(self.root / MANIFEST, data)

    def shard_done(self, index: int, ids: Sequence[str]) -> bool:
        """True when shard ``index`` holds exactly ``ids`` and its files match their checksums."""
        entry = self.manifest["shards"].get(shard_name(index))
        if entry is None or entry["ids_sha256"] != sha256_json(list(ids)):
            return False
        return not bad_files(self.root / shard_name(index), entry["files"])

    def write_shard(
        self,
        index: int,
        start: int,
        ids: Sequence[str],
        arrays: dict[str, np.ndarray],
        nonfinite: Sequence[str] = (),
    ) -> None:
        """Write one shard's arrays (keys: :data:`SHARD_FILES`) and record it in the manifest;
        ``nonfinite`` lists the shard's candidates whose loss or gradient was NaN/Inf (their
        rows hold zeros and must not be selected)."""
        missing = [k for k in SHARD_FILES if k not in arrays]
        if missing:
            raise ValueError(f"shard {index}: arrays {missing} missing")
        folder = self.root / shard_name(index)
        folder.mkdir(exist_ok=True)
        files = {f"{k}.npy": _atomic_npy(folder / f"{k}.npy", arrays[k]) for k in SHARD_FILES}
        ids_bytes = json.dumps(list(ids)).encode()
        atomic_write_bytes(folder / "ids.json", ids_bytes)
        files["ids.json"] = hashlib.sha256(ids_bytes).hexdigest()
        self.manifest["shards"][shard_name(index)] = {
            "start": start,
            "stop": start + len(ids),
            "ids_sha256": sha256_json(list(ids)),
            "files": files,
        }
        if nonfinite:
            self.manifest["shards"][shard_name(index)]["nonfinite"] = list(nonfinite)
        self._save()

    def finish(self, n_shards: int) -> None:
        names = {shard_name(i) for i in range(n_shards)}
        self.manifest["shards"] = {k: v for k, v in self.manifest["shards"].items() if k in names}
        self.manifest["complete"] = True
        self._save()


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: cannot read the gradient-store manifest ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise StoreError(f"{path}: not a gdig gradient store (format={manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise StoreError(
            f"{path}: store version {manifest.get('version')} but this gdig reads {VERSION}; "
            "re-run score_candidates"
        )
    return manifest


class GradStore:
    """Read side of the store; a ``ScoreSource`` (rows in pool order, benefit = positive helps)."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self.n: int = manifest["n"]
        self.n_seeds: int = manifest["n_seeds"]
        self.dim: int = manifest["dim"]
        self.seed_ids: list[str] = manifest["seed_ids"]
        self._shards = sorted(
            ((v["start"], v["stop"], k) for k, v in manifest["shards"].items()), key=lambda t: t[0]
        )
        self._starts = np.array([s for s, _, _ in self._shards], dtype=np.int64)
        self._ids: list[str] | None = None
        self._cand_norm: np.ndarray | None = None

    @classmethod
    def open(cls, root: str | Path) -> GradStore:
        """Open a complete store; raises ValueError naming what is missing otherwise."""
        root = Path(root)
        manifest = _read_manifest(root)
        if not manifest.get("complete"):
            raise StoreError(
                f"{root}: the gradient store is incomplete (interrupted run?); run `gdig score` "
                "(or score_candidates) with the same arguments to resume it"
            )
        covered = sum(v["stop"] - v["start"] for v in manifest["shards"].values())
        if covered != manifest["n"]:
            raise StoreError(f"{root}: shards cover {covered} rows, manifest says {manifest['n']}")
        return cls(root, manifest)

    # --- ScoreSource protocol ---
    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            ids: list[str] = []
            for _, _, name in self._shards:
                ids += json.loads((self.root / name / "ids.json").read_text())
            self._ids = ids
        return self._ids

    @property
    def nonfinite_ids(self) -> list[str]:
        """Candidates whose loss or gradient was NaN/Inf: their rows hold zeros, not scores
        (selection leaves them out)."""
        shards = self.manifest.get("shards", {})
        return [i for name in sorted(shards) for i in shards[name].get("nonfinite", [])]

    @property
    def cand_norm(self) -> np.ndarray:
        if self._cand_norm is None:
            self._cand_norm = self._concat("cand_norm")
        return self._cand_norm

    @property
    def seed_norm(self) -> np.ndarray:
        return np.load(self.root / "seed_norm.npy")

    @property
    def seed_features(self) -> np.ndarray:
        return np.load(self.root / "seed_features.npy")

    def benefit_blocks(self, chunk_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        for start, stop, name in self._shards:
            block = self._array(name, "benefit")
            for off in range(0, stop - start, chunk_rows):
                yield start + off, np.asarray(block[off : off + chunk_rows], dtype=np.float32)

    def feature_rows(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n):
            raise IndexError(
                f"feature_rows: rows must lie in [0, {self.n}); got {rows.min()}..{rows.max()}"
            )
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1
        for s in np.unique(shard_of):
            start, _, name = self._shards[s]
            sel = np.nonzero(shard_of == s)[0]
            out[sel] = self._array(name, "features")[rows[sel] - start]
        return out

    # --- extras ---
    def feature_shards(self) -> Iterator[np.ndarray]:
        """Each shard's memory-mapped ``[n_i, D]`` features, in pool order."""
        for _, _, name in self._shards:
            yield self._array(name, "features")

    def stats(self) -> dict[str, np.ndarray]:
        """Per-candidate n_pos, mean, min, topk_val, topk_idx (seed indices) in pool order."""
        return {k: self._concat(k) for k in STAT_FILES}

    def export_benefit_matrix(self, path: str | Path | None = None) -> Path:
        """Write the full ``[N, S]`` float32 benefit matrix (rows pool order, columns seed order)
        as one .npy, streaming shard by shard."""
        path = Path(path) if path is not None else self.root / "benefit_matrix.npy"
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float32, shape=(self.n, self.n_seeds)
        )
        for start, block in self.benefit_blocks():
            out[start : start + len(block)] = block
        out.flush()
        del out
        os.replace(tmp, path)
        return path

    def _array(self, shard: str, key: str) -> np.ndarray:
        return np.load(self.root / shard / f"{key}.npy", mmap_mode="r")

    def _concat(self, key: str) -> np.ndarray:
        parts = [np.asarray(self._array(name, key)) for _, _, name in self._shards]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
