"""Splitting a training set over federated clients: IID, label-skewed Dirichlet(alpha), or correlated with the
clients' devices (weak devices hold classes the strong ones lack)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedspine_ray.config import ConfigError, PartitionConfig


def partition_indices(
    labels: np.ndarray,
    num_clients: int,
    config: PartitionConfig,
    seed: int,
    capacity: Sequence[float] | None = None,
) -> list[np.ndarray]:
    """Return one index array per client; every sample goes to exactly one client.

    Dirichlet partitioning draws, per label, client proportions from Dir(alpha) (small alpha -> each
    client sees few labels, the usual non-IID benchmark of Hsu et al. 2019). Draws are repeated until every
    client holds ``min_samples_per_client`` samples so no actor starts with an empty dataset.
    ``device_correlated`` needs ``capacity``, one number per client (its device's sustained FLOP/s, the
    capability the strategies rank devices by): see :func:`device_correlated_parts`.
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
    if config.kind == "device_correlated":
        if capacity is None or len(capacity) != num_clients:
            raise ConfigError(
                "partition.kind: device_correlated needs each client's device capability (one per client); "
                "fix: call partition_indices with capacity=[...] (the server passes the devices' FLOP/s)"
            )
        parts = device_correlated_parts(labels, capacity, config, rng)
        short = min(len(p) for p in parts)
        if short < config.min_samples_per_client:
            raise ConfigError(
                f"partition.min_samples_per_client: a device_correlated client got {short} samples; lower "
                "it, raise data.max_train_samples or lower partition.weak_classes"
            )
        return parts
    for _ in range(1000):
        parts = _dirichlet_once(labels, num_clients, config.alpha, rng)
        if min(len(p) for p in parts) >= config.min_samples_per_client:
            return parts
    raise ConfigError(
        f"partition.alpha: Dirichlet({config.alpha}) could not give every client "
        f"{config.min_samples_per_client} samples in 1000 draws; raise alpha or lower min_samples_per_client"
    )


def weak_clients(capacity: Sequence[float], weak_fraction: float) -> list[int]:
    """The weak tier: the ``max(1, min(n - 1, round(weak_fraction * n)))`` clients of lowest capability.

    Ordered by capability, ties by client id (so two clients of one device class are ordered the same way
    every time); at least one client in each tier.
    """
    n = len(capacity)
    count = max(1, min(n - 1, int(round(weak_fraction * n))))
    order = sorted(range(n), key=lambda cid: (float(capacity[cid]), cid))
    return sorted(order[:count])


def weak_only_classes(labels: np.ndarray, weak_classes: int) -> list[int]:
    """The classes only the weak tier holds: the ``weak_classes`` highest class ids present in ``labels``."""
    present = sorted(int(c) for c in np.unique(labels))
    if weak_classes >= len(present):
        raise ConfigError(
            f"partition.weak_classes: {weak_classes} of the {len(present)} classes would leave the strong "
            f"devices no data; fix: set it to at most {len(present) - 1}"
        )
    return present[len(present) - weak_classes :]


def device_correlated_parts(
    labels: np.ndarray, capacity: Sequence[float], config: PartitionConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    """``partition.kind: device_correlated``: the weak devices' data holds classes the strong ones lack.

    Definition: clients are ranked by ``capacity`` (their device's sustained FLOP/s); the lowest
    ``weak_fraction`` of them form the weak tier (:func:`weak_clients`). The ``weak_classes`` highest class
    ids are weak-only (:func:`weak_only_classes`: with Rotten Tomatoes' ``fresh`` = 0, ``rotten`` = 1 and one
    weak class, only weak devices hold rotten reviews; with the tweets' negative / neutral / positive, only
    they hold positive tweets). Every example of a weak-only class goes to a weak client, every other example
    to any client; within those eligible clients examples are dealt out in a seeded random order, as evenly
    as possible (IID within the tier). A method that leaves the weak devices out of training (because the
    model does not fit them) never sees the weak-only classes: per-class accuracy shows what their data
    contributes (``test_accuracy_class_<label>``).
    """
    num_clients = len(capacity)
    weak = weak_clients(capacity, config.weak_fraction)
    exclusive = set(weak_only_classes(labels, config.weak_classes))
    everyone = list(range(num_clients))
    buckets: list[list[int]] = [[] for _ in range(num_clients)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        eligible = weak if int(label) in exclusive else everyone
        start = int(rng.integers(len(eligible)))  # which eligible client gets the first of an uneven split
        for k, chunk in enumerate(np.array_split(members, len(eligible))):
            buckets[eligible[(start + k) % len(eligible)]].extend(chunk.tolist())
    return [np.sort(np.array(bucket, dtype=np.int64)) for bucket in buckets]


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
