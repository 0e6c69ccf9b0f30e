"""Client runtimes: where the virtual clients live, one actor each or pooled per device class, and whether
the cluster can host them.

The round loop talks to clients only through per-client *handles* (``handle.fit.remote(...)``), so it
does not care how clients are placed:

- ``dedicated``: one Ray actor per client, holding its data and model. Right for a real cluster where
  each client is a device; it does not scale on one box (each MiniLM client process holds ~1 GB).
- ``pooled``: per device class, a few :class:`PoolWorker` actors that carry that class's Ray resources
  (CPUs, memory, custom ``fedspine_<class>`` resource) and run that class's virtual clients one after
  another. A worker holds one :class:`~fedspine_ray.runtime.client.FederatedClient` per client it serves
  (fixed affinity: a client always runs on the same worker), all sharing one copy of the static tensors
  and of every base received whole, so a worker's memory grows with the *distinct* models it holds, not
  with its clients. Flower's simulation pools identical actors; here each pool has its class's resources.

Placement never changes what is computed: client state (held sub-model, static tensors) is kept per
client id, the server's bytes accounting and simulated clock do not look at it, and every fit sets the
same torch thread count in both modes, so the same seed gives the same metrics.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError

from fedspine_ray.data.tokens import TokenizedSplit
from fedspine_ray.devices.population import ClientDevice
from fedspine_ray.runtime.client import FederatedClient, ProcessModels

log = logging.getLogger("fedspine_ray.pool")

PLACEMENTS = ("dedicated", "pooled")


class PoolWorker:
    """One process serving many virtual clients of one device class, one call at a time."""

    def __init__(self, shards: dict[int, TokenizedSplit], threads: dict[int, int]) -> None:
        self.state = ProcessModels()
        self.clients = {
            cid: FederatedClient(cid, shard, threads[cid], shared=self.state) for cid, shard in shards.items()
        }

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "clients": sorted(self.clients)}

    def call(self, client_id: int, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``FederatedClient.<method>`` for one virtual client: every per-client method works pooled."""
        client = self.clients.get(client_id)
        if client is None:
            raise KeyError(
                f"client {client_id} is not served by this pool worker (it serves {sorted(self.clients)})"
            )
        if method.startswith("_"):
            raise AttributeError(f"{method!r} is private; call a public FederatedClient method")
        return getattr(client, method)(*args, **kwargs)

    def shared_bases(self) -> int:
        """How many distinct bases received whole this worker keeps for its clients (tests, benchmarks)."""
        return len(self.state.whole)


class _PooledMethod:
    def __init__(self, worker: Any, client_id: int, method: str) -> None:
        self._worker, self._client_id, self._method = worker, client_id, method

    def remote(self, *args: Any, **kwargs: Any) -> ray.ObjectRef:
        return self._worker.call.remote(self._client_id, self._method, *args, **kwargs)


class PooledClientHandle:
    """Looks like a client's actor handle (``handle.fit.remote(...)``) but routes to its pool worker."""

    def __init__(self, runtime: PooledRuntime, client_id: int) -> None:
        self._runtime, self._client_id = runtime, client_id

    def __getattr__(self, method: str) -> _PooledMethod:
        if method.startswith("_"):
            raise AttributeError(method)
        return _PooledMethod(self._runtime.worker_of(self._client_id), self._client_id, method)


class DedicatedRuntime:
    """One actor per client (``clients.placement: dedicated``); a dead actor's client is dropped."""

    mode = "dedicated"

    def __init__(
        self, run_id: str, devices: Sequence[ClientDevice], shards: dict[int, TokenizedSplit]
    ) -> None:
        self.handles = [
            ray.remote(FederatedClient)
            .options(max_restarts=0, name=f"fedspine-{run_id}-client-{d.client_id}", **d.actor_options())
            .remote(d.client_id, shards[d.client_id], d.torch_threads)
            for d in devices
        ]
        self._failed: set[int] = set()

    @property
    def actors(self) -> list[Any]:
        return list(self.handles)

    def client_failed(self, client_id: int) -> bool:
        """Record a dead actor; True: the client is gone for good (its device is its process)."""
        self._failed.add(client_id)
        return True

    def recover(self) -> set[int]:
        """Clients whose held state was lost since the last call (dead actors are not replaced)."""
        lost, self._failed = self._failed, set()
        return lost

    def shutdown(self) -> None:
        for actor in self.handles:
            ray.kill(actor)


