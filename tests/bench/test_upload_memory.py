"""bench.upload_memory's measurement of a process tree: proportional set sizes count pages that
processes share once, where summed RSS counts them once per process."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench.upload_memory import TreeMemorySampler, tree_memory_mib

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux /proc/PID/smaps_rollup"
)


FAMILY = """
import os, sys, time
import numpy as np
block = np.ones(200 * 1024 * 1024 // 8)  # touched: resident in this process
children = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children.append(pid)
print("ready", flush=True)
sys.stdin.read()  # until the test closes stdin
for pid in children:
    os.kill(pid, 9)
"""


def test_shared_pages_of_forked_children_count_once_in_pss() -> None:
    """A fresh interpreter touches 200 MiB and forks three children that share it: their summed
    RSS counts it about four times, their summed PSS about once."""
    family = subprocess.Popen(
        [sys.executable, "-c", FAMILY], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert family.stdout is not None and family.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        pss, rss = tree_memory_mib(family.pid)
        assert rss > 3.5 * 200
        assert 200 < pss < 2 * 200 + 100
    finally:
        assert family.stdin is not None
        family.stdin.close()  # the family kills its children and ends
        try:
            family.wait(timeout=10)
        except subprocess.TimeoutExpired:
            family.kill()
            family.wait()


def test_the_sampler_keeps_the_largest_sample() -> None:
    values = iter([(10.0, 20.0), (30.0, 25.0), (5.0, 50.0)])
    last = (5.0, 50.0)

    def probe(_pid: int) -> tuple[float, float]:
        return next(values, last)

    with TreeMemorySampler(os.getpid(), interval_s=0.01, probe=probe) as sampler:
        time.sleep(0.2)
    assert sampler.samples >= 3
    assert (sampler.peak_pss_mib, sampler.peak_rss_mib) == (30.0, 50.0)
