"""gdig and its peers side by side: same model, layers, pairs and seeds, one run, one machine.

    make peers                                   # installs the peers into .peers/, then runs this
    python benchmarks/peers.py [--seeds 256] [--candidates 128] [--out benchmarks/RESULTS.md]
    python benchmarks/peers.py --model tiny --out benchmarks/RESULTS.md   # the tiny LLaMA

Every method runs in a fresh child process (so its peak resident memory is its own), on
SmolLM2-135M-Instruct with gdig's default tracked layers (the MLP down-projection of every
third block: 10 layers of 576x1536), S seeds and N candidates from Tatoeba zh-en
(`../shared/data`), the factors fitted on the N candidates themselves, and gdig's loss
(mean cross-entropy over each example's target tokens, empirical Fisher). ``--model tiny``
runs the same on the tiny LLaMA of bench_engine.py (6 blocks, hidden 64, random weights,
a byte tokenizer): a second architecture for the agreement, and where fixed costs show.

* gdig, fp32 / bf16 autocast / fp32 with the pure-PyTorch reference ops in place of the
  compiled ones (what the kernels buy end to end): EK-FAC fit, seed preparation (rank 32),
  scoring;
* kronfluence (installed with --no-deps into .peers/, never a gdig dependency): EK-FAC
  `fit_all_factors` and `compute_pairwise_scores` with the seeds as queries, its low-rank
  query option at gdig's rank (32) and all query batches accumulated so the candidates are
  read once; damping_factor=None (0.1 x mean eigenvalue, gdig's default). A second,
  exact (no low rank) kronfluence run on the first 32 seeds gives the agreement reference;
* the paper's recipe (G-DIG's official scripts, as its paper and README describe them): batch
  size 1, each example's gradient of every tracked layer by autograd, a rank-32 SVD of it,
  K-FAC preconditioning of the seeds; timed on a subset (it is slow), per example;
* a LESS/TRAK-style pipeline: per-example gradients of the tracked layers with torch.func
  (vmap of grad over a batch), then a dense Gaussian projection per layer to 128 dimensions
  (D = 1,280; the matrices are held in memory, 4.5 GB, since regenerating them per batch, as
  TRAK's CPU projector does, is slower still); timed on a subset, per example.

Throughput counts what a user waits for: "score" is candidates/s of the scoring pass alone,
"score+seeds" includes preparing the S seeds (kronfluence does both in one call). Agreement
of gdig's scores with kronfluence's: Spearman over all N x S pairs and over the per-candidate
mean, sign agreement, and overlap of the top 10 % of candidates by mean.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / ".peers"
DATA_FILE = "tatoeba.zh-en.jsonl"  # in ../shared/data
METHODS = (
    "gdig-fp32",
    "gdig-bf16",
    "gdig-reference-ops",
    "kronfluence-fp32",
    "kronfluence-exact",
    "paper-recipe",
    "paper-recipe-full-svd",
    "less-trak",
)
RANK = 32
MODELS = {
    "smollm2": "SmolLM2-135M-Instruct",
    "tiny": "tiny LLaMA (6 blocks, hidden 64, random weights, byte tokenizer)",
}
LAYERS: dict[str, str] = {}  # set by setup() in a child: what the tracked layers are
LESS_K = 128  # dense projection per layer


# ---------------------------------------------------------------- shared set-up (children)


def _paths() -> None:
    for p in (ROOT / "python", ROOT, ROOT / "tests"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))


def setup(spec: dict):
    import torch

    _paths()
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    from helpers_models import engine_config, real_pairs

    from gdig.engine.layers import select_layers, tracked_layers
    from gdig.model import ensure_smollm2, load_model

    if spec.get("model", "smollm2") == "tiny":
        from helpers_models import tiny_model

        model, tok = tiny_model("llama", hidden=64, inter=256, blocks=6)  # as bench_engine
    else:
        model, tok = load_model(ensure_smollm2(), progress=False)
    seeds = real_pairs(DATA_FILE, n=spec["seeds"])
    cands = real_pairs(DATA_FILE, start=spec["seeds"], n=spec["candidates"])
    cfg = engine_config(factor_samples=0, batch_size=spec["batch_size"], rank=RANK)
    names = select_layers(model, cfg.factors.layers, cfg.factors.layer_stride)
    first = tracked_layers(model, names)[0]
    LAYERS["text"] = f"{len(names)} {names[0].split('.')[-1]} layers ({first.d_out}x{first.d_in})"
    return model, tok, seeds, cands, cfg, names


def hf_batch(encoded, rows, pad_id: int) -> dict:
    """gdig's padded batch of ``encoded[rows]`` as a Hugging Face batch with labels."""
    import torch

    from gdig.engine import collate

    b = collate(encoded, rows, pad_id, "cpu")
    labels = torch.where(b.target_mask, b.input_ids, torch.full_like(b.input_ids, -100))
    return {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "labels": labels}