class PooledRuntime:
    """Per device class, ``size`` :class:`PoolWorker` actors with that class's resources."""

    mode = "pooled"

    def __init__(
        self,
        run_id: str,
        devices: Sequence[ClientDevice],
        shards: dict[int, TokenizedSplit],
        pool_sizes: dict[str, int],
    ) -> None:
        self.run_id = run_id
        self.devices = {d.client_id: d for d in devices}
        self.shards = shards
        #: slot (class, index) -> client ids it serves; fixed for the run (affinity keeps state exact).
        self.slot_clients = pool_slots(devices, pool_sizes)
        self.slot_of = {cid: slot for slot, ids in self.slot_clients.items() for cid in ids}
        self.generation: dict[tuple[str, int], int] = {}
        self.workers: dict[tuple[str, int], Any] = {slot: self._start(slot) for slot in self.slot_clients}
        self.handles = [PooledClientHandle(self, d.client_id) for d in devices]
        self._failed_slots: set[tuple[str, int]] = set()

    def _start(self, slot: tuple[str, int]) -> Any:
        gen = self.generation[slot] = self.generation.get(slot, -1) + 1
        ids = self.slot_clients[slot]
        device = self.devices[ids[0]]
        name = f"fedspine-{self.run_id}-pool-{slot[0]}-{slot[1]}" + (f"-r{gen}" if gen else "")
        return (
            ray.remote(PoolWorker)
            .options(max_restarts=0, name=name, **device.actor_options())
            .remote(
                {cid: self.shards[cid] for cid in ids}, {cid: self.devices[cid].torch_threads for cid in ids}
            )
        )

    @property
    def actors(self) -> list[Any]:
        return list(self.workers.values())

    def worker_of(self, client_id: int) -> Any:
        return self.workers[self.slot_of[client_id]]

    def client_failed(self, client_id: int) -> bool:
        """Record that a client's worker died; the client is only out for this round (False)."""
        self._failed_slots.add(self.slot_of[client_id])
        return False

    def recover(self) -> set[int]:
        """Replace every worker that died since the last call; returns the clients whose state it held."""
        lost: set[int] = set()
        for slot in sorted(self._failed_slots):
            log.warning(
                "pool worker %s/%d died; replacing it (its %d clients re-download their model next time)",
                slot[0],
                slot[1],
                len(self.slot_clients[slot]),
            )
            ray.kill(self.workers[slot])
            self.workers[slot] = self._start(slot)
            lost.update(self.slot_clients[slot])
        self._failed_slots = set()
        return lost

    def shutdown(self) -> None:
        for actor in self.workers.values():
            ray.kill(actor)


def pool_slots(devices: Sequence[ClientDevice], sizes: dict[str, int]) -> dict[tuple[str, int], list[int]]:
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


def worker_devices(devices: Sequence[ClientDevice], sizes: dict[str, int]) -> list[ClientDevice]:
    """One representative device per pool worker: what the workers request from the cluster in total."""
    by_id = {d.client_id: d for d in devices}
    return [by_id[ids[0]] for ids in pool_slots(devices, sizes).values()]


def resolve_placement(placement: str, devices: Sequence[ClientDevice], available: dict[str, float]) -> str:
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
    devices: Sequence[ClientDevice], available: dict[str, float], size: int | None
) -> dict[str, int]:
    """Workers per device class: ``size`` each, or from the cluster's CPUs.

    Auto: about one worker per CPU in the cluster, shared among classes in proportion to their client
    counts, at least one per class, never more workers than a class has clients or its CPU request allows.
    More workers than cores only time-slice and each costs a process (~0.5 GB with MiniLM).
    """
    counts: dict[str, int] = defaultdict(int)
    cpus: dict[str, float] = {}
    for device in devices:
        counts[device.device_class] += 1
        cpus[device.device_class] = device.num_cpus
    if size is not None:
        return {name: min(size, n) for name, n in counts.items()}
    budget = max(1, math.floor(available.get("CPU", 1)))
    total = sum(counts.values())
    return {
        name: max(
            1,
            min(n, round(budget * n / total), math.floor(available.get("CPU", 1) / cpus[name] / len(counts))),
        )
        for name, n in counts.items()
    }


