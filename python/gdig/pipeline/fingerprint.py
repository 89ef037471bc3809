"""What each stage's output depends on: input identities and stage fingerprints.

A file input is identified by its content (sha256), a model folder by its config and a
sampled hash of each file, so another path to the same bytes is no change. A stage's
fingerprint hashes its inputs' identities, its whole config dataclass and the fingerprint
of the stage before it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from gdig.data.formats import formats_text, input_files
from gdig.io.errors import UsageError
from gdig.io.integrity import sha256_file, sha256_json, unprinted_fields
from gdig.pipeline.config import SECTIONS, RunOptions
from gdig.select.choosers import needs_rules

STAGES = ("fit", "score", "select", "report")
# What each stage reads (inputs) besides the previous stage's output.
STAGE_INPUTS = {"fit": ("model", "pool"), "score": ("seeds",), "select": (), "report": ()}
STAGE_SECTIONS = {
    "fit": ("read", "factors"),
    "score": ("scoring",),
    "select": ("select",),
    "report": ("report",),
}


def model_identity(path: Path) -> dict[str, Any]:
    """Identity of a model folder: its config, and each file's size and a sampled sha256.

    Two checkpoints of one architecture have equal configs and file sizes, so the weights'
    bytes must enter too; hashing 64 evenly spread 64 KiB blocks of each file (whole files
    up to 4 MiB) sees any fine-tune, which changes nearly every weight, in well under a
    second even for multi-GB checkpoints.
    """
    files = sorted(p for p in path.iterdir() if p.is_file())
    return {
        "config_sha256": sha256_file(path / "config.json"),
        "files": {p.name: {"size": p.stat().st_size, "sha256": sampled_sha256(p)} for p in files},
    }


def sampled_sha256(path: Path, blocks: int = 64, block: int = 1 << 16) -> str:
    size = path.stat().st_size
    if size <= blocks * block:
        return sha256_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for i in range(blocks):
            fh.seek((size - block) * i // (blocks - 1))
            h.update(fh.read(block))
    return h.hexdigest()


def file_identity(path: str | None, what: str) -> dict[str, Any]:
    """``{path, sha256}`` of a pairs file given as ``--what``; for a folder format (a saved
    dataset), the sha256 of its files' names and sha256s."""
    if path is None:
        raise UsageError(f"no {what} file given: pass --{what} FILE ({formats_text()})")
    p = Path(path)
    if not p.exists():
        raise UsageError(f"--{what} {p}: file not found")
    files = input_files(p)
    if not files:
        raise UsageError(f"--{what} {p}: is a folder; give a file of pairs ({formats_text()})")
    if files == [p]:
        return {"path": str(p.resolve()), "sha256": sha256_file(p)}
    digests = {f.name: sha256_file(f) for f in files}
    return {"path": str(p.resolve()), "sha256": sha256_json(digests)}


def _content(identity: dict[str, Any] | None) -> Any:
    """The part of an identity that is content (paths and names are not)."""
    if identity is None:
        return None
    return {k: v for k, v in identity.items() if k not in ("path", "name")}


def sections(stage: str, config: dict[str, Any]) -> tuple[str, ...]:
    """The config sections ``stage`` depends on: fit also depends on the fine-tuning
    options when the model is fine-tuned on the pool first (``--finetune-first``), and on
    the cleaning rules when they prefilter the pool; select on the rules when its selector
    draws from the pairs that pass them (``--selector rules``)."""
    extra: tuple[str, ...] = ()
    rules = config.get("rules", {})
    if stage == "fit":
        if config["inputs"].get("finetune_first"):
            extra += ("finetune",)
        if rules.get("prefilter", "none") != "none":
            extra += ("rules",)
    if stage == "select" and needs_rules(config["select"]["selector"]):
        extra += ("rules",)
    return (*extra, *STAGE_SECTIONS[stage])


def stage_fingerprints(opts: RunOptions, identities: dict[str, Any]) -> dict[str, str]:
    """Fingerprint of each stage's output: its inputs, its configs, the stage before."""
    config = opts.as_manifest()
    prints: dict[str, str] = {}
    before = None
    for stage in STAGES:
        before = sha256_json(
            {
                "before": before,
                "inputs": {k: _content(identities.get(k)) for k in STAGE_INPUTS[stage]},
                "config": {s: _printed(s, config[s]) for s in sections(stage, config)},
            }
        )
        prints[stage] = before
    return prints


def diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key.path: old -> new`` for every leaf that differs."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def stage_diff(stage: str, old_ids: dict, old_config: dict, ids: dict, config: dict) -> list[str]:
    """What changed for ``stage`` itself (its inputs' content and its configs)."""
    return diff(
        {
            "inputs": {k: _content(old_ids.get(k)) for k in STAGE_INPUTS[stage]},
            "config": {s: _printed(s, old_config.get(s, {})) for s in sections(stage, config)},
        },
        {
            "inputs": {k: _content(ids.get(k)) for k in STAGE_INPUTS[stage]},
            "config": {s: _printed(s, config[s]) for s in sections(stage, config)},
        },
    )


def _printed(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """A config section's values less its fields marked NOT_FINGERPRINTED."""
    skip = unprinted_fields(SECTIONS[section])
    return {k: v for k, v in values.items() if k not in skip}