def encode(tok, pairs, cfg) -> list:
    from gdig.engine import encode_pair

    return [encode_pair(p, tok, cfg.factors.template, cfg.factors.max_length) for p in pairs]


def encoded_batches(tok, pairs, cfg, batch_size: int) -> list[dict]:
    """gdig's own encoding and length-sorted batches, as Hugging Face batches."""
    from gdig.engine import plan_batches

    enc = encode(tok, pairs, cfg)
    plan = plan_batches([len(e) for e in enc], batch_size, 1 << 30)
    return [hf_batch(enc, rows, tok.pad_token_id) for rows in plan]


def mean_target_loss(logits, labels):
    """Per-example mean cross-entropy over target tokens (gdig's loss, METHOD.md §1)."""
    import torch.nn.functional as F

    lg = logits[:, :-1].float()
    lb = labels[:, 1:]
    tok_loss = F.cross_entropy(lg.transpose(1, 2), lb, ignore_index=-100, reduction="none")
    return tok_loss.sum(1) / (lb != -100).sum(1).clamp(min=1)


# ---------------------------------------------------------------- the methods (children)


def run_gdig(spec: dict, out: Path) -> dict:
    from helpers_models import with_options

    import gdig_ext
    from gdig.engine import fit_factors, prepare_seeds, score_candidates

    model, tok, seeds, cands, cfg, _ = setup(spec)
    if spec["method"] == "gdig-bf16":
        cfg = with_options(cfg, autocast="bf16")
    if spec["method"] == "gdig-reference-ops":
        from gdig_ext import reference

        for name in ("ekfac_accumulate", "lowrank_benefit", "project_grads", "score_stats"):
            setattr(gdig_ext, name, getattr(reference, name))
    t = {}
    t0 = time.perf_counter()
    factors = fit_factors(model, tok, cands, cfg, progress=False)
    t["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sg = prepare_seeds(model, tok, seeds, factors, cfg, progress=False)
    t["seeds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = score_candidates(
        model, tok, cands, sg, cfg, Path(tempfile.mkdtemp(prefix="peers-")), progress=False
    )
    t["score"] = time.perf_counter() - t0
    scores = np.concatenate([b for _, b in store.benefit_blocks()])  # [N, S]
    np.save(out / f"{spec['method']}.npy", scores)
    return t


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


def run_kronfluence(spec: dict, out: Path) -> dict:
    sys.path.insert(0, str(PEERS))
    import logging

    import torch
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.utils.dataset import DataLoaderKwargs

    logging.disable(logging.WARNING)
    model, tok, seeds, cands, cfg, names = setup(spec)
    exact = spec["method"] == "kronfluence-exact"
    if exact:
        seeds = seeds[: spec["exact_seeds"]]
    # The datasets are lists of gdig-encoded examples, batched by gdig's collate.
    seed_ds, cand_ds = encode(tok, seeds, cfg), encode(tok, cands, cfg)
    model = prepare_model(model, _kron_task(names))
    workdir = Path(tempfile.mkdtemp(prefix="peers-kron-"))
    analyzer = Analyzer(
        analysis_name="peers", model=model, task=_kron_task(names), cpu=True,
        disable_tqdm=True, output_dir=str(workdir),
    )  # fmt: skip
    pad = tok.pad_token_id
    collate_fn = lambda items: hf_batch(items, range(len(items)), pad)  # noqa: E731
    analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=collate_fn))
    bs = spec["batch_size"]
    t = {}
    t0 = time.perf_counter()
    analyzer.fit_all_factors(
        factors_name="ekfac",
        dataset=cand_ds,
        per_device_batch_size=bs,
        factor_args=FactorArguments(strategy="ekfac", use_empirical_fisher=True),
        overwrite_output_dir=True,
    )
    t["fit"] = time.perf_counter() - t0
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
        query_dataset=seed_ds,
        train_dataset=cand_ds,
        per_device_query_batch_size=q_bs,
        per_device_train_batch_size=bs,
        score_args=score_args,
        overwrite_output_dir=True,
    )
    t["score+seeds"] = time.perf_counter() - t0
    scores = analyzer.load_pairwise_scores("pairs")["all_modules"]  # [S, N]
    np.save(out / f"{spec['method']}.npy", scores.to(torch.float32).numpy().T)
    return t


