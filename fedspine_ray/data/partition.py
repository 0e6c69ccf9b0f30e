"""Splitting a training set over federated clients: IID or label-skewed Dirichlet(alpha)."""

from __future__ import annotations

import numpy as np

from fedspine_ray.config import ConfigError, PartitionConfig


def partition_indices(
    labels: np.ndarray, num_clients: int, config: PartitionConfig, seed: int
) -> list[np.ndarray]:
    """Return one index array per client; every sample goes to exactly one client.

    Dirichlet partitioning draws, per label, client proportions from Dir(alpha) (small alpha -> each
    client sees few labels, the usual non-IID benchmark of Hsu et al. 2019). Draws are repeated until every
    client holds ``min_samples_per_client`` samples so no actor starts with an empty dataset.
    """
    needed = num_clients * config.min_samples_per_client
    if len(labels) < needed:
        raise ConfigError(
            f"partition.min_samples_per_client: {len(labels)} training samples cannot give {num_clients} "
            f"clients {config.min_samples_per_client} each; lower it or raise data.max_train_samples"
        )
    rng = np.random.default_rng(seed)
    if config.kind == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), num_clients)]
    for _ in range(1000):
        parts = _dirichlet_once(labels, num_clients, config.alpha, rng)
        if min(len(p) for p in parts) >= config.min_samples_per_client:
            return parts
    raise ConfigError(
        f"partition.alpha: Dirichlet({config.alpha}) could not give every client "
        f"{config.min_samples_per_client} samples in 1000 draws; raise alpha or lower min_samples_per_client"
    )


def _dirichlet_once(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    buckets: list[list[int]] = [[] for _ in range(num_clients)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for client, chunk in enumerate(np.split(members, cuts)):
            buckets[client].extend(chunk.tolist())
    return [np.sort(np.array(bucket, dtype=np.int64)) for bucket in buckets]


def label_histogram(labels: np.ndarray, parts: list[np.ndarray], num_labels: int) -> np.ndarray:
    """Clients x labels count matrix (for logging how non-IID a partition is)."""
    return np.stack([np.bincount(labels[p], minlength=num_labels) for p in parts])
