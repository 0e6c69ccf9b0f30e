"""Checks on what clients send back, so one broken device cannot poison the global model."""

from __future__ import annotations

from collections.abc import Mapping

import torch


class UpdateError(ValueError):
    """A client update is malformed (wrong shape, NaN/Inf, missing module); the message names which."""


def validate_factors(
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    expected_shapes: Mapping[str, tuple[int, int]],
    rank: int,
    client_id: int | str = "?",
) -> None:
    """Raise :class:`UpdateError` unless every targeted module has finite ``A [rank, in]``, ``B [out, rank]``."""
    missing = sorted(set(expected_shapes) - set(factors))
    extra = sorted(set(factors) - set(expected_shapes))
    if missing or extra:
        name = (missing or extra)[0]
        problem = "is missing" if missing else "is not a LoRA target of the sent model"
        raise UpdateError(f"client {client_id}: adapter for module {name!r} {problem}; the update is dropped")
    for name, (out_features, in_features) in expected_shapes.items():
        a, b = factors[name]
        if tuple(a.shape) != (rank, in_features) or tuple(b.shape) != (out_features, rank):
            raise UpdateError(
                f"client {client_id}: module {name!r} has A{tuple(a.shape)} B{tuple(b.shape)}, expected "
                f"A{(rank, in_features)} B{(out_features, rank)}; the client trained a different sub-model or rank"
            )
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise UpdateError(
                f"client {client_id}: module {name!r} contains NaN/Inf (training diverged); the update is "
                "dropped — lower training.lr"
            )
