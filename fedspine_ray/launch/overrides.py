"""Command-line pieces shared by ``fedspine run``, ``fedspine sweep`` and the benchmark scripts."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

import yaml

from fedspine_ray.config import ConfigError, yaml_error_summary


def add_override_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--set KEY=VALUE`` (repeatable): dotted config overrides, collected in ``args.overrides``."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help_text
    )


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["training.rounds=3", ...]`` -> ``{"training.rounds": 3}``; values are read as YAML."""
    overrides = {}
    for text in items:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set training.rounds=3")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"--set {key.strip()}: value {value!r} is not valid YAML: {yaml_error_summary(exc)}"
            ) from None
    return overrides
