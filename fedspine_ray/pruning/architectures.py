"""Per-architecture adapters: where the prunable units of a transformer block live.

Everything else in :mod:`fedspine_ray.pruning` is architecture-agnostic and only talks to a
:class:`LayerSpec`, which lists, for one block, which ``nn.Linear`` modules carry an attention unit or
an MLP channel, along which axis (0 = output rows, 1 = input columns) and how many rows/columns one unit
spans (:class:`SliceSpec`; a fused Linear such as Phi-3's ``qkv_proj`` lists the unit's share of each of
its consecutive parts).

Two adapters cover the families transformers loads for us:

* :class:`DecoderAdapter`: any causal decoder whose blocks hold self-attention with q/k/v/o projections
  (separate, or Phi-3's fused ``qkv_proj``) and a gated (gate/up/down, or fused ``gate_up_proj``) or plain
  (up/down, fc1/fc2, c_fc/c_proj) MLP. It is matched by module structure and the attention module's own
  ``head_dim`` / ``num_key_value_groups`` (config values as fallback), not by ``model_type``; the module
  names that differ between families are the small tables :data:`ATTENTION_NAMES` and :data:`MLP_NAMES`.
  LLaMA, Mistral, Qwen2, Qwen3, Gemma, Gemma-2, Gemma-3 (text), Phi-3, StarCoder2, Granite, ... (see
  :data:`DECODER_FAMILIES`, the families whose pruned forward is verified to equal the masked model).
* :class:`BertAdapter`: BERT-style encoders (``attention.self.{query,key,value}``).

Units:
* BERT: one attention unit = one head (``head_dim`` rows of query/key/value, ``head_dim`` columns of
  ``attention.output.dense``).
* Decoders (MHA/GQA/MQA): one attention unit = one KV group = one k/v head plus its ``n_rep`` query heads,
  so the query/KV ratio that ``repeat_kv`` relies on is preserved after pruning. With a single KV head
  (MQA) there is one unit per layer, which cannot be removed: :func:`attention_prunable` is ``False`` and
  the planners/sparsity targets prune MLP channels only. Per-head q/k norms (Qwen3, Gemma-3 ``q_norm`` /
  ``k_norm`` of size ``head_dim``) are shared by all heads and need no change.
* MLP channel = one intermediate channel (gate/up row(s) + down column; BERT: intermediate.dense row +
  output.dense column).

This module imports torch lazily: :func:`check_prunable_config` and the family tables are usable by the
launching process (preflight), which must not import torch or transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only; torch is imported lazily at run time
    import torch
    from torch import nn

ROWS = 0
COLS = 1

#: Config attribute recording the per-layer sizes before any pruning (written by ``apply_plan``).
ORIGINAL_ATTR = "fedspine_original_shapes"


def _nn():
    from torch import nn

    return nn


# --------------------------------------------------------------------------------------------------
# Slices and layer specs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceSpec:
    """One Linear touched by a unit: ``width`` indices per unit along ``axis``.

    ``parts`` is empty for a plain Linear, whose unit ``u`` owns indices ``[u * width, (u + 1) * width)``.
    A fused Linear stores several projections one after the other along ``axis`` (Phi-3 ``qkv_proj``:
    all query rows, then all key rows, then all value rows; ``gate_up_proj``: gate rows, then up rows);
    ``parts`` lists the unit's width in each of them (``sum(parts) == width``), and unit ``u`` owns
    ``[offset_j + u * parts[j], offset_j + (u + 1) * parts[j])`` of each part ``j``, where
    ``offset_j = n_units * sum(parts[:j])``. Use :meth:`indices` rather than ``expand_units(units, width)``.
    """

    name: str  # module name relative to the block (e.g. "self_attn.q_proj")
    axis: int  # ROWS (output features, bias shrinks too) or COLS (input features)
    width: int
    parts: tuple[int, ...] = ()

    @property
    def fused(self) -> bool:
        return len(self.parts) > 1

    @property
    def segments(self) -> tuple[int, ...]:
        """Per-unit widths of the consecutive parts (one part for a plain Linear)."""
        return self.parts or (self.width,)

    def indices(self, units: torch.Tensor | list[int], n_units: int) -> torch.Tensor:
        """Row/column indices along ``axis`` of ``units`` in a Linear that holds ``n_units`` units.

        The result lists, part by part, the chosen units' indices in the order given, so selecting them
        yields the same fused layout with ``len(units)`` units. ``n_units`` only matters when fused.
        """
        import torch

        units = torch.as_tensor(units, dtype=torch.long)
        out, offset = [], 0
        for w in self.segments:
            if w == 1:
                out.append(units + offset)
            else:
                out.append(
                    (offset + units[:, None] * w + torch.arange(w, device=units.device)[None, :]).reshape(-1)
                )
            offset += n_units * w
        return out[0] if len(out) == 1 else torch.cat(out)


def unit_view(t: torch.Tensor, s: SliceSpec, n_units: int) -> torch.Tensor:
    """Reshape a weight (or row bias, or their gradient) so dim 0 indexes units: ``[n_units, rest]``.

    Row ``u`` holds every element of ``t`` that belongs to unit ``u`` (all parts of a fused Linear).
    """
    import torch

    if s.axis == COLS:
        t = t.t()
    if not s.fused:
        return t.reshape(n_units, -1)
    chunks, offset = [], 0
    for w in s.segments:
        chunks.append(t[offset : offset + n_units * w].reshape(n_units, -1))
        offset += n_units * w
    return torch.cat(chunks, dim=1)


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
    heads_per_unit: int  # query heads per attention unit (1 for BERT, n_rep for GQA decoders)


def unwrap_linear(module: nn.Module) -> nn.Linear:
    """Return the underlying ``nn.Linear`` of a (possibly PEFT-wrapped) module."""
    nn = _nn()
    while not isinstance(module, nn.Linear) and hasattr(module, "base_layer"):
        module = module.base_layer
    if not isinstance(module, nn.Linear):
        raise TypeError(f"expected an nn.Linear, got {type(module).__name__}")
    return module


def _is_linear(module: Any) -> bool:
    nn = _nn()
    while module is not None and not isinstance(module, nn.Linear) and hasattr(module, "base_layer"):
        module = module.base_layer
    return isinstance(module, nn.Linear)


def _plain_root(model: nn.Module) -> tuple[nn.Module, str]:
    """Strip a PEFT wrapper so module names are the plain HF names; return (root, name prefix)."""
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        return model.get_base_model(), "base_model.model."
    return model, ""


# --------------------------------------------------------------------------------------------------
# Unsupported architectures
# --------------------------------------------------------------------------------------------------


class UnsupportedArchitectureError(ValueError):
    """The model (or config) has no block layout the pruning engine knows; the message is one line."""


def _model_type_of(obj: Any) -> str:
    config = getattr(obj, "config", obj)
    if isinstance(config, Mapping):
        return str(config.get("model_type", "") or "")
    return str(getattr(config, "model_type", "") or "")


def unsupported_message(model_type: str, reason: str = "") -> str:
    """The one-line error for an architecture the engine cannot prune."""
    reason = " ".join(str(reason).split())  # always one line
    why = f" ({reason})" if reason else ""
    shown = ", ".join(PRIMARY_DECODER_FAMILIES)
    return (
        f"architecture {model_type or 'unknown'!r} cannot be pruned{why}: supported: bert and "
        f"LLaMA-style decoders ({shown}, ...; {len(DECODER_FAMILIES)} decoder families in all, see "
        "fedspine_ray.pruning.architectures.DECODER_FAMILIES); run unpruned methods (fedit, hetlora, "
        "flexlora) on it with pruning.target_sparsity: 0"
    )


# --------------------------------------------------------------------------------------------------
# Adapters
# --------------------------------------------------------------------------------------------------


class ArchAdapter:
    """Locates blocks and describes their units for one model family."""

    name: str = ""

    def matches(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        raise NotImplementedError

    def layer_spec(self, model: nn.Module, index: int, prefix: str, block: nn.Module) -> LayerSpec:
        raise NotImplementedError

    def set_layer_sizes(
        self, block: nn.Module, n_units: int, spec: LayerSpec, n_channels: int | None = None
    ) -> None:
        """Update non-weight attributes forward() (or introspection) reads after pruning."""

    def lora_targets(self, model: nn.Module) -> dict[str, list[str]]:
        """Leaf module names of the prunable Linears: ``{"attention": [...], "mlp": [...]}``."""
        spec = self.specs(model)[0]
        return {
            "attention": [s.name.rpartition(".")[2] for s in spec.attention],
            "mlp": [s.name.rpartition(".")[2] for s in spec.mlp],
        }

    def specs(self, model: nn.Module) -> list[LayerSpec]:
        return [self.layer_spec(model, i, p, b) for i, (p, b) in enumerate(self.blocks(model))]


def _find_blocks(model: nn.Module, suffix: str) -> list[tuple[str, nn.Module]]:
    nn = _nn()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and (name == suffix or name.endswith("." + suffix)):
            return [(f"{name}.{i}", b) for i, b in enumerate(mod)]
    raise ValueError(f"no ModuleList named *{suffix} found")


#: Attribute names of a decoder block's self-attention module, tried in order.
ATTENTION_MODULES = ("self_attn", "attn", "self_attention")
#: Attribute names of a decoder block's MLP module, tried in order.
MLP_MODULES = ("mlp", "feed_forward")
#: Attention projections, by layout: separate q/k/v + output, or fused qkv + output.
ATTENTION_NAMES: dict[str, tuple[str, ...]] = {
    "split": ("q_proj", "k_proj", "v_proj", "o_proj"),  # llama, mistral, qwen2/3, gemma*, starcoder2, ...
    "split_dense": ("q_proj", "k_proj", "v_proj", "dense"),  # phi (phi-1/1.5/2)
    "fused": ("qkv_proj", "o_proj"),  # phi3 / phi-3.5 / phi-4-mini
}
#: MLP projections, by layout: gated (gate/up rows, down columns), fused gated, or plain (up rows, down cols).
MLP_NAMES: dict[str, tuple[str, ...]] = {
    "gated": ("gate_proj", "up_proj", "down_proj"),
    "fused_gated": ("gate_up_proj", "down_proj"),  # phi3, glm
    "plain": ("up_proj", "down_proj"),  # nemotron, arcee, apertus
    "plain_fc": ("fc1", "fc2"),  # phi
    "plain_c": ("c_fc", "c_proj"),  # starcoder2
}


@dataclass(frozen=True)
class DecoderLayout:
    """Where one decoder block keeps its projections (module names relative to the block)."""

    attention_module: str
    attention: str  # key of ATTENTION_NAMES
    mlp_module: str
    mlp: str  # key of MLP_NAMES

    @property
    def attention_names(self) -> tuple[str, ...]:
        return ATTENTION_NAMES[self.attention]

    @property
    def mlp_names(self) -> tuple[str, ...]:
        return MLP_NAMES[self.mlp]


def decoder_layout(block: nn.Module) -> DecoderLayout | None:
    """The :class:`DecoderLayout` of ``block``, or ``None`` when it is not a known decoder block."""
    attention = mlp = None
    for attn_name in ATTENTION_MODULES:
        attn = getattr(block, attn_name, None)
        if attn is None:
            continue
        for key, names in ATTENTION_NAMES.items():
            if all(_is_linear(getattr(attn, n, None)) for n in names):
                attention = (attn_name, key)
                break
        if attention:
            break
    if attention is None:
        return None
    for mlp_name in MLP_MODULES:
        mod = getattr(block, mlp_name, None)
        if mod is None:
            continue
        for key, names in MLP_NAMES.items():
            if all(_is_linear(getattr(mod, n, None)) for n in names):
                mlp = (mlp_name, key)
                break
        if mlp:
            break
    if mlp is None:
        return None
    return DecoderLayout(attention[0], attention[1], mlp[0], mlp[1])


def _text_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        try:
            return config.get_text_config()
        except Exception:  # noqa: BLE001 - fall back to the top-level config
            return config
    return config


def _linear_params(module: nn.Module) -> set[int]:
    ids: set[int] = set()
    for m in module.modules():
        if _is_linear(m) and not hasattr(m, "base_layer"):
            ids.update(id(p) for p in m.parameters())
    return ids


class DecoderAdapter(ArchAdapter):
    """Causal decoders with q/k/v/o (or fused qkv/o) attention and a gated or plain MLP, by structure.

    LLaMA, Mistral, Qwen2/3, Gemma/Gemma-2/Gemma-3, Phi-3 (fused ``qkv_proj`` / ``gate_up_proj``), Phi,
    StarCoder2, ... (:data:`DECODER_FAMILIES` lists the verified ones). Attention units are KV groups.
    """

    name = "decoder"

    # ---------------------------------------------------------------- discovery
    def _candidates(self, model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
        nn = _nn()
        found = []
        for name, mod in model.named_modules():
            if isinstance(mod, nn.ModuleList) and len(mod) and all(decoder_layout(b) for b in mod):
                found.append((name, list(mod)))
        return found

    def matches(self, model: nn.Module) -> bool:
        return self.why_not(model) is None

    def why_not(self, model: nn.Module) -> str | None:
        """``None`` when ``model`` fits this adapter, else a short reason (for the error message)."""
        denied = DENIED_FAMILIES.get(_model_type_of(_text_config(model))) or DENIED_FAMILIES.get(
            _model_type_of(model)
        )
        if denied:
            return denied
        candidates = self._candidates(model)
        if not candidates:
            return "no blocks with q/k/v/o attention projections and a gate/up/down or up/down MLP"
        if len(candidates) > 1:
            return f"several stacks of decoder blocks ({', '.join(n for n, _ in candidates)})"
        name, blocks = candidates[0]
        try:
            for i, block in enumerate(blocks):
                self._check_block(model, block)
                self.layer_spec(model, i, f"{name}.{i}", block)
        except (ValueError, AttributeError, TypeError, ZeroDivisionError) as exc:
            return str(exc)
        return None

    def _check_block(self, model: nn.Module, block: nn.Module) -> None:
        """Reject blocks whose extra parameters depend on the pruned widths (full-width q/k norms, sinks)."""
        layout = decoder_layout(block)
        attn = block.get_submodule(layout.attention_module)
        mlp = block.get_submodule(layout.mlp_module)
        head_dim = self._head_dim(model, attn)
        linear = _linear_params(attn)
        for pname, p in attn.named_parameters():
            if id(p) in linear or "lora_" in pname:
                continue
            if p.numel() != head_dim:  # q_norm/k_norm over all heads (OLMo-2), attention sinks, ...
                raise ValueError(
                    f"attention parameter {pname} of size {tuple(p.shape)} spans the heads (head_dim {head_dim})"
                )
            if any(part.isdigit() for part in pname.split(".")):  # one norm per head (StableLM qk_layernorm)
                raise ValueError(f"attention parameter {pname} belongs to one head (per-head module list)")
        linear = _linear_params(mlp)
        for pname, p in mlp.named_parameters():
            if id(p) not in linear and "lora_" not in pname:
                raise ValueError(f"MLP parameter {pname} of size {tuple(p.shape)} is not a projection")

    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        candidates = self._candidates(model)
        if len(candidates) != 1:
            raise UnsupportedArchitectureError(
                unsupported_message(_model_type_of(model), self.why_not(model) or "")
            )
        name, blocks = candidates[0]
        return [(f"{name}.{i}", b) for i, b in enumerate(blocks)]

    # ---------------------------------------------------------------- sizes
    @staticmethod
    def _head_dim(model: nn.Module, attn: nn.Module) -> int:
        head_dim = getattr(attn, "head_dim", None)
        if head_dim is None:
            config = getattr(attn, "config", None) or _text_config(model)
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return int(head_dim)

    @staticmethod
    def _n_rep(model: nn.Module, attn: nn.Module) -> int:
        n_rep = getattr(attn, "num_key_value_groups", None)
        if n_rep is None:
            config = _text_config(model)
            kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
            n_rep = config.num_attention_heads // kv
        return int(n_rep)

    def layer_spec(self, model: nn.Module, index: int, prefix: str, block: nn.Module) -> LayerSpec:
        layout = decoder_layout(block)
        if layout is None:
            raise ValueError(f"{prefix} is not a decoder block")
        a, m = layout.attention_module, layout.mlp_module
        attn = block.get_submodule(a)
        head_dim = self._head_dim(model, attn)
        n_rep = self._n_rep(model, attn)
        qw = n_rep * head_dim
        names = layout.attention_names
        if layout.attention == "fused":
            qkv = unwrap_linear(getattr(attn, names[0]))
            n_units, rest = divmod(qkv.out_features, (n_rep + 2) * head_dim)
            q_out = n_units * qw
            attention = (
                SliceSpec(f"{a}.{names[0]}", ROWS, qw + 2 * head_dim, parts=(qw, head_dim, head_dim)),
                SliceSpec(f"{a}.{names[1]}", COLS, qw),
            )
        else:
            k_out = unwrap_linear(getattr(attn, names[1])).out_features
            n_units, rest = divmod(k_out, head_dim)
            q_out = unwrap_linear(getattr(attn, names[0])).out_features
            rest += abs(q_out - n_units * qw) + abs(
                unwrap_linear(getattr(attn, names[2])).out_features - k_out
            )
            attention = (
                SliceSpec(f"{a}.{names[0]}", ROWS, qw),
                SliceSpec(f"{a}.{names[1]}", ROWS, head_dim),
                SliceSpec(f"{a}.{names[2]}", ROWS, head_dim),
                SliceSpec(f"{a}.{names[3]}", COLS, qw),
            )
        o_in = unwrap_linear(getattr(attn, names[-1])).in_features
        if rest or n_units < 1 or o_in != q_out:
            raise ValueError(
                f"{prefix}: attention projections do not split into {n_rep} query heads per KV head of "
                f"head_dim {head_dim}"
            )
        mlp = block.get_submodule(m)
        mnames = layout.mlp_names
        if layout.mlp == "fused_gated":
            n_channels, odd = divmod(unwrap_linear(getattr(mlp, mnames[0])).out_features, 2)
            mlp_slices = (
                SliceSpec(f"{m}.{mnames[0]}", ROWS, 2, parts=(1, 1)),
                SliceSpec(f"{m}.{mnames[1]}", COLS, 1),
            )
        else:
            n_channels, odd = unwrap_linear(getattr(mlp, mnames[0])).out_features, 0
            mlp_slices = tuple(SliceSpec(f"{m}.{n}", ROWS, 1) for n in mnames[:-1]) + (
                SliceSpec(f"{m}.{mnames[-1]}", COLS, 1),
            )
            odd += sum(abs(unwrap_linear(getattr(mlp, n)).out_features - n_channels) for n in mnames[1:-1])
        if odd or unwrap_linear(getattr(mlp, mnames[-1])).in_features != n_channels:
            raise ValueError(f"{prefix}: MLP projections disagree on the intermediate size")
        return LayerSpec(
            index=index,
            prefix=prefix,
            block=block,
            attention=attention,
            mlp=mlp_slices,
            n_units=n_units,
            n_channels=n_channels,
            head_dim=head_dim,
            heads_per_unit=n_rep,
        )

    def set_layer_sizes(
        self, block: nn.Module, n_units: int, spec: LayerSpec, n_channels: int | None = None
    ) -> None:
        # forward() reshapes with -1 heads and reads head_dim/num_key_value_groups (unchanged); Phi-3 also
        # reads self.num_key_value_heads and self.config.num_attention_heads (to split the fused qkv),
        # so the attention module gets a per-layer view of the config with this layer's head counts.
        attn = block.get_submodule(spec.attention[0].name.rpartition(".")[0])
        heads = n_units * spec.heads_per_unit
        attn.num_key_value_heads = n_units
        attn.num_heads = heads
        if hasattr(attn, "num_attention_heads"):
            attn.num_attention_heads = heads
        config = getattr(attn, "config", None)
        if config is not None and hasattr(config, "num_attention_heads"):
            base = config.base_config if isinstance(config, LayerConfigView) else config
            sizes = {"num_attention_heads": heads, "num_key_value_heads": n_units}
            same = all(getattr(base, k, None) == v for k, v in sizes.items())
            attn.config = base if same else LayerConfigView(base, sizes)
        if n_channels is not None:
            mlp = block.get_submodule(spec.mlp[0].name.rpartition(".")[0])
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = n_channels


class LayerConfigView:
    """A block's view of the model's shared HF config, with this layer's own (pruned) head counts.

    Attribute reads fall through to the shared config except for the overridden sizes, so settings
    changed on ``model.config`` later (``_attn_implementation``, ...) still reach the layer. Writes go to
    the shared config unless the name is overridden. Picklable and deep-copyable (the shared config is
    copied once through the memo).
    """

    __slots__ = ("base_config", "overrides")

    def __init__(self, base_config: Any, overrides: Mapping[str, Any]) -> None:
        object.__setattr__(self, "base_config", base_config)
        object.__setattr__(self, "overrides", dict(overrides))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in LayerConfigView.__slots__:
            raise AttributeError(name)
        overrides = object.__getattribute__(self, "overrides")
        if name in overrides:
            return overrides[name]
        return getattr(object.__getattribute__(self, "base_config"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.overrides:
            self.overrides[name] = value
        else:
            setattr(self.base_config, name, value)

    def __reduce__(self):
        return (LayerConfigView, (self.base_config, self.overrides))

    def __repr__(self) -> str:
        return f"LayerConfigView({type(self.base_config).__name__}, {self.overrides})"


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

    def set_layer_sizes(
        self, block: nn.Module, n_units: int, spec: LayerSpec, n_channels: int | None = None
    ) -> None:
        sa = block.attention.self
        sa.num_attention_heads = n_units
        sa.all_head_size = n_units * spec.head_dim

    def lora_targets(self, model: nn.Module) -> dict[str, list[str]]:
        return {k: list(v) for k, v in BERT_LORA_TARGETS.items()}


#: PEFT matches name suffixes: BERT's leaf name "dense" alone would also hit the pooler, so it is qualified.
BERT_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "attention": ("query", "key", "value", "attention.output.dense"),
    "mlp": ("intermediate.dense", "output.dense"),
}


#: Backwards-compatible name: the LLaMA adapter is now the structural decoder adapter.
LlamaAdapter = DecoderAdapter

ADAPTERS: dict[str, Callable[[], ArchAdapter]] = {"decoder": DecoderAdapter, "bert": BertAdapter}


def get_adapter(model: nn.Module) -> ArchAdapter:
    """Pick the adapter whose module layout matches ``model`` (PEFT wrappers are looked through).

    Raises :class:`UnsupportedArchitectureError` (a ``ValueError``) with a one-line message otherwise.
    """
    root, _ = _plain_root(model)
    decoder = DecoderAdapter()
    reason = decoder.why_not(root)
    if reason is None:
        return decoder
    bert = BertAdapter()
    if bert.matches(root):
        return bert
    raise UnsupportedArchitectureError(unsupported_message(_model_type_of(root), reason))


def layer_specs(model: nn.Module) -> list[LayerSpec]:
    """Current per-block specs of ``model`` (names are plain HF names, PEFT prefix stripped)."""
    root, _ = _plain_root(model)
    return get_adapter(root).specs(root)


def get_linear(spec: LayerSpec, s: SliceSpec) -> nn.Linear:
    return unwrap_linear(spec.block.get_submodule(s.name))


def lora_target_names(model: nn.Module) -> dict[str, list[str]]:
    """LoRA target suffixes of ``model``'s prunable Linears: ``{"attention": [...], "mlp": [...]}``.

    Leaf names as PEFT's ``target_modules`` takes them (e.g. ``["qkv_proj", "o_proj"]`` and
    ``["gate_up_proj", "down_proj"]`` for Phi-3; BERT's shared ``dense`` is qualified).
    """
    root, _ = _plain_root(model)
    return get_adapter(root).lora_targets(root)


def attention_prunable(model: nn.Module) -> bool:
    """Whether attention units can be removed: every block has (had, before pruning) more than one.

    ``False`` for multi-query attention (one KV head: removing the unit would remove all attention); the
    planners and :func:`~fedspine_ray.pruning.stats.ratio_for_sparsity` then prune MLP channels only.
    """
    root, _ = _plain_root(model)
    recorded = getattr(getattr(root, "config", None), ORIGINAL_ATTR, None)
    units = recorded["attention_units"] if recorded else [s.n_units for s in layer_specs(root)]
    return bool(units) and all(int(u) > 1 for u in units)


# --------------------------------------------------------------------------------------------------
# Config-level checks (no torch, no transformers: usable in preflight before Ray starts)
# --------------------------------------------------------------------------------------------------

#: Decoder families (HF ``model_type``) whose pruned forward equals the masked dense model with
#: transformers 5.24 (logits and greedy generation), mapped to their (attention, MLP) layout keys
#: (:data:`ATTENTION_NAMES`, :data:`MLP_NAMES`). :data:`TESTED_DECODER_FAMILIES` are covered by
#: tests/test_decoder_families.py; the others were verified once on a tiny random model of the config
#: class's defaults. Other families are still accepted at run time when their modules match, but
#: :func:`check_prunable_config` rejects them unless ``strict=False``.
DECODER_FAMILIES: dict[str, tuple[str, str]] = {
    # unit-tested
    "llama": ("split", "gated"),
    "mistral": ("split", "gated"),
    "qwen2": ("split", "gated"),
    "qwen3": ("split", "gated"),
    "gemma2": ("split", "gated"),
    "gemma3_text": ("split", "gated"),
    "phi3": ("fused", "fused_gated"),
    "starcoder2": ("split", "plain_c"),
    # verified once on default configs
    "arcee": ("split", "plain"),
    "cohere": ("split", "gated"),
    "cohere2": ("split", "gated"),
    "cwm": ("split", "gated"),
    "ernie4_5": ("split", "gated"),
    "exaone": ("split", "gated"),
    "exaone4": ("split", "gated"),
    "falcon_h1": ("split", "gated"),
    "gemma": ("split", "gated"),
    "glm": ("split", "fused_gated"),
    "glm4": ("split", "fused_gated"),
    "granite": ("split", "gated"),
    "helium": ("split", "gated"),
    "hunyuan_v1_dense": ("split", "gated"),
    "hyperclovax": ("split", "gated"),
    "internlm3": ("split", "gated"),
    "iquestcoder": ("split", "gated"),
    "jais2": ("split", "plain"),
    "ministral": ("split", "gated"),
    "ministral3": ("split", "gated"),
    "nanochat": ("split", "plain_fc"),
    "nemotron": ("split", "plain"),
    "olmo": ("split", "gated"),
    "phi": ("split_dense", "plain_fc"),
    "seed_oss": ("split", "gated"),
    "smollm3": ("split", "gated"),
    "stablelm": ("split", "gated"),
    "vaultgemma": ("split", "gated"),
}
TESTED_DECODER_FAMILIES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "phi3",
    "starcoder2",
)
#: Shown in the error message, in this order.
PRIMARY_DECODER_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3")
#: Encoder families handled by :class:`BertAdapter` (others with BERT's module names match at run time).
ENCODER_FAMILIES: tuple[str, ...] = ("bert",)
#: Known families that cannot be pruned, with the reason (shown in the error). Those whose modules look
#: prunable are refused at run time too.
DENIED_FAMILIES: dict[str, str] = {
    "gpt2": "fused c_attn projection and Conv1D layers",
    "diffllama": "differential attention pairs its heads",
    "gemma3n": "per-layer inputs and KV sharing across layers",
    "gemma3n_text": "per-layer inputs and KV sharing across layers",
    "gemma4": "KV sharing across layers and per-layer head sizes",
    "gemma4_text": "KV sharing across layers and per-layer head sizes",
    "gemma4_unified": "KV sharing across layers and per-layer head sizes",
    "gemma4_unified_text": "KV sharing across layers and per-layer head sizes",
    "olmo2": "q_norm/k_norm span all heads",
    "olmo3": "q_norm/k_norm span all heads",
    "bitnet": "attn_sub_norm spans all heads",
    "gpt_oss": "mixture-of-experts MLP and attention sinks",
    "mixtral": "mixture-of-experts MLP",
    "qwen2_moe": "mixture-of-experts MLP",
    "qwen3_moe": "mixture-of-experts MLP",
    "falcon": "fused query_key_value projection",
    "gpt_neox": "fused query_key_value projection",
    "bloom": "fused query_key_value projection",
}
#: Families that are prunable only for some config values: model_type -> (predicate on a getter, reason).
CONFIG_CONDITIONS: dict[str, tuple[Callable[[Callable[[str], Any]], bool], str]] = {
    "cohere": (lambda get: not get("use_qk_norm"), "use_qk_norm: q_norm/k_norm hold one weight per head"),
    "stablelm": (lambda get: not get("qk_layernorm"), "qk_layernorm: one norm per head"),
}


def _config_getter(config: Any) -> Callable[[str], Any]:
    if isinstance(config, Mapping):
        return config.get
    return lambda key: getattr(config, key, None)


def _text_config_of(config: Any) -> Any:
    """The text backbone's config of a (possibly multimodal) config, dict or PretrainedConfig."""
    get = _config_getter(config)
    text = get("text_config")
    return text if text is not None and get("num_hidden_layers") is None else config


