"""The one error type of configuration, and the one way every check raises it."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the field and a fix.

    The CLI prints it as one line and exits with code 2 before Ray starts, so every check that can fail
    on user input raises this (not a bare ``ValueError``) and starts its message with the dotted field.
    """


def require(condition: bool, field_name: str, problem: str) -> None:
    """Raise :class:`ConfigError` ``"<field_name>: <problem>"`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{field_name}: {problem}")
