"""A thread that the operating system runs only on CPU time nobody else wants.

The server evaluates round r while round r+1's clients train (``runtime.overlap_evaluation``). On a box
whose client processes already hold every core, an evaluation at normal priority only time-slices with
them: measured on 2 cores it took 5x longer and the round none shorter (benchmarks/README.md). At idle
priority it runs in the gaps the clients leave (the slowest worker's tail, dispatch, collection) and
yields the moment a client wants the core back, so overlapping costs the clients nothing.

Linux: ``SCHED_IDLE`` for the thread, which threads it creates (the OpenMP team torch starts on first
use) inherit; elsewhere nice 19 for the thread where the OS allows it, else normal priority. Lowering a
thread's priority needs no privileges; it is never raised again, so the thread is dedicated to this work.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def lower_current_thread_priority() -> str:
    """Make the calling thread (and the threads it starts later) idle priority; returns what was applied."""
    tid = threading.get_native_id()
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined]
        return "idle"
    except (AttributeError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, tid, 19)
        return "nice19"
    except (AttributeError, OSError):
        return "normal"


class IdlePriorityThread:
    """One worker thread at idle priority; :meth:`run` executes a call on it and waits for the result.

    The caller blocks, but it only waits (for clients that train meanwhile), so the work itself is what runs
    at low priority. Results are bit-identical to running the call on the caller's thread: torch uses the
    same intra-op thread count in every thread of the process.
    """

    def __init__(self) -> None:
        self.priority = "unset"
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="fedspine-idle", initializer=self._initialise
        )

    def _initialise(self) -> None:
        self.priority = lower_current_thread_priority()

    def run(self, fn: Callable[..., T], *args: object) -> T:
        return self._executor.submit(fn, *args).result()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
