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
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError

from fedspine_ray.data.tokens import TokenizedSplit
from fedspine_ray.devices.placement import (  # the sizing rules, shared with the sweep driver
    PLACEMENTS,
    pool_sizes,
    pool_slots,
    resolve_placement,
    worker_devices,
)
from fedspine_ray.devices.population import ClientDevice
from fedspine_ray.messages import ClientAssignment, ClientOutcome
from fedspine_ray.runtime.client import FederatedClient, ProcessModels, ShardView, node_id

log = logging.getLogger("fedspine_ray.pool")

__all__ = [
    "PLACEMENTS",
    "ClientShards",
    "DedicatedRuntime",
    "PoolWorker",
    "PooledRuntime",
    "can_host",
    "check_cluster_fits",
    "pool_sizes",
    "pool_slots",
    "resolve_placement",
    "start_clients",
    "unplaceable_outcome",
    "worker_devices",
]


class ClientShards:
    """Every client's training shard as row indices into the one training split (built on demand).

    The server hands this to :func:`start_clients` instead of one tensor copy per client: a dedicated actor
    gets its own copy (:meth:`subset`), a pool worker one split holding only its clients' rows
    (:meth:`rows_for`), which its clients index (:class:`~.client.ShardView`). With 10,000 virtual clients
    no process builds 10,000 copies up front.
    """

    def __init__(self, split: TokenizedSplit, parts: Sequence[np.ndarray]) -> None:
        self.split, self.parts = split, list(parts)

    def __len__(self) -> int:
        return len(self.parts)

    def subset(self, client_id: int) -> TokenizedSplit:
        return self.split.subset(self.parts[client_id])

    def rows_for(self, client_ids: Sequence[int]) -> tuple[TokenizedSplit, dict[int, np.ndarray]]:
        """One split of ``client_ids``' rows, and each client's rows in it."""
        sizes = [len(self.parts[cid]) for cid in client_ids]
        rows = (
            np.concatenate([self.parts[cid] for cid in client_ids]) if client_ids else np.zeros(0, np.int64)
        )
        offsets = np.cumsum([0, *sizes])
        local = {cid: np.arange(offsets[i], offsets[i + 1]) for i, cid in enumerate(client_ids)}
        return self.split.subset(rows), local


