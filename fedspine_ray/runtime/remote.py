"""The server actor the launching process creates: a thin shell that builds :class:`FederatedServer` inside.

``ray.remote(FederatedServer)`` would make the launching process import the server's module only to name
it - torch, transformers, PEFT and the strategies, about 0.5 GiB of resident memory in a process whose job
is stepping rounds and writing Parquet rows. This module imports none of them: :class:`RemoteServer`
imports the server inside the actor, and what its methods return (a
:class:`~fedspine_ray.messages.RoundReport` of plain values, checkpoint bytes) is unpickled in the
launching process without them. ``tests/test_resume.py``'s SIGKILL test checks that a run, its
checkpoints and its resume leave torch unimported there.

The server itself is :class:`fedspine_ray.runtime.server.FederatedServer`: this is only its remote face.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedspine_ray.config import ExperimentConfig
    from fedspine_ray.messages import RoundReport
    from fedspine_ray.runtime.server import FederatedServer


class RemoteServer:
    """What the launching process calls on the server; each method forwards to :class:`FederatedServer`."""

    def __init__(self, config: ExperimentConfig) -> None:
        from fedspine_ray.runtime.server import FederatedServer

        self._server: FederatedServer = FederatedServer(config)

    def setup(self) -> dict[str, Any]:
        return self._server.setup()

    def run_round(self, rnd: int, start_next: bool = False) -> RoundReport:
        return self._server.run_round(rnd, start_next)

    def encoded_checkpoint(self, rnd: int) -> tuple[bytes, dict[str, Any]]:
        """The checkpoint after round ``rnd`` as file bytes plus checkpoint.json facts, encoded here so the
        launching process only writes bytes (:func:`fedspine_ray.launch.checkpoint_files.write_checkpoint_file`)."""
        from fedspine_ray.runtime.checkpoint import encode_checkpoint

        return encode_checkpoint(self._server.checkpoint_state(rnd))

    def restore_state(self, data: bytes) -> int:
        return self._server.restore_state(data)

    def shutdown(self) -> None:
        self._server.shutdown()
