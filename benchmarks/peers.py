"""gdig and its peers side by side: same model, layers, pairs and seeds, one machine.

    make peers                          # installs the peers into .peers/, then runs this
    python benchmarks/peers.py [--seeds 256] [--candidates 128] [--rounds 3] \
        [--methods a,b] [--work DIR] [--out benchmarks/RESULTS.md]
    python benchmarks/peers.py --model tiny --candidates 1024 --subset 64 --out ...
    python benchmarks/peers.py --section ops --methods gdig-fp32,gdig-reference-ops --out ...

Every method runs in a fresh child process (so its peak resident memory is its own) on
SmolLM2-135M-Instruct (or ``--model tiny``: the tiny LLaMA of bench_engine.py, 6 blocks of
hidden 64, random weights, a byte tokenizer) with gdig's default tracked layers (the MLP
down-projection of every third block), S seeds and the next N candidates of Tatoeba zh-en
(``--data-dir``, default ../shared/data), the factors fitted on the N candidates, and gdig's
loss (mean cross-entropy over each example's target tokens, empirical Fisher) unless a
method's own recipe says otherwise.

Repeats: ``--rounds`` rounds (default 3); in each, every method runs once in its own child,
the order of the methods rotated from round to round. Each child first runs its method once
on a few examples (the warm-up: lazy imports, allocator, oneDNN kernels), then the timed
run. The table gives the median over the rounds with the (min-max) spread; a ratio to a
peer is taken per round. The run refuses to start above a 1-minute load of 0.5 per core
with ``--strict-load``, and otherwise writes a warning into the table.

The methods:
* gdig-fp32 / gdig-bf16 (bf16 autocast) / gdig-reference-ops (the pure-PyTorch reference
  ops in place of the compiled ones): EK-FAC fit, seed preparation (rank 32), scoring.
* kronfluence-sorted / kronfluence-file-order (kronfluence 1.0.1 in .peers/, installed with
  --no-deps, never a gdig dependency): EK-FAC ``fit_all_factors`` and
  ``compute_pairwise_scores``, the seeds as queries at rank 32, all query batches in one
  pass, damping_factor=None (0.1 x mean eigenvalue, gdig's default). *sorted*: the
  candidates and seeds in gdig's length-sorted order (so both pad alike), the score matrix
  put back in file order; *file order*: as a user would call it.
* kronfluence-exact: no low-rank query, the first --exact-seeds seeds, sorted order: the
  agreement reference (one run, not timed).
* gdig-official: G-DIG's official recipe (github xypan0/G-DIG: kfac_mapper.py,
  query_loss_mapper.py, if_score.sh, nngeometry/object/lm_vector.py) with its settings,
  re-implemented here (NNGeometry's PyPI release lacks the LM generator the scripts carry,
  so the K-FAC is this file's, of the same definition): batch-1 K-FAC over the candidates
  with the loss of HF's ``labels`` (token mean), a backward over all parameters, A and S
  from the token sums of each example's layer inputs and output gradients; sequences padded
  to a multiple of 8 and no attention mask, as its collator and calls do; seeds in batches
  of ``-bq`` (if_score.sh: 2), one preconditioned vector per batch, K-FAC inverse with
  absolute λ = 0.5 split between the factors by π (NNGeometry's ``inverse(regul)``),
  ``torch.svd_lowrank(q=32)``; candidates at batch 1, ``svd_lowrank(q=32)`` of each
  layer's gradient, and its trace contraction per seed batch. One liberty: the factors'
  inverses are computed once, where the script recomputes them for every seed batch.
* paper-batch1-emulation: the recipe as the paper's text describes it, before the scripts
  were read (the old "paper-recipe"): K-FAC fitted by gdig (batched, per-token factors,
  damping 0.1 x mean), one seed at a time, the gradient of the tracked weights only,
  ``svd_lowrank(q=32, niter=2)`` of each preconditioned seed and candidate gradient, and a
  cheap contraction ((Uᵀ U') ⊙ (Vᵀ V')).
* less-trak: LESS/TRAK-style per-example gradients of the tracked layers with torch.func
  (vmap of grad over a batch) and a dense Gaussian projection per layer to 128 dimensions,
  for seeds and candidates alike.
``--section NAME`` writes a table of its own (section peers-NAME), for methods compared within
the same rounds (make peers: the compiled ops against the reference ops).
The per-example methods (gdig-official's seeds and candidates, the emulation, less-trak)
are timed on a random sample (``--subset``, seeded) of seeds and of candidates.

Throughput counts what a user waits for: ``score`` is candidates/s of the scoring pass
alone, ``score+seeds`` adds preparing the S seeds (kronfluence does both in one call).
Agreement with kronfluence: Spearman over all pairs / of the per-candidate mean, sign
agreement, overlap of the top 10 % of candidates by mean.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from harness import (
    ROOT,
    Machine,
    add_common_args,
    child_main,
    command,
    peak_mib,
    real_pairs,
    rotated,
    run_child,
    spread,
    write_section,
)

PEERS = ROOT / ".peers"
DATA_FILE = "tatoeba.zh-en.jsonl"  # in --data-dir
TIMED = (
    "gdig-fp32",
    "gdig-bf16",
    "gdig-reference-ops",
    "kronfluence-sorted",
    "kronfluence-file-order",
    "gdig-official",
    "paper-batch1-emulation",
    "less-trak",
)
REFERENCE = ("kronfluence-exact",)  # one run: agreement, not timed
METHODS = TIMED + REFERENCE
RANK = 32
OFFICIAL_LAMBDA, OFFICIAL_Q = 0.5, 32  # if_score.sh -lmd 0.5; lm_vector.PVector.svd(q=32)
MODELS = {
    "smollm2": "SmolLM2-135M-Instruct",
    "tiny": "tiny LLaMA (6 blocks, hidden 64, random weights, byte tokenizer)",
}
LESS_K = 128  # dense projection per layer
NOTES = {
    "kronfluence-sorted": "length-sorted order, scores put back",
    "kronfluence-file-order": "file order",
    "gdig-official": "official scripts' settings (bq {bq}); {subset} seeds and candidates "
    "sampled; K-FAC fit timed in full",
    "paper-batch1-emulation": "{subset} seeds and candidates sampled; K-FAC fitted by gdig",
    "less-trak": "{subset} seeds and candidates sampled",
}


# ---------------------------------------------------------------- set-up (children)


@dataclass
class Setup:
    model: object
    tok: object
    seeds: list
    cands: list
    cfg: object
    names: list[str]
    layers: str  # what the tracked layers are, for the table

    def small(self, n_seeds: int = 2) -> Setup:
        """A few examples for the warm-up run."""
        bs = self.cfg.execution.batch_size
        return Setup(self.model, self.tok, self.seeds[:n_seeds], self.cands[:bs], self.cfg,
                     self.names, self.layers)  # fmt: skip


def setup(spec: dict) -> Setup:
    import torch

    from gdig.engine.config import EngineConfig
    from gdig.engine.layers import select_layers, tracked_layers
    from gdig.model import ensure_smollm2, load_model

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    if spec["model"] == "tiny":
        from helpers_models import tiny_model

        model, tok = tiny_model("llama", hidden=64, inter=256, blocks=6)  # as bench_engine
    else:
        model, tok = load_model(ensure_smollm2(), progress=False)
    seeds = real_pairs(DATA_FILE, 0, spec["seeds"], spec["data_dir"])
    cands = real_pairs(DATA_FILE, spec["seeds"], spec["candidates"], spec["data_dir"])
    cfg = EngineConfig.from_flat(factor_samples=0, batch_size=spec["batch_size"], rank=RANK)
    names = select_layers(model, cfg.factors.layers, cfg.factors.layer_stride)
    first = tracked_layers(model, names)[0]
    layers = f"{len(names)} {names[0].split('.')[-1]} layers ({first.d_out}x{first.d_in})"
    return Setup(model, tok, seeds, cands, cfg, names, layers)


def encode(s: Setup, pairs) -> list:
    from gdig.engine import encode_pair

    cfg = s.cfg.factors
    return [encode_pair(p, s.tok, cfg.template, cfg.max_length) for p in pairs]


def hf_batch(encoded, rows, pad_id: int, multiple: int = 1) -> dict:
    """gdig's padded batch of ``encoded[rows]`` as a Hugging Face batch with labels (-100
    off the target), right-padded to a multiple of ``multiple`` tokens."""
    import torch

    from gdig.engine import collate

    b = collate(encoded, rows, pad_id, "cpu")
    labels = torch.where(b.target_mask, b.input_ids, torch.full_like(b.input_ids, -100))
    batch = {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "labels": labels}
    extra = -b.input_ids.shape[1] % multiple
    if extra:
        fills = {"input_ids": pad_id, "attention_mask": 0, "labels": -100}
        batch = {
            k: torch.nn.functional.pad(v, (0, extra), value=fills[k]) for k, v in batch.items()
        }
    return batch


def sorted_order(s: Setup, encoded) -> list[int]:
    """gdig's length-sorted order (its batches, concatenated)."""
    from gdig.engine import plan_batches

    return [i for rows in plan_batches([len(e) for e in encoded], None, 1 << 30) for i in rows]