def wait_until_ready(actors: Sequence[Any], timeout: float) -> None:
    """Block until every actor answers ``ready()``; a timeout names the settings that fix it."""
    try:
        ray.get([actor.ready.remote() for actor in actors], timeout=timeout)
    except GetTimeoutError:
        raise RuntimeError(
            f"client actors did not start within runtime.actor_start_timeout_s={timeout}s: the cluster lacks "
            "the CPUs/memory/custom resources they request; fix: lower clients.resources (or the device "
            "profiles' num_cpus/memory), use clients.placement: pooled, or add nodes"
        ) from None


def overlap_by_default(clock: str, available: dict[str, float]) -> bool:
    """``runtime.overlap_evaluation: null``: overlap where the server's evaluation gets a core of its own.

    Measured on 2 cores (benchmarks/README.md): with the client processes holding every CPU, overlapping
    gains nothing, at normal priority (the evaluation time-sliced with the clients, the round took as long)
    or at idle priority (the clients left only 3-5 % of the CPU unused, so the evaluation ran after them),
    and the next round's state held during the evaluation raised peak memory by 0.2-0.5 GiB. So the overlap
    is on by default only where the clients leave at least one CPU unrequested. Never with ``clock: wall``,
    whose measured device times the server's work would slow.
    """
    return clock != "wall" and available.get("CPU", 0.0) >= 1.0


def check_cluster_fits(devices: list[ClientDevice], what: str = "client actors") -> None:
    """Fail fast, naming the shortfall, when the cluster cannot host every client actor at once."""
    available = ray.cluster_resources()
    needed_cpus = sum(d.num_cpus for d in devices)
    if needed_cpus > available.get("CPU", 0) + 1e-9:
        raise RuntimeError(
            f"{len(devices)} {what} request {needed_cpus:g} CPUs in total but the Ray cluster has "
            f"{available.get('CPU', 0):g}; fix: lower clients.resources[].num_cpus (or the device profiles' "
            "ray_num_cpus), use clients.placement: pooled (or a smaller clients.pool_size), or add nodes"
        )
    missing = sorted({d.ray_resource for d in devices if d.ray_resource and d.ray_resource not in available})
    if missing:
        raise RuntimeError(
            f"no node advertises the custom resource {missing[0]!r} that its device class pins actors to; fix: "
            "declare it on the node types of your cluster YAML (see clusters/README.md), or let fedspine start "
            "the local Ray itself (it declares them)"
        )


def start_clients(
    run_id: str,
    devices: Sequence[ClientDevice],
    shards: dict[int, TokenizedSplit],
    placement: str,
    pool_size: int | None,
    timeout: float,
) -> DedicatedRuntime | PooledRuntime:
    """Create the clients' processes for ``clients.placement`` and wait until every one answers.

    ``runtime.handles[cid]`` has the client's methods (``.fit.remote(...)``) in both modes: an actor of its
    own (dedicated) or a proxy to the pool worker serving it (pooled).
    """
    available = ray.cluster_resources()
    mode = resolve_placement(placement, devices, available)
    runtime: DedicatedRuntime | PooledRuntime
    if mode == "dedicated":
        check_cluster_fits(list(devices))
        runtime = DedicatedRuntime(run_id, devices, shards)
    else:
        sizes = pool_sizes(devices, available, pool_size)
        check_cluster_fits(worker_devices(devices, sizes), what="pool workers")
        runtime = PooledRuntime(run_id, devices, shards, sizes)
    wait_until_ready(runtime.actors, timeout)
    return runtime