class PoolWorker:
    """One process serving many virtual clients of one device class, one call at a time.

    A virtual client's :class:`FederatedClient` is built on its first call (most of a large population
    idles) over a :class:`~.client.ShardView` of the worker's one split: an idle virtual client costs its
    row indices; a client that trained also keeps a reference to the (shared) model it holds.
    """

    def __init__(
        self,
        split: TokenizedSplit,
        rows: dict[int, np.ndarray],
        threads: int,
        accelerator: str = "cpu",
        precision: str = "fp32",
    ) -> None:
        self.state = ProcessModels()
        self.split, self.rows, self.threads = split, rows, threads
        self.accelerator, self.precision = accelerator, precision
        self.clients: dict[int, FederatedClient] = {}

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "clients": len(self.rows), "node_id": node_id()}

    def client(self, client_id: int) -> FederatedClient:
        """The virtual client ``client_id``, built on its first call."""
        client = self.clients.get(client_id)
        if client is None:
            if client_id not in self.rows:
                raise KeyError(
                    f"client {client_id} is not served by this pool worker ({len(self.rows)} clients)"
                )
            client = FederatedClient(
                client_id,
                ShardView(self.split, self.rows[client_id]),
                self.threads,
                self.state,
                accelerator=self.accelerator,
                precision=self.precision,
            )
            self.clients[client_id] = client
        return client

    def call(self, client_id: int, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``FederatedClient.<method>`` for one virtual client: every per-client method works pooled."""
        if method.startswith("_"):
            raise AttributeError(f"{method!r} is private; call a public FederatedClient method")
        return getattr(self.client(client_id), method)(*args, **kwargs)

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


def live_nodes() -> dict[str, dict[str, float]]:
    """Node id -> total resources of every live node of the cluster."""
    return {n["NodeID"]: n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")}


def can_host(options: dict[str, Any], nodes: dict[str, dict[str, float]]) -> bool:
    """Whether some live node's *total* resources cover one actor with Ray ``options`` (CPUs, memory, GPUs
    and custom resources). A node that is merely busy still counts: its actors may finish."""
    wanted = {"CPU": options.get("num_cpus", 0), "memory": options.get("memory", 0)}
    wanted["GPU"] = options.get("num_gpus", 0)
    wanted.update(options.get("resources", {}))
    return any(all(total.get(k, 0.0) + 1e-9 >= v for k, v in wanted.items() if v) for total in nodes.values())


def unplaceable_outcome(client_id: int, num_samples: int) -> ClientOutcome:
    """The row-only outcome of a selected client that no live node can host this round (not sent)."""
    placeholder = ClientAssignment(base_key=None, rank=0, factors={}, head={})
    return ClientOutcome(client_id, placeholder, num_samples, failure="unplaceable")


class _Processes:
    """What both runtimes do with their processes: know their nodes, replace the ones lost with a node on a
    surviving node that can host them, and say which clients cannot be placed (module docstring)."""

    run_id: str
    timeout: float
    #: process key (a client id or a pool slot) -> the Ray node it runs on, from its ``ready()``
    nodes: dict[Any, str]
    generation: dict[Any, int]
    #: process keys whose process is lost and could not be started again yet
    _unplaceable: set[Any]

    def _options(self, key: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _spawn(self, key: Any, name: str) -> Any:
        raise NotImplementedError

    def _clients_of(self, key: Any) -> list[int]:
        raise NotImplementedError

    def _name(self, key: Any, kind: str) -> str:
        gen = self.generation[key] = self.generation.get(key, -1) + 1
        label = "-".join(str(part) for part in key) if isinstance(key, tuple) else str(key)
        return f"fedspine-{self.run_id}-{kind}-{label}" + (f"-r{gen}" if gen else "")

    def _node_lost(self, key: Any, wait_s: float = 2.0) -> bool:
        """Whether the process's node is gone (polled briefly: the node's death may be recorded after its
        actors' death reaches us)."""
        node = self.nodes.get(key, "")
        deadline = time.monotonic() + wait_s
        while True:
            if node and node not in live_nodes():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.25)

    def _restart(self, key: Any) -> Any | None:
        """Start ``key``'s process again where the cluster can host it; None (and unplaceable) if it cannot."""
        options = self._options(key)
        clients = self._clients_of(key)
        if not can_host(options, live_nodes()):
            if key not in self._unplaceable:
                log.warning(
                    "%d clients (%s) are unplaceable: no live node can host their process %s; they are left "
                    "out (status 'unplaceable') until a node that can joins",
                    len(clients),
                    key,
                    {k: v for k, v in options.items() if k != "max_restarts"},
                )
            self._unplaceable.add(key)
            return None
        actor = self._spawn(key, self._name(key, "pool" if isinstance(key, tuple) else "client"))
        info = self._started(actor, options)
        if info is None:
            ray.kill(actor)
            if key not in self._unplaceable:
                log.warning(
                    "process %s of %d clients did not start (runtime.actor_start_timeout_s=%gs, or every node "
                    "that could host it was lost while it started); its clients are unplaceable this round",
                    key,
                    len(clients),
                    self.timeout,
                )
            self._unplaceable.add(key)
            return None
        self.nodes[key] = info["node_id"]
        self._unplaceable.discard(key)
        log.warning("process %s of %d clients restarted on node %s", key, len(clients), info["node_id"][:12])
        return actor

    def _started(self, actor: Any, options: dict[str, Any], poll_s: float = 1.0) -> dict[str, Any] | None:
        """The started process's ``ready()`` info, or None if it fails, outlives ``self.timeout``, or no live
        node can host it any more. The last matters when a node dies unseen: a replacement asked for just
        before the cluster records the death is scheduled there, and once the node is gone Ray keeps the
        infeasible request pending, so waiting out the whole timeout would stall the round for nothing."""
        ref = actor.ready.remote()
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            done, _ = ray.wait([ref], timeout=min(poll_s, left))
            if done:
                try:
                    return ray.get(ref)
                except RayActorError:
                    return None
            if not can_host(options, live_nodes()):
                return None
        return None

    @property
    def unplaceable(self) -> set[int]:
        """Clients whose process is lost and could not be placed again (retried every round)."""
        return {cid for key in self._unplaceable for cid in self._clients_of(key)}

    def placeable(self, client_ids: Iterable[int]) -> tuple[list[int], list[int]]:
        """``client_ids`` split into those with a process and the :attr:`unplaceable` ones."""
        out = self.unplaceable
        ids = list(client_ids)
        return [c for c in ids if c not in out], [c for c in ids if c in out]


