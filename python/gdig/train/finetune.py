"""Supervised fine-tuning of a causal LM on translation pairs, resumable after a kill.

Every example is rendered by :func:`gdig.engine.template.encode_pair` (prompt + target +
EOS) and its loss is :func:`gdig.engine.capture.example_losses`, the engine's own per-example
loss: the mean cross-entropy over the example's target tokens and EOS, the prompt masked.
An optimizer step averages that per-example loss over all the examples it sees (every
example weighs the same, whatever its length), across ``grad_accum`` micro-batches.

Determinism: the data order of epoch ``e`` is a permutation drawn from a torch.Generator
seeded from ``(train_seed, e)``, and dropout draws from the global torch RNG seeded with
``train_seed`` (the caller's RNG state is restored afterwards). The same inputs and config
on the same device and software give bit-identical weights on CPU; on CUDA some kernels
(atomic adds) are not deterministic, so there the runs agree only to rounding.

Resuming: every ``checkpoint_every`` optimizer steps ``out/checkpoint/state.pt`` is written
atomically (model, optimizer, scheduler, RNG states, step, losses so far). A later call with
the same inputs resumes from it and ends with the weights an uninterrupted run gives; a
checkpoint of other inputs or another config is refused unless ``restart=True``.

The result is written as a Hugging Face folder (``save_pretrained`` of model and tokenizer,
plus ``gdig_finetune.json``) into a temporary sibling of ``out`` that then replaces ``out``,
so ``out`` is either the unfinished run (its checkpoint) or the finished model, never half of
one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gdig.data.pairs import Pair
from gdig.engine.batching import collate
from gdig.engine.capture import example_losses
from gdig.engine.template import encode_pair
from gdig.io.atomic import atomic_open, atomic_write_text, remove_stale_temps
from gdig.io.errors import UsageError
from gdig.train.config import NOT_FINGERPRINTED, FinetuneConfig

FORMAT = 1
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.pt"
META_FILE = "gdig_finetune.json"


# --------------------------------------------------------------------------------------
# identity of a run: what a checkpoint must match to be resumed


def pairs_digest(pairs: Sequence[Any]) -> str:
    """sha256 of the pairs' ids, texts and languages, in order (order sets the data order)."""
    h = hashlib.sha256()
    for p in pairs:
        rec = [
            getattr(p, "id", None),
            p.src,
            p.tgt,
            getattr(p, "src_lang", None),
            getattr(p, "tgt_lang", None),
        ]
        h.update(json.dumps(rec, ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def run_fingerprint(
    model_path: str | os.PathLike,
    pairs: Sequence[Any],
    cfg: FinetuneConfig,
    template: str,
    max_length: int,
) -> dict[str, Any]:
    """What decides the fine-tuned weights: base model folder, pairs, rendering, config.

    ``checkpoint_every`` changes no weight and is left out. ``digest`` hashes the rest.
    """
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_FINGERPRINTED}
    parts: dict[str, Any] = {
        "base_model": str(Path(model_path).expanduser().resolve()),
        "template": template,
        "max_length": max_length,
        "config": config,
        "pairs": {"n": len(pairs), "sha256": pairs_digest(pairs)},
    }
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return {"digest": hashlib.sha256(blob).hexdigest(), **parts}


def fingerprint_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable list of what differs between two run fingerprints."""
    diffs = []
    for key in ("base_model", "template", "max_length"):
        if old.get(key) != new.get(key):
            diffs.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    old_cfg, new_cfg = old.get("config", {}), new.get("config", {})
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if old_cfg.get(key) != new_cfg.get(key):
            diffs.append(f"{key} {old_cfg.get(key)!r} -> {new_cfg.get(key)!r}")
    op, np_ = old.get("pairs", {}), new.get("pairs", {})
    if op != np_:
        diffs.append(
            f"training pairs ({op.get('n')} pairs, sha256 {str(op.get('sha256'))[:12]} -> "
            f"{np_.get('n')} pairs, sha256 {str(np_.get('sha256'))[:12]})"
        )
    if not diffs and old.get("digest") != new.get("digest"):
        diffs.append("fingerprint format")
    return diffs


# --------------------------------------------------------------------------------------
# schedule and data order


def total_steps(cfg: FinetuneConfig, n_pairs: int) -> int:
    """Optimizer steps of the run: ``max_steps``, else ``epochs`` worth of micro-batches."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    micro_per_epoch = math.ceil(n_pairs / cfg.train_batch_size)
    return max(1, math.ceil(cfg.epochs * micro_per_epoch / cfg.grad_accum))


def warmup_steps(cfg: FinetuneConfig, total: int) -> int:
    return math.ceil(cfg.warmup_ratio * total)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based).

    Linear warm-up, step ``s < warmup`` uses ``(s + 1) / warmup`` (no step is wasted at
    lr 0), then linear decay that would reach 0 one step after the last.
    """
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _epoch_seed(train_seed: int, epoch: int) -> int:
    digest = hashlib.sha256(f"gdig-finetune-order:{train_seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class DataOrder:
    """Micro-batch ``k`` of the run: a pure function of (seed, k), so a resume needs only k."""

    def __init__(self, n: int, batch_size: int, train_seed: int) -> None:
        self.n, self.batch_size, self.train_seed = n, batch_size, train_seed
        self.per_epoch = math.ceil(n / batch_size)
        self._epoch = -1
        self._perm: list[int] = []

    def rows(self, k: int) -> list[int]:
        epoch, j = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(_epoch_seed(self.train_seed, epoch))
            self._perm = torch.randperm(self.n, generator=g).tolist()
            self._epoch = epoch
        return self._perm[j * self.batch_size : (j + 1) * self.batch_size]


# --------------------------------------------------------------------------------------
# the output folder


def _siblings(out: Path) -> tuple[Path, Path]:
    """(temporary folder the result is written to, where the old ``out`` goes meanwhile)."""
    return out.parent / f".{out.name}.tmp-final", out.parent / f".{out.name}.tmp-old"


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: say which, do not guess
        raise UsageError(
            f"{path}: unreadable fine-tuning checkpoint ({type(e).__name__}: {e}); delete it "
            "or pass restart=True (--restart) to start over"
        ) from e


def _prepare_out(out: Path, fingerprint: dict[str, Any], restart: bool) -> dict[str, Any] | None:
    """Make ``out`` ready; return the checkpoint to resume from, if any.

    Raises ``_AlreadyDone`` when ``out`` already holds the finished model of this very run.
    """
    final_tmp, aside = _siblings(out)
    if aside.exists():
        if not out.exists():  # killed between the two renames of the final swap
            os.rename(aside, out)
        else:
            shutil.rmtree(aside)
    if final_tmp.exists():
        shutil.rmtree(final_tmp)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: is a file; give a folder for the fine-tuned model")
    if not out.exists():
        return None
    ckpt_file = out / CHECKPOINT_DIR / CHECKPOINT_FILE
    meta_file = out / META_FILE
    if ckpt_file.is_file():
        state = _read_checkpoint(ckpt_file) if not restart else None
        if state is None:
            shutil.rmtree(out / CHECKPOINT_DIR)
            return None
        old = state.get("fingerprint", {})
        if old.get("digest") == fingerprint["digest"]:
            remove_stale_temps(out / CHECKPOINT_DIR)  # of a save killed half-way
            return state
        diffs = fingerprint_differences(old, fingerprint)
        raise UsageError(
            f"{out}: holds the checkpoint of another fine-tuning run ({'; '.join(diffs)}); "
            "pass restart=True (--restart) to discard it, or choose another output folder"
        )
    if meta_file.is_file():
        try:
            old = json.loads(meta_file.read_text("utf-8")).get("fingerprint", {})
        except (OSError, ValueError, AttributeError):
            old = {}
        if old.get("digest") == fingerprint["digest"] and not restart:
            raise _AlreadyDone
        if restart:
            return None
        diffs = fingerprint_differences(old, fingerprint)
        raise UsageError(
            f"{out}: holds the model of another fine-tuning run ({'; '.join(diffs)}); pass "
            "restart=True (--restart) to replace it, or choose another output folder"
        )
    if any(p.name != CHECKPOINT_DIR for p in out.iterdir()):
        raise UsageError(
            f"{out}: not empty and not a gdig fine-tuning folder; choose a new or empty folder"
        )
    if (out / CHECKPOINT_DIR).exists():  # no state file in it: nothing to resume
        shutil.rmtree(out / CHECKPOINT_DIR)
    return None


class _AlreadyDone(Exception):
    pass


def _save_checkpoint(out: Path, state: dict[str, Any], step: int) -> None:
    """Write ``out/checkpoint/state.pt`` atomically (``step`` is for hooks and messages)."""
    with atomic_open(out / CHECKPOINT_DIR / CHECKPOINT_FILE) as fh:
        torch.save(state, fh)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------------------


def finetune(
    model_path: str | os.PathLike,
    pairs: Sequence[Pair],
    out: str | os.PathLike,
    cfg: FinetuneConfig,
    *,
    template: str = "paper",
    max_length: int = 512,
    device: str = "cpu",
    progress: bool = True,
    restart: bool = False,
) -> Path:
    """Fine-tune the causal LM in ``model_path`` on ``pairs``; return ``out``.

    ``out`` ends up a Hugging Face folder (loadable by ``AutoModelForCausalLM`` and
    :func:`gdig.model.load_model`) with ``gdig_finetune.json`` (config, fingerprint, loss of
    every optimizer step, wall time). While training it holds ``checkpoint/``; a call with
    the same inputs resumes from it, one with other inputs raises :class:`UsageError`
    naming what differs unless ``restart=True``. When ``out`` already holds the finished
    model of the same inputs, nothing is done.
    """
    from tqdm.auto import tqdm

    from gdig.model.load import load_model

    pairs = list(pairs)
    if not pairs:
        raise UsageError("finetune: no training pairs; give a non-empty file of pairs")
    model_path, out = Path(model_path), Path(out)
    if out.resolve() == model_path.resolve():
        raise UsageError(f"{out}: the output folder is the base model's folder; choose another")
    fingerprint = run_fingerprint(model_path, pairs, cfg, template, max_length)
    try:
        resume = _prepare_out(out, fingerprint, restart)
    except _AlreadyDone:
        return out

    model, tokenizer = load_model(model_path, device=device, dtype="float32", progress=progress)
    dev = next(model.parameters()).device
    try:
        encoded = [encode_pair(p, tokenizer, template, max_length) for p in pairs]
    except ValueError as e:
        raise UsageError(f"finetune: {e}") from None
    pad_id = tokenizer.pad_token_id

    n, bsz, accum = len(pairs), cfg.train_batch_size, cfg.grad_accum
    total = total_steps(cfg, n)
    warmup = warmup_steps(cfg, total)
    order = DataOrder(n, bsz, cfg.train_seed)

    # Weight decay on matrices only (not on biases and norm scales), as is usual.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))
    autocast = (
        torch.autocast(dev.type, dtype=torch.bfloat16) if cfg.bf16 else contextlib.nullcontext()
    )

    # The caller's RNG states (CPU, and the CUDA device trained on) are restored afterwards.
    fork_devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        saved_python_rng = random.getstate()
        try:
            step, losses, wall_before, resumed_at = 0, [], 0.0, []
            if resume is not None:
                model.load_state_dict(resume["model"])
                optimizer.load_state_dict(resume["optimizer"])
                scheduler.load_state_dict(resume["scheduler"])
                _set_rng_state(resume["rng"], dev)
                step = int(resume["step"])
                losses = [float(x) for x in resume["losses"]]
                wall_before = float(resume["wall_s"])
                resumed_at = [int(s) for s in resume["resumed_at"]] + [step]
                del resume
            else:
                torch.manual_seed(cfg.train_seed)
                random.seed(cfg.train_seed)
            model.train()
            t0 = time.perf_counter()
            bar = tqdm(
                total=total,
                initial=step,
                desc="finetune",
                unit="step",
                disable=not progress,
                dynamic_ncols=True,
            )
            with bar:
                while step < total:
                    optimizer.zero_grad(set_to_none=True)
                    micro = [order.rows(step * accum + j) for j in range(accum)]
                    n_step = sum(len(rows) for rows in micro)
                    loss_sum = 0.0
                    for rows in micro:
                        batch = collate(encoded, rows, pad_id, dev)
                        with autocast:
                            # [b] mean CE over each example's target+EOS tokens (capture.py's)
                            per_example = example_losses(model, batch)
                        # every example of the optimizer step weighs 1 / n_step
                        (per_example.sum() / n_step).backward()
                        loss_sum += float(per_example.detach().sum())
                    if cfg.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    lr = scheduler.get_last_lr()[0]  # this step's
                    optimizer.step()
                    scheduler.step()
                    step += 1
                    losses.append(loss_sum / n_step)
                    recent = losses[-10:]
                    bar.set_postfix(
                        loss=f"{sum(recent) / len(recent):.4f}",
                        lr=f"{lr:.2e}",
                        refresh=False,
                    )
                    bar.update(1)
                    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                        state = {
                            "format": FORMAT,
                            "fingerprint": fingerprint,
                            "step": step,
                            "micro_batch": step * accum,  # data-order position
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "rng": _rng_state(dev),
                            "losses": losses,
                            "wall_s": wall_before + time.perf_counter() - t0,
                            "resumed_at": resumed_at,
                        }
                        _save_checkpoint(out, state, step)
                        del state
            wall = wall_before + time.perf_counter() - t0
        finally:
            random.setstate(saved_python_rng)
    model.eval()

    meta = {
        "format": FORMAT,
        "base_model": fingerprint["base_model"],
        "template": template,
        "max_length": max_length,
        "config": dataclasses.asdict(cfg),
        "fingerprint": fingerprint,
        "n_pairs": n,
        "steps": total,
        "warmup_steps": warmup,
        "examples_per_step": bsz * accum,
        "epochs_done": total * accum / order.per_epoch,
        "loss_weighting": "mean over target+EOS tokens per example, examples weighed equally",
        "losses": losses,
        "wall_s": wall,
        "resumed_at_steps": resumed_at,
        "device": str(dev),
        "torch_version": torch.__version__,
    }
    _write_final(out, model, tokenizer, meta, progress)
    return out


def _write_final(
    out: Path, model: Any, tokenizer: Any, meta: dict[str, Any], progress: bool
) -> None:
    """Save into a temporary sibling, then swap it in for ``out`` (and its checkpoint)."""
    final_tmp, aside = _siblings(out)
    if final_tmp.exists():
        shutil.rmtree(final_tmp)
    final_tmp.mkdir(parents=True)
    from gdig.model.load import _quiet_transformers

    with contextlib.nullcontext() if progress else _quiet_transformers():
        model.save_pretrained(final_tmp)
        tokenizer.save_pretrained(final_tmp)
    atomic_write_text(final_tmp / META_FILE, json.dumps(meta, indent=1, ensure_ascii=False))
    if out.exists():
        os.rename(out, aside)
    os.rename(final_tmp, out)
    if aside.exists():
        shutil.rmtree(aside)