def _tracked_weights(model, names: list[str]) -> dict:
    mods = dict(model.named_modules())
    return {n: mods[n].weight for n in names}


def run_paper(spec: dict, out: Path) -> dict:
    """Batch size 1; per-layer autograd gradient; rank-32 SVD (torch.svd_lowrank, the
    cheaper of PyTorch's two, or torch.linalg.svd for "-full-svd"); seeds K-FAC
    preconditioned then compressed; benefit of a candidate = Σ_layers <its rank-32
    gradient, each seed's>. Per-example times."""
    import torch
    from helpers_models import with_options

    from gdig.engine import fit_factors

    model, tok, seeds, cands, cfg, names = setup(spec)
    n = spec["subset"]
    for p in model.parameters():
        p.requires_grad_(False)
    weights = _tracked_weights(model, names)
    for w in weights.values():
        w.requires_grad_(True)
    t = {}
    t0 = time.perf_counter()
    factors = fit_factors(model, tok, cands, with_options(cfg, method="kfac"), progress=False)
    t["fit"] = time.perf_counter() - t0

    def grads_of(pair_batches):
        for b in pair_batches:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            loss = mean_target_loss(logits, b["labels"])
            yield torch.autograd.grad(loss.sum(), list(weights.values()))

    full_svd = spec["method"] == "paper-recipe-full-svd"

    def lowrank(g):
        if full_svd:  # torch.linalg.svd, then keep the top RANK
            u, s, vh = torch.linalg.svd(g, full_matrices=False)
            return u[:, :RANK] * s[:RANK], vh[:RANK].T
        u, s, v = torch.svd_lowrank(g, q=RANK, niter=2)
        return u * s, v  # [d_out, r], [d_in, r]

    seed_b = encoded_batches(tok, seeds[:n], cfg, 1)
    t0 = time.perf_counter()
    seed_lr = []
    for gs in grads_of(seed_b):
        per_layer = []
        for name, g in zip(names, gs, strict=True):
            pre = factors[name].precondition(g[None], cfg.scoring)[0]
            per_layer.append(lowrank(pre))
        seed_lr.append(per_layer)
    t["seeds_per_ex"] = (time.perf_counter() - t0) / n
    # Score against S seeds: reuse the prepared subset cyclically (only the time matters).
    cyc = [seed_lr[i % n] for i in range(len(seeds))]
    us, vs = ([torch.stack([s[li][j] for s in cyc]) for li in range(len(names))] for j in (0, 1))
    cand_b = encoded_batches(tok, cands[:n], cfg, 1)
    t0 = time.perf_counter()
    for gs in grads_of(cand_b):
        total = torch.zeros(len(seeds))
        for li, g in enumerate(gs):
            cu, cv = lowrank(g)  # <cu cvᵀ, su svᵀ> = Σ (cuᵀ su) ⊙ (cvᵀ sv)
            total += ((cu.T @ us[li]) * (cv.T @ vs[li])).sum(dim=(1, 2))
    t["score_per_ex"] = (time.perf_counter() - t0) / n
    return t


def run_less(spec: dict, out: Path) -> dict:
    """torch.func per-example gradients of the tracked weights (vmap of grad over a batch),
    then a dense Gaussian projection per layer; per-example times."""
    import torch
    from torch.func import functional_call, grad, vmap

    model, tok, _, cands, cfg, names = setup(spec)
    n = spec["subset"]
    weights = {f"{k}.weight": w.detach() for k, w in _tracked_weights(model, names).items()}
    gen = torch.Generator().manual_seed(0)
    proj = {
        k: torch.randn(w.numel(), LESS_K, generator=gen) / LESS_K**0.5 for k, w in weights.items()
    }

    def loss_one(w, ids, labels):
        # No attention mask: batches are right-padded and attention is causal, so padding
        # never reaches a real token, and labels are -100 there (HF's mask code is not
        # vmap-able: it branches on tensor values).
        logits = functional_call(model, w, (ids[None],)).logits
        return mean_target_loss(logits, labels[None])[0]

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
    batches = encoded_batches(tok, cands[:n], cfg, spec["batch_size"])
    t = {}
    t0 = time.perf_counter()
    feats = []
    for b in batches:
        g = per_example(weights, b["input_ids"], b["labels"])
        feats.append(torch.cat([g[k].flatten(1) @ proj[k] for k in weights], dim=1))
    t["score_per_ex"] = (time.perf_counter() - t0) / n
    return t


