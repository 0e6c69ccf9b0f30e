"""runtime/cpus.py: a process confined to fewer CPUs than the machine has sizes its torch threads by them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fedspine_ray.runtime.cpus import usable_cpus


def test_usable_cpus_is_the_whole_machine_when_unconfined() -> None:
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert usable_cpus() == expected


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_a_process_confined_to_one_cpu_counts_one() -> None:
    cpu = min(os.sched_getaffinity(0))
    code = (
        f"import os; os.sched_setaffinity(0, {{{cpu}}}); "
        "from fedspine_ray.runtime.cpus import usable_cpus; print(usable_cpus(), os.cpu_count())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "1"
    assert int(out[1]) == os.cpu_count()  # the machine's count is what the server used to size its threads by
