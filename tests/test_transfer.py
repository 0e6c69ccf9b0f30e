"""Static-tensor caching: a download without embeddings/norms is restored exactly from the device's cache."""

import torch

from fedspine_ray.messages import model_bytes
from fedspine_ray.modeling.loading import head_module_names, load_classifier
from fedspine_ray.runtime.transfer import collect_static, restore_static, static_tensor_names, strip_static


def test_stripped_download_restores_to_the_same_model(tiny_llama_dir):
    model = load_classifier(tiny_llama_dir, num_labels=2, seed=0).eval()
    names = static_tensor_names(model, head_module_names(model))
    assert "model.embed_tokens.weight" in names
    assert not any(".self_attn." in n and n.endswith("proj.weight") for n in names)  # block Linears change
    assert not any(n.startswith("score.") for n in names)  # the head changes every round
    stripped = strip_static(model, names)
    assert model_bytes(stripped) < model_bytes(model) / 2  # the embedding table is most of a tiny model
    assert model.model.embed_tokens.weight.numel() > 0  # the original is untouched
    restore_static(stripped, collect_static(model, names))
    inputs = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(stripped.eval()(input_ids=inputs).logits, model(input_ids=inputs).logits)