RUNNERS = {
    "gdig-fp32": run_gdig,
    "gdig-bf16": run_gdig,
    "gdig-reference-ops": run_gdig,
    "kronfluence-fp32": run_kronfluence,
    "kronfluence-exact": run_kronfluence,
    "paper-recipe": run_paper,
    "paper-recipe-full-svd": run_paper,
    "less-trak": run_less,
}


def child(spec: dict) -> dict:
    _paths()
    t = RUNNERS[spec["method"]](spec, Path(spec["out"]))
    from bench_ops import proc_status_kib

    return {
        "method": spec["method"], "times": t, "peak_mib": proc_status_kib("VmHWM") / 1024,
        "layers": LAYERS.get("text", ""),
    }  # fmt: skip


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", choices=sorted(MODELS))
    ap.add_argument("--seeds", type=int, default=256)
    ap.add_argument("--candidates", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--subset", type=int, default=16, help="examples timed for the slow peers")
    ap.add_argument("--exact-seeds", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--methods", default=",".join(METHODS), help="comma list; empty: redraw the table"
    )
    ap.add_argument("--work", default=None, help="folder for scores and results")
    ap.add_argument("--out", default=None, help="write the section into this RESULTS.md")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="gdig-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    # A run of some methods updates the results of an earlier run in the same --work folder.
    previous = work / "results.json"
    results = json.loads(previous.read_text()) if previous.is_file() else {}
    if results and results.get("_args", {}).get("model", "smollm2") != args.model:
        raise SystemExit(f"peers: {work} holds results of another model; use another --work")
    methods = [m for m in args.methods.split(",") if m]  # none: redraw from results.json
    for method in methods:
        if method.startswith("kronfluence") and not (PEERS / "kronfluence").is_dir():
            print(f"{method}: skipped (run `make peers` to install kronfluence)", file=sys.stderr)
            continue
        spec = {
            "method": method, "seeds": args.seeds, "candidates": args.candidates,
            "batch_size": args.batch_size, "subset": args.subset, "threads": args.threads,
            "exact_seeds": args.exact_seeds, "out": str(work), "model": args.model,
        }  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"},
        )  # fmt: skip
        if proc.returncode != 0:
            print(f"{method}: FAILED\n{proc.stderr[-3000:]}", file=sys.stderr)
            results[method] = {"method": method, "failed": proc.stderr.strip().splitlines()[-1]}
            continue
        results[method] = json.loads(proc.stdout.strip().splitlines()[-1])
        results[method]["wall"] = time.perf_counter() - t0
        print(method, json.dumps(results[method]), flush=True)
    results.setdefault("_runs", [])
    if methods:
        load = [load_start, os.getloadavg()[0]]
        date = time.strftime("%Y-%m-%d %H:%M")
        results["_runs"].append({"methods": args.methods, "load": load, "date": date})
    results["_args"] = vars(args)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    text = render(results, args, work)
    print(text)
    if args.out:
        write_section(Path(args.out), text, _marker(args.model))
        plot(results, args, Path(args.out).with_name(f"{_marker(args.model)}.png"))


def _marker(model: str) -> str:
    """The RESULTS.md section (and PNG) name of a model's table."""
    return "peers" if model == "smollm2" else f"peers-{model}"


def plot(results: dict, args, path: Path) -> None:
    """Bar chart of candidates/s with the S seeds prepared (what a user waits for)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, rates = [], []
    for m in METHODS:
        r = results.get(m)
        if not r or "failed" in r or m == "kronfluence-exact":
            continue
        names.append(m)
        rates.append(_rates(r["times"], args)[1])
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh(names[::-1], rates[::-1], color="tab:blue")
    ax.set_xlabel(f"candidates/s, S = {args.seeds} seeds prepared too (higher is better)")
    ax.set_title(f"{MODELS[args.model][:40]}, CPU {args.threads} threads, N = {args.candidates}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _rates(t: dict, args) -> tuple[float | None, float, float | None]:
    """(score-only cand/s, score+seeds cand/s, fit s) from a method's times."""
    n, s = args.candidates, args.seeds
    if "score_per_ex" in t:  # timed per example on a subset
        seeds = t.get("seeds_per_ex", 0) * s / n
        return 1 / t["score_per_ex"], 1 / (t["score_per_ex"] + seeds), t.get("fit")
    if "score+seeds" in t:
        return None, n / t["score+seeds"], t["fit"]
    return n / t["score"], n / (t["score"] + t["seeds"]), t["fit"]