def check_prunable_config(config: Any, strict: bool = True) -> None:
    """Raise :class:`UnsupportedArchitectureError` (one line) unless the model of ``config`` can be pruned.

    ``config`` is a ``config.json`` dict or a ``PretrainedConfig``; no weights are loaded and neither
    torch nor transformers is imported, so preflight can call it before Ray starts. A multimodal config
    is judged by its ``text_config``. Accepted: :data:`DECODER_FAMILIES` and :data:`ENCODER_FAMILIES`
    (subject to :data:`CONFIG_CONDITIONS`); with ``strict=False`` also any other family not in
    :data:`DENIED_FAMILIES` (the run-time structural check, :func:`get_adapter`, then decides).
    """
    top_type = _model_type_of(config)
    text = _text_config_of(config)
    model_type = _model_type_of(text) or top_type
    if model_type in ENCODER_FAMILIES:
        return
    denied = DENIED_FAMILIES.get(model_type) or DENIED_FAMILIES.get(top_type)
    if denied or (strict and model_type not in DECODER_FAMILIES):
        raise UnsupportedArchitectureError(unsupported_message(top_type or model_type, denied or ""))
    condition = CONFIG_CONDITIONS.get(model_type)
    if condition is not None and not condition[0](_config_getter(text)):
        raise UnsupportedArchitectureError(unsupported_message(model_type, condition[1]))