class DedicatedRuntime(_Processes):
    """One actor per client (``clients.placement: dedicated``).

    An actor lost with its node is started again on a surviving node of its class (or its client is
    unplaceable); an actor that died on a live node is not replaced and its client is dropped.
    """

    mode = "dedicated"

    def __init__(
        self, run_id: str, devices: Sequence[ClientDevice], shards: ClientShards, timeout: float = 300.0
    ) -> None:
        self.run_id, self.timeout = run_id, timeout
        self.devices = {d.client_id: d for d in devices}
        self.shards = shards
        self.nodes, self.generation, self._unplaceable = {}, {}, set()
        self.handles = [self._spawn(d.client_id, self._name(d.client_id, "client")) for d in devices]
        self._failed: set[int] = set()
        self._moved: set[int] = set()  # lost with their node: to start again elsewhere

    def _options(self, key: Any) -> dict[str, Any]:
        return self.devices[key].actor_options()

    def _clients_of(self, key: Any) -> list[int]:
        return [key]

    def _spawn(self, key: Any, name: str) -> Any:
        d = self.devices[key]
        return (
            ray.remote(FederatedClient)
            .options(max_restarts=0, name=name, **d.actor_options())
            .remote(
                d.client_id,
                self.shards.subset(d.client_id),
                d.torch_threads,
                None,
                d.accelerator,
                d.precision,
            )
        )

    @property
    def actors(self) -> list[Any]:
        return list(self.handles)

    def node_of(self, client_id: int) -> str:
        return self.nodes.get(client_id, "")

    def client_failed(self, client_id: int) -> bool:
        """Record a dead actor; True: the client is gone for good (its process crashed on a live node)."""
        self._failed.add(client_id)
        if self._node_lost(client_id):
            self._moved.add(client_id)
            return False
        return True

    def recover(self) -> set[int]:
        """Clients whose held state was lost since the last call; actors lost with their node (and earlier
        unplaceable ones) are started again where the cluster can host them."""
        lost, self._failed = self._failed, set()
        for cid in sorted(self._moved | self._unplaceable):
            actor = self._restart(cid)
            if actor is not None:
                self.handles[cid] = actor
        self._moved = set()
        return lost

    def shutdown(self) -> None:
        for actor in self.handles:
            ray.kill(actor)


class PooledRuntime(_Processes):
    """Per device class, ``size`` :class:`PoolWorker` actors with that class's resources."""

    mode = "pooled"

    def __init__(
        self,
        run_id: str,
        devices: Sequence[ClientDevice],
        shards: ClientShards,
        pool_sizes: dict[str, int],
        timeout: float = 300.0,
    ) -> None:
        self.run_id, self.timeout = run_id, timeout
        self.devices = {d.client_id: d for d in devices}
        self.shards = shards
        #: slot (class, index) -> client ids it serves; fixed for the run (affinity keeps state exact).
        self.slot_clients = pool_slots(devices, pool_sizes)
        self.slot_of = {cid: slot for slot, ids in self.slot_clients.items() for cid in ids}
        self.nodes, self.generation, self._unplaceable = {}, {}, set()
        self.workers: dict[tuple[str, int], Any] = {
            slot: self._spawn(slot, self._name(slot, "pool")) for slot in self.slot_clients
        }
        self.handles = [PooledClientHandle(self, d.client_id) for d in devices]
        self._failed_slots: set[tuple[str, int]] = set()

    def _options(self, key: Any) -> dict[str, Any]:
        return self.devices[self.slot_clients[key][0]].actor_options()

    def _clients_of(self, key: Any) -> list[int]:
        return self.slot_clients[key]

    def _spawn(self, key: Any, name: str) -> Any:
        ids = self.slot_clients[key]
        device = self.devices[ids[0]]
        split, rows = self.shards.rows_for(ids)
        return (
            ray.remote(PoolWorker)
            .options(max_restarts=0, name=name, **device.actor_options())
            .remote(split, rows, device.torch_threads, device.accelerator, device.precision)
        )

    @property
    def actors(self) -> list[Any]:
        return list(self.workers.values())

    def worker_of(self, client_id: int) -> Any:
        return self.workers[self.slot_of[client_id]]

    def node_of(self, client_id: int) -> str:
        return self.nodes.get(self.slot_of[client_id], "")

    def client_failed(self, client_id: int) -> bool:
        """Record that a client's worker died; the client is only out for this round (False)."""
        self._failed_slots.add(self.slot_of[client_id])
        return False

    def recover(self) -> set[int]:
        """Replace every worker that died since the last call (and retry unplaceable ones) on nodes that can
        host them; returns the clients whose state the dead workers held."""
        lost: set[int] = set()
        for slot in sorted(self._failed_slots):
            log.warning(
                "pool worker %s/%d died; replacing it (its %d clients re-download their model next time)",
                slot[0],
                slot[1],
                len(self.slot_clients[slot]),
            )
            ray.kill(self.workers[slot])
            lost.update(self.slot_clients[slot])
        for slot in sorted(self._failed_slots | self._unplaceable):
            worker = self._restart(slot)
            if worker is not None:
                self.workers[slot] = worker
        self._failed_slots = set()
        return lost

    def shutdown(self) -> None:
        for actor in self.workers.values():
            ray.kill(actor)