def render(results: dict, args, work: Path) -> str:
    n, s = args.candidates, args.seeds
    rows = []
    kron = results.get("kronfluence-fp32", {}).get("times")
    kron_rate = n / kron["score+seeds"] if kron else None

    def scores(name):
        p = work / f"{name}.npy"
        return np.load(p) if p.is_file() else None

    exact_ref = scores("kronfluence-exact")
    lowrank_ref = scores("kronfluence-fp32")
    for m in METHODS:
        r = results.get(m)
        if r is None:
            continue
        if "failed" in r:
            rows.append(f"| {m} | failed: {r['failed'][:120]} |" + " |" * 8)
            continue
        t = r["times"]
        rate, with_seeds, fit = _rates(t, args)
        if "score_per_ex" in t:
            note = f"{args.subset} examples timed"
            if m == "paper-recipe":
                note += "; K-FAC fitted by gdig"
        elif "score+seeds" in t:
            note = f"{args.exact_seeds} seeds" if m == "kronfluence-exact" else ""
        else:
            note = f"seeds {t['seeds']:.1f} s ({t['seeds'] / s:.3f} s/seed)"
        vs = f"{with_seeds / kron_rate:.2f}" if kron_rate and m != "kronfluence-exact" else ""
        agree = ""
        ours = scores(m) if m.startswith("gdig") or m == "kronfluence-fp32" else None
        if ours is not None:
            parts = []
            for ref, label in ((lowrank_ref, "kf r32"), (exact_ref, "kf exact")):
                if m == "kronfluence-fp32" and label == "kf r32":
                    continue
                if ref is not None:
                    a = agreement(ours[:, : ref.shape[1]], ref)
                    parts.append(
                        f"{label}: {a['spearman_pairs']:.3f} / {a['spearman_mean']:.3f} / "
                        f"{a['sign_agree']:.3f} / {a['top10_overlap']:.2f}"
                    )
            agree = "<br>".join(parts)
        rows.append(
            f"| {m} | {fit:.1f} | {_f(rate)} | {with_seeds:.2f} | {vs} | "
            f"{r['peak_mib']:.0f} | {agree} | {note} |"
            if fit is not None
            else f"| {m} | | {_f(rate)} | {with_seeds:.2f} | {vs} | {r['peak_mib']:.0f} | "
            f"{agree} | {note} |"
        )
    runs = "; ".join(
        f"{r['date']} ({r['methods'].replace(',', ', ')}; 1-min load {r['load'][0]:.1f} -> "
        f"{r['load'][1]:.1f})"
        for r in results["_runs"]
    )
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_ops import machine_description

    marker = _marker(args.model)
    layers = next(
        (r["layers"] for r in results.values() if isinstance(r, dict) and r.get("layers")), ""
    )
    model_flag = "" if args.model == "smollm2" else f" --model {args.model}"
    title = "" if args.model == "smollm2" else f", {MODELS[args.model].split(' (')[0]}"
    head = [
        f"<!-- {marker}: start (generated by benchmarks/peers.py) -->",
        f"## The peers side by side{title} (benchmarks/peers.py{model_flag})",
        "",
        f"Machine: {machine_description('cpu').split(';')[0]}. Runs: {runs}, with "
        f"`python benchmarks/peers.py{model_flag} --seeds {s} --candidates {n} --subset "
        f"{args.subset}` "
        "(and `--methods` for a rerun of some).",
        "",
        f"{MODELS[args.model]}, {layers or 'the default tracked layers'}, S = {s} Tatoeba "
        "zh-en seeds, "
        f"N = {n} candidates (the next {n} pairs), factors fitted on the N candidates, batch "
        f"{args.batch_size}, rank {RANK}. Each method in its own process; peak = its VmHWM "
        "(model and imports included). Candidates/s: `score` = the scoring pass alone, "
        "`score+seeds` = with the S seeds prepared too (what kronfluence's one call does); "
        "`x kf` = score+seeds against kronfluence fp32. Agreement with kronfluence "
        "(its rank-32 run over all seeds; its exact run over the first "
        f"{args.exact_seeds}): Spearman over pairs / Spearman of the per-candidate mean / "
        "sign agreement / top-10 % overlap.",
        "",
        "| method | fit s | score cand/s | score+seeds cand/s | x kf | peak MiB | agreement "
        "(pairs / mean / sign / top 10 %) | notes |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    return "\n".join(head + rows + [f"<!-- {marker}: end -->"]) + "\n"


def _f(x) -> str:
    return "" if x is None else f"{x:.2f}"


def write_section(path: Path, text: str, marker: str = "peers") -> None:
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    start, end = f"<!-- {marker}: start", f"<!-- {marker}: end -->"
    if start in old and end in old:
        a, b = old.index(start), old.index(end) + len(end) + 1
        new = old[:a] + text + old[b:]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    main()