@dataclass(frozen=True)
class ConfigShapes:
    """Sizes of a (decoder or BERT) model read from its config, without building it."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    tie_word_embeddings: bool

    @property
    def heads_per_unit(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def attention_units(self) -> int:
        """Prunable attention units per layer (KV groups; BERT: heads)."""
        return self.num_key_value_heads

    @property
    def attention_width(self) -> int:
        """Query/output-projection width ``num_attention_heads * head_dim`` (not always hidden_size)."""
        return self.num_attention_heads * self.head_dim

    @property
    def attention_prunable(self) -> bool:
        return self.attention_units > 1


def config_shapes(config: Any) -> ConfigShapes:
    """:class:`ConfigShapes` of a config dict or ``PretrainedConfig`` (the text backbone of a multimodal one).

    Missing values fall back to the usual HF defaults: ``num_key_value_heads`` = ``num_attention_heads``
    (BERT: always), ``head_dim`` = ``hidden_size // num_attention_heads`` (families without a ``head_dim``
    attribute: Qwen2, Phi-3, StarCoder2, ...), ``tie_word_embeddings`` = True. ``save_pretrained`` keeps
    every model-specific key in ``config.json``, so a dict read from it gives the same answer as the
    loaded config.
    """
    text = _text_config_of(config)
    get = _config_getter(text)
    model_type = _model_type_of(text)
    hidden = int(get("hidden_size") or get("n_embd") or 0)
    heads = int(get("num_attention_heads") or get("n_head") or 0)
    kv = heads if model_type in ENCODER_FAMILIES else int(get("num_key_value_heads") or heads)
    head_dim = int(get("head_dim") or (hidden // heads if heads else 0))
    tie = get("tie_word_embeddings")
    return ConfigShapes(
        model_type=model_type,
        num_layers=int(get("num_hidden_layers") or get("n_layer") or 0),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        intermediate_size=int(get("intermediate_size") or get("n_inner") or 0),
        tie_word_embeddings=True if tie is None else bool(tie),
    )


def config_lora_targets(config: Any) -> dict[str, list[str]]:
    """LoRA target suffixes ``{"attention": [...], "mlp": [...]}`` for a supported config, without a model."""
    check_prunable_config(config)
    model_type = _model_type_of(_text_config_of(config)) or _model_type_of(config)
    if model_type in ENCODER_FAMILIES:
        return {k: list(v) for k, v in BERT_LORA_TARGETS.items()}
    attention, mlp = DECODER_FAMILIES[model_type]
    return {"attention": list(ATTENTION_NAMES[attention]), "mlp": list(MLP_NAMES[mlp])}