def length_batches(s: Setup, pairs, batch_size: int) -> list[dict]:
    """gdig's own encoding and length-sorted batches, as Hugging Face batches."""
    from gdig.engine import plan_batches

    enc = encode(s, pairs)
    plan = plan_batches([len(e) for e in enc], batch_size, 1 << 30)
    return [hf_batch(enc, rows, s.tok.pad_token_id) for rows in plan]


def mean_target_loss(logits, labels):
    """Per-example mean cross-entropy over target tokens (gdig's loss, METHOD.md §1)."""
    import torch.nn.functional as F

    lg = logits[:, :-1].float()
    lb = labels[:, 1:]
    tok_loss = F.cross_entropy(lg.transpose(1, 2), lb, ignore_index=-100, reduction="none")
    return tok_loss.sum(1) / (lb != -100).sum(1).clamp(min=1)


def sample(n: int, k: int, seed: int) -> list[int]:
    """A seeded random sample of ``min(k, n)`` of ``range(n)``, the same in every round."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n, size=min(k, n), replace=False).tolist())


def elapsed(t0: float) -> float:
    return time.perf_counter() - t0


# ---------------------------------------------------------------- the methods (children)


def run_gdig(spec: dict, s: Setup) -> tuple[dict, np.ndarray]:

    from gdig.engine import fit_factors, prepare_seeds, score_candidates

    cfg = s.cfg.with_options(autocast="bf16") if spec["method"] == "gdig-bf16" else s.cfg
    t, t0 = {}, time.perf_counter()
    factors = fit_factors(s.model, s.tok, s.cands, cfg, progress=False)
    t["fit"], t0 = elapsed(t0), time.perf_counter()
    sg = prepare_seeds(s.model, s.tok, s.seeds, factors, cfg, progress=False)
    t["seeds"], t0 = elapsed(t0), time.perf_counter()
    store = score_candidates(
        s.model, s.tok, s.cands, sg, cfg, Path(tempfile.mkdtemp(prefix="peers-")), progress=False
    )
    t["score"] = elapsed(t0)
    return t, np.concatenate([b for _, b in store.benefit_blocks()])  # [N, S]


def _kron_task(names: list[str]):
    from kronfluence.task import Task

    class TranslationTask(Task):
        """gdig's loss: per-example mean over target tokens, summed over the batch."""

        def compute_train_loss(self, batch, model, sample=False):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            assert not sample, "empirical Fisher only"
            return mean_target_loss(logits.logits, batch["labels"]).sum()

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model)

        def get_influence_tracked_modules(self):
            return names

        def get_attention_mask(self, batch):
            return batch["attention_mask"]

    return TranslationTask()


