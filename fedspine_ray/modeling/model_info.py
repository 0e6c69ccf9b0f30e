"""What a model file *is*, read without torch or transformers: its ``config.json`` or its GGUF header.

The launcher checks, before Ray starts, whether a pruning method can prune the model a config names
(:mod:`fedspine_ray.launch.preflight`). Loading the model for that would take seconds to minutes and import
torch into the launching process; the family is all the check needs. A Hugging Face directory says it in
``config.json``; a GGUF file says it in its header's ``general.architecture``, which transformers maps to a
``model_type`` when it dequantises the file (``modeling_gguf_pytorch_utils.load_gguf_checkpoint``). The
header is parsed here directly: ``gguf.GGUFReader`` also indexes every tensor (seconds for a 100 MB file),
while the two keys needed come first in the file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["GGUF_ARCHITECTURE_TYPES", "gguf_metadata", "gguf_model_type", "model_config_dict"]

#: GGUF ``general.architecture`` values whose transformers ``model_type`` differs (transformers 5.24's GGUF
#: loader); every other architecture name is its model_type. ``llama`` with "mistral" in ``general.name``
#: becomes ``mistral``.
GGUF_ARCHITECTURE_TYPES: dict[str, str] = {
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "gpt-oss": "gpt_oss",
    "minimax-m2": "minimax_m2",
    "gemma3": "gemma3_text",
    "gemma4": "gemma4_text",
    "t5encoder": "t5",
}

# GGUF value types (gguf.GGUFValueType): struct format of the scalar ones; 8 = string, 9 = array.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


def _read(handle: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _string(handle: BinaryIO) -> str:
    return handle.read(_read(handle, "<Q")).decode("utf-8", errors="replace")


def _value(handle: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        return _read(handle, _SCALARS[kind])
    if kind == _STRING:
        return _string(handle)
    if kind == _ARRAY:
        item, count = _read(handle, "<I"), _read(handle, "<Q")
        return [_value(handle, item) for _ in range(count)]
    raise ValueError(f"unknown GGUF value type {kind}")


def gguf_metadata(path: str | Path, keys: tuple[str, ...] = ("general.architecture", "general.name")) -> dict:
    """The header values of ``keys`` (those present), reading only as far as the last one found."""
    wanted, found = set(keys), {}
    with Path(path).open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file (bad magic)")
        version = _read(handle, "<I")
        count_fmt = "<I" if version == 1 else "<Q"
        _read(handle, count_fmt)  # tensor count
        for _ in range(_read(handle, count_fmt)):
            key = _string(handle)
            value = _value(handle, _read(handle, "<I"))
            if key in wanted:
                found[key] = value
                if len(found) == len(wanted):
                    break
    return found


def gguf_model_type(path: str | Path) -> str:
    """The transformers ``model_type`` a GGUF file dequantises to (see :data:`GGUF_ARCHITECTURE_TYPES`)."""
    meta = gguf_metadata(path)
    arch = str(meta.get("general.architecture", ""))
    if arch == "llama" and "mistral" in str(meta.get("general.name", "")).lower():
        return "mistral"
    return GGUF_ARCHITECTURE_TYPES.get(arch, arch)


def model_config_dict(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a model directory, or ``{"model_type": ...}`` from a GGUF file's header.

    A GGUF header carries sizes too, but under per-architecture key names; the family is what the
    pruning check (``pruning.architectures.check_prunable_config``) needs first.
    """
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        return {"model_type": gguf_model_type(path)}
    config = path / "config.json"
    if not config.is_file():
        return {}
    return dict(json.loads(config.read_text()))
