"""On-disk gradient store: candidates' benefits, projected gradients and norms, in shards.

Layout::

    STORE/manifest.json            what is where: each file's sha256, size and mtime_ns
    STORE/seed_features.npy        [S, D] float32 projected preconditioned seed gradients
    STORE/seed_norm.npy            [S]
    STORE/shard-00000/ids.json     the shard's candidate ids (pool order)
    STORE/shard-00000/benefit.npy  [n_i, S] float32, B(m, s) (positive = m helps s)
    STORE/shard-00000/features.npy [n_i, D] projected per-example gradients, float32 or
                                   float16 (``ScoreConfig.feature_dtype``; read as float32)
    STORE/shard-00000/feature_scale.npy  [n_i] float32, float16 stores only: each row's
                                   power-of-two scale (features = stored x scale)
    STORE/shard-00000/cand_norm.npy, n_pos.npy, mean.npy, min.npy, topk_val.npy, topk_idx.npy
    STORE/shard-00000/loss.npy     [n_i] float32, each candidate's mean target-token loss
                                   under the scoring model (``--selector loss``)
    STORE/seed_raw_features.npy    [S, D] the seeds' projected gradients, not preconditioned
                                   (``--selector less``)

``loss.npy`` and ``seed_raw_features.npy`` are absent from stores written before gdig
recorded them; the selectors that need them say so (:class:`GradStore`).

Every file is written under a temporary name and renamed into place; the manifest is
rewritten after each shard, so an interrupted run resumes: shards whose files exist and
pass the check (``verify``: size and mtime, or sha256; :mod:`gdig.io.integrity`) and
whose run key matches are skipped. The manifest also records ``bytes_per_candidate``
(:func:`bytes_per_candidate`, the formula the disk-space check uses before a run).
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

from gdig.data.idlist import IdList
from gdig.engine.config import FEATURE_DTYPES
from gdig.io.atomic import atomic_open, atomic_write_bytes
from gdig.io.errors import UsageError
from gdig.io.integrity import VERIFY_MODES, bad_files, file_record, sha256_json

FORMAT = "gdig-gradstore"
VERSION = 1
MANIFEST = "manifest.json"
STAT_FILES = ("n_pos", "mean", "min", "topk_val", "topk_idx")
SHARD_FILES = ("benefit", "features", "cand_norm") + STAT_FILES
OPTIONAL_SHARD_FILES = ("loss",)  # written when given (stores of older versions lack them)


def bytes_per_candidate(n_seeds: int, dim: int, top_k: int, feature_dtype: str = "float32") -> int:
    """Bytes one candidate adds to a store's shard files (npy headers and ids.json aside):
    benefit ``4 S``, features ``D x itemsize`` (float16: plus a float32 row scale),
    cand_norm/mean/min/loss ``4 x 4``, n_pos ``8`` and top-k (float32 values, int64 seed
    indices) ``12 min(k, S)``. The writer records it in the manifest; the disk-space
    check uses it before any model pass."""
    k = min(top_k, n_seeds)
    features = 4 * dim if feature_dtype == "float32" else 2 * dim + 4
    return 4 * n_seeds + features + 4 * 4 + 8 + 12 * k


def to_float16(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(float16 [n, D], float32 scale [n])`` with ``features ~ stored x scale[:, None]``.

    Each row is divided by a power of two that brings its largest magnitude into
    ``(0.5, 1]`` before rounding, so every row keeps float16's 11 significant bits whatever
    its size: projected gradients of well-fit examples are often below float16's smallest
    normal number (6.1e-5) and would otherwise lose their precision, or vanish. Dividing
    by a power of two is exact, so the only error is the float16 rounding itself.
    """
    features = np.asarray(features, dtype=np.float32)
    amax = np.abs(features).max(axis=1) if features.shape[1] else np.zeros(len(features))
    exponent = np.ceil(np.log2(np.where(amax > 0, amax, 1.0)))
    exponent = np.clip(exponent, -126, 127).astype(np.int32)  # float32's normal range
    scale = np.ldexp(np.float32(1), exponent).astype(np.float32)
    return (features / scale[:, None]).astype(np.float16), scale


class StoreError(UsageError):
    """A gradient store that cannot be read or is incomplete (the message says what to do)."""


def _atomic_npy(path: Path, array: np.ndarray) -> dict[str, Any]:
    """Write ``array`` as .npy atomically; return the file's record (sha256, size, mtime)."""
    with atomic_open(path) as f:
        np.save(f, np.ascontiguousarray(array))
    return file_record(path)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


