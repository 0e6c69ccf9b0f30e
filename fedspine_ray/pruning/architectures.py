"""Per-architecture adapters: where the prunable units of a transformer block live.

Everything else in :mod:`fedspine_ray.pruning` is architecture-agnostic and only talks to a
:class:`LayerSpec`, which lists, for one block, which ``nn.Linear`` modules carry an attention unit or
an MLP channel, along which axis (0 = output rows, 1 = input columns) and how many consecutive
rows/columns one unit spans.  Adding a new family (Mistral, Qwen2, ...) means adding one adapter.

Units:
* BERT: one attention unit = one head (``head_dim`` rows of query/key/value, ``head_dim`` columns of
  ``attention.output.dense``).
* LLaMA (GQA): one attention unit = one KV group = one k/v head plus its ``n_rep`` query heads, so the
  query/KV ratio that ``repeat_kv`` relies on is preserved after pruning.
* MLP channel = one intermediate channel (LLaMA: gate/up row + down column; BERT: intermediate.dense
  row + output.dense column).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

ROWS = 0
COLS = 1


@dataclass(frozen=True)
class SliceSpec:
    """One Linear touched by a unit: ``width`` consecutive indices per unit along ``axis``."""

    name: str  # module name relative to the block (e.g. "self_attn.q_proj")
    axis: int  # ROWS (output features, bias shrinks too) or COLS (input features)
    width: int


@dataclass(frozen=True)
class LayerSpec:
    """Prunable structure of one transformer block (a view on the live module, sizes are current)."""

    index: int
    prefix: str  # full module name of the block, e.g. "model.layers.3"
    block: nn.Module
    attention: tuple[SliceSpec, ...]
    mlp: tuple[SliceSpec, ...]
    n_units: int
    n_channels: int
    head_dim: int
    heads_per_unit: int  # query heads per attention unit (1 for BERT, n_rep for LLaMA GQA)


def unwrap_linear(module: nn.Module) -> nn.Linear:
    """Return the underlying ``nn.Linear`` of a (possibly PEFT-wrapped) module."""
    while not isinstance(module, nn.Linear) and hasattr(module, "base_layer"):
        module = module.base_layer
    if not isinstance(module, nn.Linear):
        raise TypeError(f"expected an nn.Linear, got {type(module).__name__}")
    return module


def _plain_root(model: nn.Module) -> tuple[nn.Module, str]:
    """Strip a PEFT wrapper so module names are the plain HF names; return (root, name prefix)."""
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        return model.get_base_model(), "base_model.model."
    return model, ""


class ArchAdapter:
    """Locates blocks and describes their units for one model family."""

    name: str = ""

    def matches(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        raise NotImplementedError

    def layer_spec(self, model: nn.Module, index: int, prefix: str, block: nn.Module) -> LayerSpec:
        raise NotImplementedError

    def set_layer_sizes(self, block: nn.Module, n_units: int, spec: LayerSpec) -> None:
        """Update non-weight attributes forward() (or introspection) reads after pruning."""

    def specs(self, model: nn.Module) -> list[LayerSpec]:
        return [self.layer_spec(model, i, p, b) for i, (p, b) in enumerate(self.blocks(model))]


def _find_blocks(model: nn.Module, suffix: str) -> list[tuple[str, nn.Module]]:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and (name == suffix or name.endswith("." + suffix)):
            return [(f"{name}.{i}", b) for i, b in enumerate(mod)]
    raise ValueError(f"no ModuleList named *{suffix} found")


class LlamaAdapter(ArchAdapter):
    """LLaMA-style decoder (q/k/v/o_proj + gated MLP); also fits Mistral/Qwen2-shaped blocks."""

    name = "llama"

    def matches(self, model: nn.Module) -> bool:
        return any(n.endswith("self_attn.q_proj") for n, _ in model.named_modules()) and any(
            n.endswith("mlp.gate_proj") for n, _ in model.named_modules()
        )

    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return _find_blocks(model, "layers")

    def layer_spec(self, model: nn.Module, index: int, prefix: str, block: nn.Module) -> LayerSpec:
        attn = block.self_attn
        head_dim = int(attn.head_dim)
        n_rep = int(attn.num_key_value_groups)
        k_out = unwrap_linear(attn.k_proj).out_features
        n_units = k_out // head_dim
        n_channels = unwrap_linear(block.mlp.gate_proj).out_features
        qw = n_rep * head_dim
        return LayerSpec(
            index=index,
            prefix=prefix,
            block=block,
            attention=(
                SliceSpec("self_attn.q_proj", ROWS, qw),
                SliceSpec("self_attn.k_proj", ROWS, head_dim),
                SliceSpec("self_attn.v_proj", ROWS, head_dim),
                SliceSpec("self_attn.o_proj", COLS, qw),
            ),
            mlp=(
                SliceSpec("mlp.gate_proj", ROWS, 1),
                SliceSpec("mlp.up_proj", ROWS, 1),
                SliceSpec("mlp.down_proj", COLS, 1),
            ),
            n_units=n_units,
            n_channels=n_channels,
            head_dim=head_dim,
            heads_per_unit=n_rep,
        )

    def set_layer_sizes(self, block: nn.Module, n_units: int, spec: LayerSpec) -> None:
        # forward() reshapes with -1 heads and only reads head_dim/num_key_value_groups (unchanged);
        # these attributes are informational for callers that inspect the module.
        block.self_attn.num_key_value_heads = n_units
        block.self_attn.num_heads = n_units * spec.heads_per_unit


class BertAdapter(ArchAdapter):
    """BERT-style encoder (attention.self.{query,key,value}, attention.output.dense, intermediate, output)."""

    name = "bert"

    def matches(self, model: nn.Module) -> bool:
        return any(n.endswith("attention.self.query") for n, _ in model.named_modules())

    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return _find_blocks(model, "encoder.layer")

    def layer_spec(self, model: nn.Module, index: int, prefix: str, block: nn.Module) -> LayerSpec:
        sa = block.attention.self
        head_dim = int(sa.attention_head_size)
        n_units = unwrap_linear(sa.query).out_features // head_dim
        n_channels = unwrap_linear(block.intermediate.dense).out_features
        return LayerSpec(
            index=index,
            prefix=prefix,
            block=block,
            attention=(
                SliceSpec("attention.self.query", ROWS, head_dim),
                SliceSpec("attention.self.key", ROWS, head_dim),
                SliceSpec("attention.self.value", ROWS, head_dim),
                SliceSpec("attention.output.dense", COLS, head_dim),
            ),
            mlp=(
                SliceSpec("intermediate.dense", ROWS, 1),
                SliceSpec("output.dense", COLS, 1),
            ),
            n_units=n_units,
            n_channels=n_channels,
            head_dim=head_dim,
            heads_per_unit=1,
        )

    def set_layer_sizes(self, block: nn.Module, n_units: int, spec: LayerSpec) -> None:
        sa = block.attention.self
        sa.num_attention_heads = n_units
        sa.all_head_size = n_units * spec.head_dim


ADAPTERS: dict[str, Callable[[], ArchAdapter]] = {"llama": LlamaAdapter, "bert": BertAdapter}


def get_adapter(model: nn.Module) -> ArchAdapter:
    """Pick the adapter whose module layout matches ``model`` (PEFT wrappers are looked through)."""
    root, _ = _plain_root(model)
    for factory in ADAPTERS.values():
        adapter = factory()
        if adapter.matches(root):
            return adapter
    raise ValueError(f"unsupported architecture for structured pruning: {type(root).__name__}")


def layer_specs(model: nn.Module) -> list[LayerSpec]:
    """Current per-block specs of ``model`` (names are plain HF names, PEFT prefix stripped)."""
    root, _ = _plain_root(model)
    return get_adapter(root).specs(root)


def get_linear(spec: LayerSpec, s: SliceSpec) -> nn.Linear:
    return unwrap_linear(spec.block.get_submodule(s.name))