def wait_until_ready(runtime: DedicatedRuntime | PooledRuntime, timeout: float) -> None:
    """Block until every process answers ``ready()`` (recording its node); a timeout names the fix."""
    keys = (
        list(range(len(runtime.handles))) if isinstance(runtime, DedicatedRuntime) else list(runtime.workers)
    )
    try:
        infos = ray.get([actor.ready.remote() for actor in runtime.actors], timeout=timeout)
    except GetTimeoutError:
        raise RuntimeError(
            f"client actors did not start within runtime.actor_start_timeout_s={timeout}s: the cluster lacks "
            "the CPUs/memory/GPUs/custom resources they request; fix: lower clients.resources (or the device "
            "profiles' num_cpus/memory/num_gpus), use clients.placement: pooled, or add nodes"
        ) from None
    runtime.nodes.update({key: info["node_id"] for key, info in zip(keys, infos, strict=True)})


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


def check_cluster_fits(
    devices: list[ClientDevice], what: str = "client actors", available: dict[str, float] | None = None
) -> None:
    """Fail fast, naming the shortfall, when the cluster cannot host every client actor at once.

    ``available``: the cluster's total resources (default ``ray.cluster_resources()``). Without these checks
    an unhostable request waits out ``runtime.actor_start_timeout_s`` (300 s by default) before failing.
    """
    available = ray.cluster_resources() if available is None else available
    needed_cpus = sum(d.num_cpus for d in devices)
    if needed_cpus > available.get("CPU", 0) + 1e-9:
        raise RuntimeError(
            f"{len(devices)} {what} request {needed_cpus:g} CPUs in total but the Ray cluster has "
            f"{available.get('CPU', 0):g}; fix: lower clients.resources[].num_cpus (or the device profiles' "
            "ray_num_cpus), use clients.placement: pooled (or a smaller clients.pool_size), or add nodes"
        )
    memory = [d.actor_options().get("memory", 0) for d in devices]
    if "memory" in available and sum(memory) > available["memory"] * (1 + 1e-9):
        gib = 1024**3
        raise RuntimeError(
            f"{len(devices)} {what} request {sum(memory) / gib:.1f} GiB of Ray memory in total "
            f"({max(memory) / gib:.1f} GiB each at most, sized "
            f"from the model) but the Ray cluster has {available['memory'] / gib:.1f} GiB; fix: a smaller "
            "clients.pool_size (or clients.placement: pooled), a smaller model.max_seq_len / training.batch_size, "
            "or add nodes"
        )
    needed_gpus = sum(d.num_gpus for d in devices)
    if needed_gpus > available.get("GPU", 0) + 1e-9:
        raise RuntimeError(
            f"{len(devices)} {what} request {needed_gpus:g} GPUs in total but the Ray cluster has "
            f"{available.get('GPU', 0):g}; fix: lower the device profiles' ray_num_gpus / clients.resources[]."
            "num_gpus (fractions share a GPU), use clients.placement: pooled, or add GPU nodes"
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
    shards: ClientShards,
    placement: str,
    pool_size: int | Mapping[str, int] | None,
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
        runtime = DedicatedRuntime(run_id, devices, shards, timeout)
    else:
        sizes = pool_sizes(devices, available, pool_size)
        check_cluster_fits(worker_devices(devices, sizes), what="pool workers")
        runtime = PooledRuntime(run_id, devices, shards, sizes, timeout)
    wait_until_ready(runtime, timeout)
    return runtime