class StoreWriter:
    """Writes a store shard by shard; resumes the shards of an earlier identical run.

    ``feature_dtype`` is the dtype of the stored features; ``verify`` how a shard of an
    earlier run is checked before it is kept: ``quick`` (size and mtime against the
    manifest; sound for files this writer renamed into place, see
    :mod:`gdig.io.integrity`) or ``full`` (sha256 of every file).
    """

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
        seed_raw_features: np.ndarray | None = None,
        top_k: int = 5,
        feature_dtype: str = "float32",
        verify: str = "quick",
        part: int = 0,
        parts: int = 1,
    ) -> None:
        if feature_dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature_dtype must be one of {FEATURE_DTYPES}: {feature_dtype!r}")
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.feature_dtype = feature_dtype
        self.verify = verify
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # Under torchrun each rank (part) records its shards in its own manifest file; the
        # main manifest is written by part 0, which merges the others' at finish().
        self.part, self.parts = part, parts
        self.manifest_name = MANIFEST if parts == 1 else part_manifest_name(part)
        key = sha256_json(run_key)

        def resumable(old: dict[str, Any]) -> bool:
            return (
                old.get("run_key") == key
                and old.get("n") == n
                and old.get("shard_size") == shard_size
                and old.get("feature_dtype", "float32") == feature_dtype
            )

        kept: dict[str, Any] = {}  # shards of an earlier identical run, whichever rank
        for file in manifest_files(self.root):
            if resumable(old := _read_manifest(self.root, file.name)):
                kept.update(old["shards"])
        self.manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "complete": False,
            "run_key": key,
            "run": run_key,
            "n": n,
            "n_seeds": len(seed_ids),
            "dim": int(seed_features.shape[1]),
            "feature_dtype": feature_dtype,
            "bytes_per_candidate": bytes_per_candidate(
                len(seed_ids), int(seed_features.shape[1]), top_k, feature_dtype
            ),
            "shard_size": shard_size,
            "layers": layers,
            "seed_ids": list(seed_ids),
            "files": {},
            "shards": kept,
        }
        files = self.manifest["files"]
        if part == 0:  # the same bytes on every rank: one writes them
            files["seed_features.npy"] = _atomic_npy(
                self.root / "seed_features.npy", seed_features.astype(np.float32)
            )
            files["seed_norm.npy"] = _atomic_npy(
                self.root / "seed_norm.npy", seed_norm.astype(np.float32)
            )
            if seed_raw_features is not None:
                files["seed_raw_features.npy"] = _atomic_npy(
                    self.root / "seed_raw_features.npy", seed_raw_features.astype(np.float32)
                )
            if parts > 1:
                self._save(MANIFEST)
        self._save()

    def _save(self, name: str | None = None) -> None:
        data = json.dumps(self.manifest, indent=1, sort_keys=True).encode()
        atomic_write_bytes(self.root / (name or self.manifest_name), data)

    def shard_done(self, index: int, ids: Sequence[str]) -> bool:
        """True when shard ``index`` holds exactly ``ids`` and its files pass the check
        (``verify``). A run folder's start checks the store first (``check_outputs``, with
        the run's ``--verify``) and forgets the shards that fail, so those are redone here
        whatever this writer's own mode."""
        entry = self.manifest["shards"].get(shard_name(index))
        if entry is None or entry["ids_sha256"] != sha256_json(list(ids)):
            return False
        if any(f"{k}.npy" not in entry["files"] for k in OPTIONAL_SHARD_FILES):
            return False  # written by an older gdig: scored again to record what it lacks
        return not bad_files(self.root / shard_name(index), entry["files"], self.verify)

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
        keys = list(SHARD_FILES) + [k for k in OPTIONAL_SHARD_FILES if k in arrays]
        if self.feature_dtype == "float16":
            features, scale = to_float16(arrays["features"])
            arrays = {**arrays, "features": features, "feature_scale": scale}
            keys.append("feature_scale")
        else:
            arrays = {**arrays, "features": np.asarray(arrays["features"], dtype=np.float32)}
        files = {f"{k}.npy": _atomic_npy(folder / f"{k}.npy", arrays[k]) for k in keys}
        ids_bytes = json.dumps(list(ids)).encode()
        atomic_write_bytes(folder / "ids.json", ids_bytes)
        files["ids.json"] = file_record(folder / "ids.json", hashlib.sha256(ids_bytes).hexdigest())
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
        """Part 0 only (after every part has written its shards): merge the parts'
        manifests into the main one, mark the store complete, remove the part files."""
        if self.part != 0:
            raise RuntimeError("StoreWriter.finish: only part 0 completes the store")
        part_files = sorted(self.root.glob(part_manifest_name("*")))
        shards = dict(self.manifest["shards"])
        for file in part_files:
            other = _read_manifest(self.root, file.name)
            if other.get("run_key") == self.manifest["run_key"]:
                shards.update(other["shards"])
        names = {shard_name(i) for i in range(n_shards)}
        self.manifest["shards"] = {k: v for k, v in shards.items() if k in names}
        missing = names - set(self.manifest["shards"])
        if missing:
            raise StoreError(f"{self.root}: shards {sorted(missing)[:3]} were not written")
        self.manifest["complete"] = True
        self._save(MANIFEST)
        for file in part_files:
            file.unlink(missing_ok=True)


