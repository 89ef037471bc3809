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
import json
import os
import random
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from gdig.data.pairs import Pair
from gdig.engine.batching import collate, plan_batches
from gdig.engine.capture import example_losses
from gdig.engine.template import Encoded, encode_pair
from gdig.io.atomic import atomic_write_text
from gdig.io.errors import UsageError
from gdig.train.checkpoint import (
    FORMAT,
    META_FILE,
    AlreadyDone,
    prepare_out,
    rng_state,
    run_fingerprint,
    save_checkpoint,
    set_rng_state,
    siblings,
)
from gdig.train.config import FinetuneConfig
from gdig.train.precision import Precision
from gdig.train.precision import choose as choose_precision
from gdig.train.schedule import DataOrder, lr_factor, total_steps, warmup_steps


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
    dev_pairs: Sequence[Pair] | None = None,
    echo: Callable[[str], None] | None = None,
) -> Path:
    """Fine-tune the causal LM in ``model_path`` on ``pairs``; return ``out``.

    ``out`` ends up a Hugging Face folder (loadable by ``AutoModelForCausalLM`` and
    :func:`gdig.model.load_model`) with ``gdig_finetune.json`` (config, fingerprint, the
    precision used and why, loss of every optimizer step, dev losses, wall time). While
    training it holds ``checkpoint/``; a call with the same inputs resumes from it, one with
    other inputs raises :class:`UsageError` naming what differs unless ``restart=True``.
    When ``out`` already holds the finished model of the same inputs, nothing is done.

    ``echo`` receives the lines to print: the precision, then every ``cfg.log_every``
    steps the mean training loss since the last line, and the dev loss (mean per-example
    loss on ``dev_pairs``, at step 0, then every ``cfg.dev_every`` steps or at each epoch's
    end, and at the end). The dev passes change no weight.
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
        resume = prepare_out(out, fingerprint, restart)
    except AlreadyDone:
        return out
    say = echo or (lambda line: None)

    model, tokenizer = load_model(model_path, device=device, dtype="float32", progress=progress)
    dev = next(model.parameters()).device
    try:
        encoded = [encode_pair(p, tokenizer, template, max_length) for p in pairs]
        dev_encoded = [encode_pair(p, tokenizer, template, max_length) for p in dev_pairs or ()]
    except ValueError as e:
        raise UsageError(f"finetune: {e}") from None
    pad_id = tokenizer.pad_token_id

    n, bsz, accum = len(pairs), cfg.train_batch_size, cfg.grad_accum
    total = total_steps(cfg, n)
    warmup = warmup_steps(cfg, total)
    lengths = [len(e) for e in encoded]
    order = DataOrder(n, bsz, cfg.train_seed, lengths, cfg.length_grouping)
    if resume is not None:  # what auto chose when the run started, not a new measurement
        precision = Precision(**resume["precision"])
    else:
        tokens = min(n, bsz) * int(statistics.median(lengths))
        precision = choose_precision(cfg.precision, model, tokens=tokens, train=True)
    say(f"finetune: {precision.describe()}")

    # Weight decay on matrices only (not on biases and norm scales), as is usual.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))

    def dev_point(step: int) -> bool:
        if not dev_encoded:
            return False
        if step in (0, total):
            return True
        if cfg.dev_every:
            return step % cfg.dev_every == 0
        # the end of an epoch: the micro-batch count crossed a multiple of per_epoch
        return (step * accum) // order.per_epoch > ((step - 1) * accum) // order.per_epoch

    def log_dev(step: int) -> None:
        t = time.perf_counter()
        loss = mean_loss(model, dev_encoded, pad_id, bsz, precision, dev)
        dev_losses.append([step, loss])
        counts["dev_s"] += time.perf_counter() - t
        say(f"finetune: step {step}/{total}  dev loss {loss:.4f} ({len(dev_encoded)} pairs)")

    # The caller's RNG states (CPU, and the CUDA device trained on) are restored afterwards.
    fork_devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        saved_python_rng = random.getstate()
        try:
            t0 = time.perf_counter()
            step, losses, dev_losses, wall_before, resumed_at = 0, [], [], 0.0, []
            # examples trained on, batch tokens (padding included), padding tokens, and
            # the seconds spent on dev losses (not training time)
            counts = {"examples": 0, "tokens": 0, "padded": 0, "dev_s": 0.0}
            if resume is not None:
                model.load_state_dict(resume["model"])
                optimizer.load_state_dict(resume["optimizer"])
                scheduler.load_state_dict(resume["scheduler"])
                set_rng_state(resume["rng"], dev)
                step = int(resume["step"])
                losses = [float(x) for x in resume["losses"]]
                dev_losses = [[int(s), float(x)] for s, x in resume["dev_losses"]]
                counts = dict(resume["counts"])
                wall_before = float(resume["wall_s"])
                resumed_at = [int(s) for s in resume["resumed_at"]] + [step]
                del resume
            else:
                torch.manual_seed(cfg.train_seed)
                random.seed(cfg.train_seed)
                if dev_point(0):
                    log_dev(0)
            model.train()
            logged = step
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
                        counts["examples"] += len(rows)
                        counts["tokens"] += batch.input_ids.numel()
                        counts["padded"] += batch.input_ids.numel() - sum(lengths[r] for r in rows)
                        with precision.autocast(dev.type):
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
                    if cfg.log_every and (step % cfg.log_every == 0 or step == total):
                        since = losses[logged:]
                        say(
                            f"finetune: step {step}/{total}  epoch "
                            f"{step * accum / order.per_epoch:.2f}  loss "
                            f"{sum(since) / len(since):.4f}  lr {lr:.2e}  "
                            f"{wall_before + time.perf_counter() - t0:.0f} s"
                        )
                        logged = step
                    if dev_point(step):
                        log_dev(step)
                        model.train()
                    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                        state = {
                            "format": FORMAT,
                            "fingerprint": fingerprint,
                            "step": step,
                            "micro_batch": step * accum,  # data-order position
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "rng": rng_state(dev),
                            "precision": precision.as_dict(),
                            "losses": losses,
                            "dev_losses": dev_losses,
                            "counts": counts,
                            "wall_s": wall_before + time.perf_counter() - t0,
                            "resumed_at": resumed_at,
                        }
                        save_checkpoint(out, state, step)
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
        "precision": precision.as_dict(),
        "n_pairs": n,
        "steps": total,
        "warmup_steps": warmup,
        "examples_per_step": bsz * accum,
        "epochs_done": total * accum / order.per_epoch,
        "loss_weighting": "mean over target+EOS tokens per example, examples weighed equally",
        "losses": losses,
        "dev_losses": dev_losses,
        "n_dev_pairs": len(dev_encoded),
        "examples_seen": counts["examples"],
        "padding_share": counts["padded"] / max(1, counts["tokens"]),
        "wall_s": wall,
        "dev_s": counts["dev_s"],
        "seconds_per_example": (wall - counts["dev_s"]) / max(1, counts["examples"]),
        "resumed_at_steps": resumed_at,
        "device": str(dev),
        "torch_version": torch.__version__,
    }
    _write_final(out, model, tokenizer, meta, progress)
    return out


def mean_loss(
    model: Any,
    encoded: Sequence[Encoded],
    pad_id: int,
    batch_size: int,
    precision: Precision,
    device: torch.device,
) -> float:
    """Mean per-example loss (:func:`example_losses`) of ``encoded``, batched by length,
    in eval mode and without gradients (no RNG is drawn: dropout is off)."""
    model.eval()
    total = 0.0
    with torch.no_grad(), precision.autocast(device.type):
        for rows in plan_batches([len(e) for e in encoded], batch_size):
            total += float(example_losses(model, collate(encoded, rows, pad_id, device)).sum())
    return total / len(encoded)


def _write_final(
    out: Path, model: Any, tokenizer: Any, meta: dict[str, Any], progress: bool
) -> None:
    """Save into a temporary sibling, then swap it in for ``out`` (and its checkpoint)."""
    final_tmp, aside = siblings(out)
    if final_tmp.exists():
        shutil.rmtree(final_tmp)
    final_tmp.mkdir(parents=True)
    from gdig.model.load import quiet_transformers

    with contextlib.nullcontext() if progress else quiet_transformers():
        model.save_pretrained(final_tmp)
        tokenizer.save_pretrained(final_tmp)
    atomic_write_text(final_tmp / META_FILE, json.dumps(meta, indent=1, ensure_ascii=False))
    if out.exists():
        os.rename(out, aside)
    os.rename(final_tmp, out)
    if aside.exists():
        shutil.rmtree(aside)
