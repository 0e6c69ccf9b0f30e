"""The server actor the launching process creates: a thin shell that builds :class:`FederatedServer` inside.

``ray.remote(FederatedServer)`` makes the launching process import the class's module only to name it -
torch, transformers, PEFT and the strategies, about 0.5 GiB of resident memory in a process whose job is
stepping rounds and writing Parquet rows. This module imports none of them: the shell imports the server
in the actor, and what its methods return (a :class:`RoundReport` of plain values, checkpoint bytes) is
unpickled in the launching process without them. The SIGKILL/resume test in ``tests/test_resume.py``
checks that a run, its checkpoints and its resume leave torch unimported there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedspine_ray.runtime.server import FederatedServer


@dataclass
class RoundReport:
    """Rows produced by one round: one for the round, one per selected client (plain Python values)."""

    round_row: dict[str, Any]
    client_rows: list[dict[str, Any]]


class FederatedServerActor:
    """What the launching process calls on the server; each method forwards to :class:`FederatedServer`."""

    def __init__(self, config_dict: dict[str, Any]) -> None:
        from fedspine_ray.runtime.server import FederatedServer

        self._server: FederatedServer = FederatedServer(config_dict)

    def setup(self) -> dict[str, Any]:
        return self._server.setup()

    def run_round(self, rnd: int, start_next: bool = False) -> RoundReport:
        return self._server.run_round(rnd, start_next)

    def encoded_checkpoint(self, rnd: int) -> tuple[bytes, dict[str, Any]]:
        """The checkpoint after round ``rnd`` as file bytes plus checkpoint.json facts, encoded here so the
        launching process only writes bytes (:func:`fedspine_ray.checkpoint_files.write_checkpoint_file`)."""
        from fedspine_ray.checkpoint import encode_checkpoint

        return encode_checkpoint(self._server.checkpoint_state(rnd))

    def restore_state(self, data: bytes) -> int:
        return self._server.restore_state(data)

    def shutdown(self) -> None:
        self._server.shutdown()