def forget_shards(root: str | Path, names: Sequence[str]) -> None:
    """Drop shards (``shard-NNNNN``) from a store's manifest and mark the store incomplete
    (also when ``names`` is empty: a damaged top-level file). For a run folder's start,
    after its check (``--verify``) found them damaged: the store cannot be read until a
    scoring pass resumes it, which recomputes exactly those shards, whatever its own check.
    """
    root = Path(root)
    manifest = _read_manifest(root)
    for name in names:
        manifest["shards"].pop(name, None)
    manifest["complete"] = False
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    atomic_write_bytes(root / MANIFEST, data)


def part_manifest_name(part: int | str) -> str:
    """The manifest file of one rank's shards while a torchrun scoring pass runs."""
    return f"manifest.part-{part}.json"


def manifest_files(root: Path) -> list[Path]:
    """The store's manifest and the part manifests of an unfinished torchrun pass, those
    that exist."""
    files = [root / MANIFEST, *sorted(root.glob(part_manifest_name("*")))]
    return [f for f in files if f.is_file()]


def _read_manifest(root: Path, name: str = MANIFEST) -> dict[str, Any]:
    path = root / name
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
        self._ids: IdList | None = None
        self._cand_norm: np.ndarray | None = None
        self._float16 = manifest.get("feature_dtype", "float32") == "float16"

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
    def ids(self) -> IdList:
        """Candidate ids in pool order, held compactly (one shard's list at a time)."""
        if self._ids is None:
            ids = IdList()
            for _, _, name in self._shards:
                ids.extend(json.loads((self.root / name / "ids.json").read_text()))
            self._ids = ids.freeze()
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

    @property
    def seed_raw_features(self) -> np.ndarray:
        """``[S, D]`` the seeds' projected gradients without the Hessian (``less``)."""
        path = self.root / "seed_raw_features.npy"
        if not path.is_file():
            raise StoreError(self._older("the seeds' un-preconditioned gradients"))
        return np.load(path)

    @property
    def loss(self) -> np.ndarray:
        """``[N]`` float32: each candidate's mean target-token loss under the scoring model."""
        missing = [n for _, _, n in self._shards if not (self.root / n / "loss.npy").is_file()]
        if missing:
            raise StoreError(self._older("per-candidate losses"))
        return self._concat("loss")

    def _older(self, what: str) -> str:
        return (
            f"{self.root}: this gradient store holds no {what} (written by an older gdig); "
            "score again with --force-restart to record them"
        )

    def benefit_blocks(self, chunk_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        for start, stop, name in self._shards:
            block = self._array(name, "benefit")
            for off in range(0, stop - start, chunk_rows):
                yield start + off, np.asarray(block[off : off + chunk_rows], dtype=np.float32)

    def feature_rows(self, rows: np.ndarray) -> np.ndarray:
        """float32 ``[len(rows), D]`` features of pool rows (float16 stores are upcast)."""
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
            if self._float16:
                out[sel] *= self._array(name, "feature_scale")[rows[sel] - start][:, None]
        return out

    # --- extras ---
    def feature_shards(self) -> Iterator[np.ndarray]:
        """Each shard's ``[n_i, D]`` features as float32, in pool order: memory-mapped when
        stored as float32, read and upcast (one shard in memory) when stored as float16."""
        for _, _, name in self._shards:
            feats = self._array(name, "features")
            if not self._float16:
                yield feats
                continue
            out = np.asarray(feats, dtype=np.float32)
            out *= self._array(name, "feature_scale")[:, None]
            yield out

    def stat_shards(self, *keys: str) -> Iterator[tuple[int, list[np.ndarray]]]:
        """``(first row, [the shard's memory-mapped array of each key])`` per shard, in pool
        order: per-candidate statistics without reading them all at once."""
        for start, _, name in self._shards:
            yield start, [self._array(name, key) for key in keys]

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

    def top_seeds(self, ids: Sequence[str] | None = None) -> Sequence[list[str]]:
        """For each of ``ids`` (default: every candidate, in store order), the seeds it
        helps most, best first (:class:`~gdig.engine.topseeds.TopSeeds`)."""
        from gdig.engine.topseeds import TopSeeds

        return TopSeeds(self, self.ids if ids is None else ids)

    def _concat(self, key: str) -> np.ndarray:
        parts = [np.asarray(self._array(name, key)) for _, _, name in self._shards]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
