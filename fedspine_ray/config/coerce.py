"""Plain data (parsed YAML, ``--set`` values) -> the frozen config dataclasses, with one-line errors.

Generic over dataclasses: the type hints of a section say what each value must be, so adding a field to
a section needs no code here. Errors name the dotted field (``training.rounds: expected an integer``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from fedspine_ray.config.errors import ConfigError
from fedspine_ray.config.names import MOVED_FIELDS

__all__ = ["build_dataclass", "moved_error"]


def moved_error(dotted: str) -> None:
    """Raise the one-line error for a field that moved (:data:`~fedspine_ray.config.names.MOVED_FIELDS`)."""
    new = MOVED_FIELDS.get(dotted)
    if new is not None:
        section, _, leaf = new.partition(".")
        raise ConfigError(
            f"{dotted}: moved to {new} (round policies apply to every method); fix: write {section}: {{{leaf}: ...}}"
            f" or --set {new}=..."
        )


def build_dataclass(cls: type, raw: Any, where: str = "") -> Any:
    """An instance of dataclass ``cls`` from ``raw`` (a mapping), sections built recursively.

    Unknown keys and values of the wrong type raise :class:`ConfigError`; missing keys take defaults.
    Range checks are the sections' own ``validate`` (called by the caller on the finished object).
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        moved_error(f"{prefix}{unknown[0]}")
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field; known fields are {sorted(known)}")
    kwargs = {}
    for name, value in raw.items():
        dotted = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, dotted)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc).split(": ", 1)[-1])
        raise ConfigError(f"{where}: {'; or '.join(errors)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)  # YAML reads 2e-3 as a string
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {where}")  # programming error, not user error