def run_kronfluence(spec: dict, s: Setup) -> tuple[dict, np.ndarray]:
    import logging

    import torch
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.utils.dataset import DataLoaderKwargs

    logging.disable(logging.WARNING)
    exact = spec["method"] == "kronfluence-exact"
    seeds = s.seeds[: spec["exact_seeds"]] if exact else s.seeds
    seed_enc, cand_enc = encode(s, seeds), encode(s, s.cands)
    # file order, or gdig's length-sorted order (scores put back in file order below)
    by_len = spec["method"] != "kronfluence-file-order"
    seed_order = sorted_order(s, seed_enc) if by_len else list(range(len(seed_enc)))
    cand_order = sorted_order(s, cand_enc) if by_len else list(range(len(cand_enc)))
    if not hasattr(s.model, "_kron_prepared"):  # the warm-up and the timed run share it
        s.model = prepare_model(s.model, _kron_task(s.names))
        s.model._kron_prepared = True
    analyzer = Analyzer(
        analysis_name="peers", model=s.model, task=_kron_task(s.names), cpu=True,
        disable_tqdm=True, output_dir=tempfile.mkdtemp(prefix="peers-kron-"),
    )  # fmt: skip
    pad = s.tok.pad_token_id
    collate_fn = lambda items: hf_batch(items, range(len(items)), pad)  # noqa: E731
    analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=collate_fn))
    bs = spec["batch_size"]
    t, t0 = {}, time.perf_counter()
    analyzer.fit_all_factors(
        factors_name="ekfac",
        dataset=[cand_enc[i] for i in cand_order],
        per_device_batch_size=bs,
        factor_args=FactorArguments(strategy="ekfac", use_empirical_fisher=True),
        overwrite_output_dir=True,
    )
    t["fit"] = elapsed(t0)
    q_bs = min(bs, len(seeds))
    score_args = ScoreArguments(
        damping_factor=None,  # 0.1 x mean eigenvalue: gdig's default damping
        query_gradient_low_rank=None if exact else RANK,
        query_gradient_accumulation_steps=max(1, -(-len(seeds) // q_bs)),  # one candidate pass
    )
    t0 = time.perf_counter()
    analyzer.compute_pairwise_scores(
        scores_name="pairs",
        factors_name="ekfac",
        query_dataset=[seed_enc[i] for i in seed_order],
        train_dataset=[cand_enc[i] for i in cand_order],
        per_device_query_batch_size=q_bs,
        per_device_train_batch_size=bs,
        score_args=score_args,
        overwrite_output_dir=True,
    )
    t["score+seeds"] = elapsed(t0)
    got = analyzer.load_pairwise_scores("pairs")["all_modules"].to(torch.float32).numpy()
    return t, in_file_order(got, seed_order, cand_order)


def in_file_order(got: np.ndarray, seed_order: list[int], cand_order: list[int]) -> np.ndarray:
    """kronfluence's ``[S, N]`` scores of the seeds and candidates as it was given them
    (file rows ``seed_order``, ``cand_order``) as ``[N, S]`` in file order."""
    scores = np.empty((len(cand_order), len(seed_order)), dtype=got.dtype)
    scores[np.ix_(cand_order, seed_order)] = got.T
    return scores


def _weights(s: Setup) -> dict:
    mods = dict(s.model.named_modules())
    return {n: mods[n].weight for n in s.names}


class TokenSums:
    """Forward/backward hooks on the tracked layers: per call, the sums over the batch and
    its tokens of each layer's input (a) and output gradient (g), as NNGeometry's
    ``_hook_compute_kfac_blocks`` in the official scripts takes them."""

    def __init__(self, s: Setup) -> None:
        mods = dict(s.model.named_modules())
        self.a: dict[str, object] = {}
        self.g: dict[str, object] = {}
        self.handles = [mods[n].register_forward_hook(self._hook(n)) for n in s.names]

    def _hook(self, name: str):
        def hook(mod, inputs, out):
            self.a[name] = inputs[0].detach().sum(dim=(0, 1))
            out.register_hook(lambda g: self.g.__setitem__(name, g.detach().sum(dim=(0, 1))))

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def run_official(spec: dict, s: Setup) -> tuple[dict, None]:
    """G-DIG's official scripts' recipe (see the module docstring); per-example times."""
    import torch

    model, pad, bq = s.model, s.tok.pad_token_id, spec["official_bq"]
    for p in model.parameters():  # the scripts backpropagate into every parameter
        p.requires_grad_(True)
    weights = _weights(s)
    sums = TokenSums(s)

    def backward(batch: dict) -> None:
        model.zero_grad(set_to_none=True)
        # model(input_ids, labels).loss: the token mean over the batch; no attention mask
        model(input_ids=batch["input_ids"], labels=batch["labels"]).loss.backward()

    t, t0 = {}, time.perf_counter()
    cand_enc = encode(s, s.cands)
    kfac = {n: [0.0, 0.0] for n in s.names}  # kfac_mapper.py: batch 1, every candidate
    for i in range(len(cand_enc)):
        backward(hf_batch(cand_enc, [i], pad, multiple=8))
        for n in s.names:
            kfac[n][0] = kfac[n][0] + torch.outer(sums.a[n], sums.a[n])
            kfac[n][1] = kfac[n][1] + torch.outer(sums.g[n], sums.g[n])
    inverse = {}
    for n, (a, g) in kfac.items():  # NNGeometry PMatKFAC.inverse(regul), use_pi=True
        a, g = a / len(cand_enc), g / len(cand_enc)
        pi = (torch.trace(a) / torch.trace(g) * g.shape[0] / a.shape[0]).sqrt()
        eye_a, eye_g = torch.eye(a.shape[0]), torch.eye(g.shape[0])
        inverse[n] = (
            torch.inverse(a + pi * OFFICIAL_LAMBDA**0.5 * eye_a),
            torch.inverse(g + OFFICIAL_LAMBDA**0.5 / pi * eye_g),
        )
    t["fit"] = elapsed(t0)

    # seeds: batches of bq in file order (a random sample of whole batches), then per
    # batch one preconditioned vector per layer, svd_lowrank(q=32)
    seed_enc = encode(s, s.seeds)
    n_batches = len(seed_enc) // bq  # drop_last=True
    picked = sample(n_batches, max(1, spec["subset"] // bq), seed=1)
    t0, ihvps = time.perf_counter(), []
    for b in picked:
        backward(hf_batch(seed_enc, list(range(b * bq, (b + 1) * bq)), pad, multiple=8))
        per_layer = []
        for n, w in weights.items():
            inv_a, inv_g = inverse[n]
            per_layer.append(torch.svd_lowrank(inv_g @ w.grad @ inv_a, q=OFFICIAL_Q))
        ihvps.append(per_layer)
    t["seeds_per_ex"] = elapsed(t0) / (len(picked) * bq)
    # Score against all S / bq seed batches: the prepared ones reused in turn (only the time
    # matters here, so the sampled seeds stand in for the rest).
    batches = [ihvps[i % len(ihvps)] for i in range(n_batches)]
    picked = sample(len(cand_enc), spec["subset"], seed=2)
    t0 = time.perf_counter()
    for i in picked:
        backward(hf_batch(cand_enc, [i], pad, multiple=8))
        cand = [torch.svd_lowrank(w.grad, q=OFFICIAL_Q) for w in weights.values()]
        scores = []
        for ihvp in batches:  # lm_vector.PVector.dot_svd: a trace per layer
            dot = 0.0
            for (u1, s1, v1), (u2, s2, v2) in zip(cand, ihvp, strict=True):
                dot += torch.trace(u1 @ (torch.diag(s1) @ (v1.T @ v2) @ torch.diag(s2)) @ u2.T)
            scores.append(-dot)
        torch.stack(scores).mean()  # the script's score: mean over the seed batches
    t["score_per_ex"] = elapsed(t0) / len(picked)
    sums.close()
    return t, None


def run_emulation(spec: dict, s: Setup) -> tuple[dict, None]:
    """The batch-1 per-seed emulation (see the module docstring); per-example times."""
    import torch

    from gdig.engine import fit_factors

    model = s.model
    for p in model.parameters():
        p.requires_grad_(False)
    weights = _weights(s)
    for w in weights.values():
        w.requires_grad_(True)
    t, t0 = {}, time.perf_counter()
    factors = fit_factors(model, s.tok, s.cands, s.cfg.with_options(method="kfac"), progress=False)
    t["fit"] = elapsed(t0)

    def grads_of(batches):
        for b in batches:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            loss = mean_target_loss(logits, b["labels"])
            yield torch.autograd.grad(loss.sum(), list(weights.values()))

    def lowrank(g):
        u, sv, v = torch.svd_lowrank(g, q=RANK, niter=2)
        return u * sv, v  # [d_out, r], [d_in, r]

    seed_sample = [s.seeds[i] for i in sample(len(s.seeds), spec["subset"], seed=1)]
    t0, seed_lr = time.perf_counter(), []
    for gs in grads_of(length_batches(s, seed_sample, 1)):
        per_layer = []
        for name, g in zip(s.names, gs, strict=True):
            pre = factors[name].precondition(g[None], s.cfg.scoring)[0]
            per_layer.append(lowrank(pre))
        seed_lr.append(per_layer)
    t["seeds_per_ex"] = elapsed(t0) / len(seed_sample)
    # Score against S seeds: the sampled ones reused in turn (only the time matters).
    cyc = [seed_lr[i % len(seed_lr)] for i in range(len(s.seeds))]
    n_layers = len(s.names)
    us, vs = ([torch.stack([c[li][j] for c in cyc]) for li in range(n_layers)] for j in (0, 1))
    cand_sample = [s.cands[i] for i in sample(len(s.cands), spec["subset"], seed=2)]
    t0 = time.perf_counter()
    for gs in grads_of(length_batches(s, cand_sample, 1)):
        total = torch.zeros(len(s.seeds))
        for li, g in enumerate(gs):
            cu, cv = lowrank(g)  # <cu cvᵀ, su svᵀ> = Σ (cuᵀ su) ⊙ (cvᵀ sv)
            total += ((cu.T @ us[li]) * (cv.T @ vs[li])).sum(dim=(1, 2))
    t["score_per_ex"] = elapsed(t0) / len(cand_sample)
    return t, None


def run_less(spec: dict, s: Setup) -> tuple[dict, None]:
    """torch.func per-example gradients of the tracked weights (vmap of grad over a batch),
    then a dense Gaussian projection per layer, for seeds and candidates; per-example times."""
    import torch
    from torch.func import functional_call, grad, vmap

    weights = {f"{k}.weight": w.detach() for k, w in _weights(s).items()}
    gen = torch.Generator().manual_seed(0)
    proj = {
        k: torch.randn(w.numel(), LESS_K, generator=gen) / LESS_K**0.5 for k, w in weights.items()
    }

    def loss_one(w, ids, labels):
        # No attention mask: batches are right-padded and attention is causal, so padding
        # never reaches a real token, and labels are -100 there (HF's mask code is not
        # vmap-able: it branches on tensor values).
        logits = functional_call(s.model, w, (ids[None],)).logits
        return mean_target_loss(logits, labels[None])[0]

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))

    def features(pairs) -> float:
        t0 = time.perf_counter()
        for b in length_batches(s, pairs, spec["batch_size"]):
            g = per_example(weights, b["input_ids"], b["labels"])
            torch.cat([g[k].flatten(1) @ proj[k] for k in weights], dim=1)
        return elapsed(t0) / len(pairs)

    seed_sample = [s.seeds[i] for i in sample(len(s.seeds), spec["subset"], seed=1)]
    cand_sample = [s.cands[i] for i in sample(len(s.cands), spec["subset"], seed=2)]
    # LESS's score is one matmul of the seed and candidate features: not timed
    return {"seeds_per_ex": features(seed_sample), "score_per_ex": features(cand_sample)}, None


RUNNERS = {
    "gdig-fp32": run_gdig,
    "gdig-bf16": run_gdig,
    "gdig-reference-ops": run_gdig,
    "kronfluence-sorted": run_kronfluence,
    "kronfluence-file-order": run_kronfluence,
    "kronfluence-exact": run_kronfluence,
    "gdig-official": run_official,
    "paper-batch1-emulation": run_emulation,
    "less-trak": run_less,
}


def child(spec: dict) -> dict:
    if spec["method"].startswith("kronfluence"):
        sys.path.insert(0, str(PEERS))
    if spec["method"] == "gdig-reference-ops":
        import gdig_ext
        from gdig_ext import reference

        for name in ("ekfac_accumulate", "lowrank_benefit", "project_grads", "score_stats"):
            setattr(gdig_ext, name, getattr(reference, name))
    s = setup(spec)
    runner = RUNNERS[spec["method"]]
    warm = {**spec, "subset": min(spec["subset"], 2 * spec["official_bq"])}
    runner(warm, s.small(n_seeds=2 * spec["official_bq"]))  # the warm-up
    times, scores = runner(spec, s)
    if scores is not None and spec.get("save_scores"):
        np.save(Path(spec["work"]) / f"{spec['method']}.npy", scores)
    return {"times": times, "peak_mib": peak_mib(), "layers": s.layers}


# ---------------------------------------------------------------- the parent: run, compare


def agreement(ours: np.ndarray, theirs: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    m_o, m_t = ours.mean(1), theirs.mean(1)
    k = max(1, len(m_o) // 10)
    top_o, top_t = set(np.argsort(-m_o)[:k]), set(np.argsort(-m_t)[:k])
    return {
        "spearman_pairs": float(spearmanr(ours.ravel(), theirs.ravel()).statistic),
        "spearman_mean": float(spearmanr(m_o, m_t).statistic),
        "sign_agree": float(((ours > 0) == (theirs > 0)).mean()),
        "top10_overlap": len(top_o & top_t) / k,
    }


def rates(t: dict, n: int, s: int) -> tuple[float | None, float, float | None]:
    """(score-only cand/s, score+seeds cand/s, fit s) from one round's times."""
    if "score_per_ex" in t:  # timed per example on a sample
        seeds = t.get("seeds_per_ex", 0) * s / n
        return 1 / t["score_per_ex"], 1 / (t["score_per_ex"] + seeds), t.get("fit")
    if "score+seeds" in t:
        return None, n / t["score+seeds"], t["fit"]
    return n / t["score"], n / (t["score"] + t["seeds"]), t["fit"]


def marker(model: str, section: str | None = None) -> str:
    """The RESULTS.md section (and PNG) name of a model's table, or of --section's."""
    return f"peers-{section}" if section else "peers" if model == "smollm2" else f"peers-{model}"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if child_main(argv, child):
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", choices=sorted(MODELS))
    ap.add_argument("--seeds", type=int, default=256)
    ap.add_argument("--candidates", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--subset", type=int, default=16, help="examples timed for per-example peers")
    ap.add_argument("--official-bq", type=int, default=2, help="gdig-official's -bq (if_score.sh)")
    ap.add_argument("--exact-seeds", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (median, min-max)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list; empty: redraw")
    ap.add_argument("--work", default=None, help="folder for scores and results.json")
    ap.add_argument("--fresh", action="store_true", help="forget earlier results in --work")
    ap.add_argument("--out", default=None, help="write the section into this RESULTS.md")
    ap.add_argument(
        "--section", default=None,
        help="a table of its own (section peers-SECTION), e.g. two methods in the same rounds",
    )  # fmt: skip
    add_common_args(ap)
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or args.rounds < 1:
        ap.error(f"unknown methods {unknown}" if unknown else "--rounds must be at least 1")
    name = marker(args.model, args.section)
    work = Path(args.work or Path(tempfile.gettempdir()) / f"gdig-{name}")
    work.mkdir(parents=True, exist_ok=True)
    # A run of some methods updates the results of an earlier run in the same --work folder.
    previous = work / "results.json"
    if args.fresh:
        for f in [previous, *work.glob("*.npy")]:
            f.unlink(missing_ok=True)
    results = json.loads(previous.read_text()) if previous.is_file() else {}
    settings = {k: getattr(args, k) for k in ("model", "seeds", "candidates", "batch_size")}
    if results and results.get("_settings") != settings:
        raise SystemExit(f"peers: {work} holds results of other settings; use another --work")
    results["_settings"] = settings
    kron = (PEERS / "kronfluence").is_dir()
    runnable = [m for m in methods if kron or not m.startswith("kronfluence")]
    for m in sorted(set(methods) - set(runnable)):
        print(f"{m}: skipped (run `make peers` to install kronfluence)", file=sys.stderr)
    machine = Machine(args.threads, strict=args.strict_load)
    spec = {
        "seeds": args.seeds, "candidates": args.candidates, "batch_size": args.batch_size,
        "subset": args.subset, "threads": args.threads, "exact_seeds": args.exact_seeds,
        "work": str(work), "model": args.model, "official_bq": args.official_bq,
        "data_dir": args.data_dir,
    }  # fmt: skip
    env = {"TQDM_DISABLE": "1"}
    timed = [m for m in runnable if m in TIMED]
    for m in timed:
        results[m] = {"rounds": []}
    for r in range(args.rounds):
        for m in rotated(timed, r) if timed else []:
            res = run_child(__file__, {**spec, "method": m, "save_scores": r == 0}, env)
            results[m]["rounds"].append(res)
            print(f"round {r + 1} {m}: {json.dumps(res)}", flush=True)
    for m in (m for m in runnable if m in REFERENCE):
        results[m] = {"rounds": [run_child(__file__, {**spec, "method": m, "save_scores": True})]}
    if runnable:
        results.setdefault("_runs", []).append(
            {"command": command("peers.py", argv), "machine": machine.line()}
        )
    (work / "results.json").write_text(json.dumps(results, indent=1))
    text = render(results, args, work)
    print(text)
    if args.out:
        write_section(args.out, name, "peers.py", text)
        plot(results, args, Path(args.out).with_name(f"{name}.png"))


def _ok_rounds(results: dict, m: str) -> list[dict]:
    return [r for r in results.get(m, {}).get("rounds", []) if "failed" not in r]


def plot(results: dict, args, path: Path) -> None:
    """Bar chart of candidates/s with the S seeds prepared (what a user waits for)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, med, lo, hi = [], [], [], []
    for m in TIMED:
        got = [rates(r["times"], args.candidates, args.seeds)[1] for r in _ok_rounds(results, m)]
        if got:
            names.append(m)
            med.append(statistics.median(got))
            lo.append(med[-1] - min(got))
            hi.append(max(got) - med[-1])
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.barh(names[::-1], med[::-1], xerr=[lo[::-1], hi[::-1]], color="tab:blue")
    ax.set_xlabel(f"candidates/s, S = {args.seeds} seeds prepared too (median, min-max)")
    ax.set_title(f"{MODELS[args.model][:40]}, CPU {args.threads} threads, N = {args.candidates}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(results: dict, args, work: Path) -> str:
    n, s = args.candidates, args.seeds

    def per_round(m: str) -> list[tuple]:
        return [rates(r["times"], n, s) for r in _ok_rounds(results, m)]

    def versus(m: str, peer: str) -> str:
        mine, theirs = per_round(m), per_round(peer)
        if not mine or not theirs or m == peer:
            return ""
        pairs = zip(mine, theirs, strict=False)  # round r against round r
        return spread([a[1] / b[1] for a, b in pairs])

    def scores(name):
        p = work / f"{name}.npy"
        return np.load(p) if p.is_file() else None

    refs = [("kf-sorted r32", "kronfluence-sorted"), ("kf exact", "kronfluence-exact")]
    rows = []
    for m in METHODS:
        r = results.get(m)
        if r is None:
            continue
        if m in REFERENCE:
            first = r["rounds"][0]
            note = f"agreement reference, first {args.exact_seeds} seeds, one run"
            if "failed" in first:
                note = f"failed: {first['failed'][:120]}"
            rows.append(f"| {m} | | | | | | | {first.get('peak_mib', 0):.0f} | | {note} |")
            continue
        ok = per_round(m)
        if not ok:
            failed = r["rounds"][0]["failed"] if r["rounds"] else "no round ran"
            rows.append(f"| {m} | failed: {failed[:120]} |" + " |" * 8)
            continue
        fit = [x[2] for x in ok if x[2] is not None]
        rate = [x[0] for x in ok if x[0] is not None]
        agree, ours = [], scores(m) if not m.startswith(("paper", "less", "gdig-off")) else None
        for label, ref_name in refs:
            ref = scores(ref_name)
            if ours is not None and ref is not None and ref_name != m:
                a = agreement(ours[:, : ref.shape[1]], ref)
                agree.append(
                    f"{label}: {a['spearman_pairs']:.3f} / {a['spearman_mean']:.3f} / "
                    f"{a['sign_agree']:.3f} / {a['top10_overlap']:.2f}"
                )
        t0 = _ok_rounds(results, m)[0]["times"]
        note = NOTES.get(m, "").format(bq=args.official_bq, subset=args.subset)
        if "seeds" in t0:
            sec = [x["times"]["seeds"] for x in _ok_rounds(results, m)]
            note = f"seeds {spread(sec, '.1f')} s ({statistics.median(sec) / s:.3f} s/seed)"
        peak = statistics.median(x["peak_mib"] for x in _ok_rounds(results, m))
        cells = [
            m, spread(fit, ".1f") if fit else "", spread(rate) if rate else "",
            spread([x[1] for x in ok]), versus(m, "kronfluence-sorted"),
            versus(m, "kronfluence-file-order"), str(len(ok)), f"{peak:.0f}",
            "<br>".join(agree), note,
        ]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    if not args.section and (absent := [m for m in TIMED if m not in results]):
        # Said in the table, so that a missing row is not read as a method that lost.
        rows += ["", f"Not run for this table: {', '.join(absent)}."]
    layers = next((x["layers"] for m in METHODS for x in _ok_rounds(results, m)), "")
    title = "" if args.model == "smollm2" else f", {MODELS[args.model].split(' (')[0]}"
    if args.section:  # a comparison within the same rounds, not the full peers table
        title += ": " + ", ".join(m for m in METHODS if m in results) + " in the same rounds"
    runs = [f"`{r['command']}`\n\n{r['machine']}" for r in results.get("_runs", [])]
    head = [
        f"## The peers side by side{title} (benchmarks/peers.py)",
        "",
        *"\n\n".join(runs).split("\n"),
        "",
        f"{MODELS[args.model]}, {layers or 'the default tracked layers'}, S = {s} Tatoeba zh-en "
        f"seeds, N = {n} candidates (the next {n} pairs), factors fitted on the N candidates, "
        f"batch {args.batch_size}, rank {RANK}. Each method in its own process, in rounds with "
        "the order of the methods rotated; each figure is the median over the rounds (the "
        "rounds column) with its (min-max), after a warm-up in every process; peak = the "
        "process's VmHWM (model and imports included). Candidates/s: `score` = the scoring "
        "pass alone, `score+seeds` = with the S seeds prepared too (what kronfluence's one "
        "call does); `x kf` = score+seeds against kronfluence's, round by round, given gdig's "
        "length-sorted order or the file order. Agreement (first round's scores) with "
        "kronfluence's rank-32 run over all seeds and its exact run over the first "
        f"{args.exact_seeds}: Spearman over pairs / of the per-candidate mean / sign "
        "agreement / top-10 % overlap. Methods are described in the docstring of "
        "benchmarks/peers.py.",
        "",
        "| method | fit s | score cand/s | score+seeds cand/s | x kf sorted | x kf file order "
        "| rounds | peak MiB | agreement (pairs / mean / sign / top 10 %) | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    return "\n".join(head + rows) + "\n"


if __name__ == "__main__":
    main()
