"""How many client processes a run starts and what each asks Ray for: the pure sizing rules (no Ray, no torch).

``clients.placement`` decides whether every client gets its own actor (``dedicated``) or a device class's
clients share a few pool workers (``pooled``). The server applies these rules when it creates the clients
(:mod:`fedspine_ray.runtime.pool`), and a sweep's driver applies the *same* rules to size a trial's placement
group (:mod:`fedspine_ray.launch.tune`), so the group holds exactly the processes the run will start. They
live here, beside :class:`~fedspine_ray.devices.population.ClientDevice`, because both callers need them and
the driver must not import the runtime (which imports torch).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

from fedspine_ray.devices.population import ClientDevice

PLACEMENTS = ("dedicated", "pooled")


def pool_slots(devices: Sequence[ClientDevice], sizes: Mapping[str, int]) -> dict[tuple[str, int], list[int]]:
    """Fixed client -> worker affinity: a class's clients, by id, dealt round-robin over its workers."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for device in devices:
        by_class[device.device_class].append(device.client_id)
    slots: dict[tuple[str, int], list[int]] = {}
    for name, ids in sorted(by_class.items()):
        size = max(1, min(sizes.get(name, 1), len(ids)))
        for position, cid in enumerate(sorted(ids)):
            slots.setdefault((name, position % size), []).append(cid)
    return slots


def worker_devices(devices: Sequence[ClientDevice], sizes: Mapping[str, int]) -> list[ClientDevice]:
    """One representative device per pool worker: what the workers request from the cluster in total."""
    by_id = {d.client_id: d for d in devices}
    return [by_id[ids[0]] for ids in pool_slots(devices, sizes).values()]


def resolve_placement(placement: str, devices: Sequence[ClientDevice], available: Mapping[str, float]) -> str:
    """``auto`` becomes ``dedicated`` when the cluster can host one actor per client, else ``pooled``.

    Hosting means both: the clients' Ray requests fit the cluster, and there is a whole CPU per client
    process. Device profiles ask for fractions of a CPU to model slow hardware, so eight clients "fit" on
    two cores by request while eight processes (each with its own model copy) only time-slice those cores
    and multiply memory; a pool of a few workers then runs the same fits at least as fast in a fraction of
    the memory (benchmarks/README.md, issue 8), with the same metrics.
    """
    if placement in PLACEMENTS:
        return placement
    cpus = available.get("CPU", 0)
    needed_cpus = sum(d.num_cpus for d in devices)
    needed_memory = sum(d.actor_options().get("memory", 0) for d in devices)
    fits = (
        needed_cpus <= cpus + 1e-9
        and needed_memory <= available.get("memory", math.inf)
        and len(devices) <= math.floor(cpus + 1e-9)
    )
    return "dedicated" if fits else "pooled"


def pool_sizes(
    devices: Sequence[ClientDevice], available: Mapping[str, float], size: int | Mapping[str, int] | None
) -> dict[str, int]:
    """Workers per device class: ``size`` each, ``size[class]`` for the classes a mapping names, or from the
    cluster's CPUs (``None``, and the classes a mapping leaves out); never more than a class has clients.

    Auto: about one worker per CPU in the cluster, shared among classes in proportion to their client
    counts, at least one per class, never more workers than a class has clients or its CPU request allows.
    More workers than cores only time-slice and each costs a process (~0.5 GB with MiniLM).
    """
    counts: dict[str, int] = defaultdict(int)
    cpus: dict[str, float] = {}
    for device in devices:
        counts[device.device_class] += 1
        cpus[device.device_class] = device.num_cpus
    if isinstance(size, int):
        return {name: min(size, n) for name, n in counts.items()}
    chosen = dict(size or {})
    budget = max(1, math.floor(available.get("CPU", 1)))
    total = sum(counts.values())
    return {
        name: min(n, chosen[name])
        if name in chosen
        else max(
            1,
            min(n, round(budget * n / total), math.floor(available.get("CPU", 1) / cpus[name] / len(counts))),
        )
        for name, n in counts.items()
    }


def client_processes(
    devices: Sequence[ClientDevice],
    placement: str,
    pool_size: int | Mapping[str, int] | None,
    available: Mapping[str, float],
) -> tuple[str, list[ClientDevice]]:
    """``(mode, devices)``: the placement a run resolves to and one device per client process it starts.

    Dedicated: every client is a process. Pooled: one representative device per pool worker (a worker asks
    Ray for its class's options). ``available`` is the cluster's resources (``ray.cluster_resources()``),
    which is what the server reads when it creates the clients.
    """
    mode = resolve_placement(placement, devices, available)
    if mode == "dedicated":
        return mode, list(devices)
    return mode, worker_devices(devices, pool_sizes(devices, available, pool_size))
