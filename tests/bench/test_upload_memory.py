"""bench.upload_memory's measurement of a process tree: proportional set sizes count pages that
processes share once, where summed RSS counts them once per process."""

from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np
import pytest

from bench.upload_memory import TreeMemorySampler, tree_memory_mib

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux /proc/PID/smaps_rollup"
)


def _hold(seconds: float) -> None:
    time.sleep(seconds)


def test_shared_pages_of_forked_children_count_once_in_pss() -> None:
    """Three forked children share their parent's 200 MiB of touched pages: their summed RSS
    counts it about four times, their summed PSS about once."""
    block = np.ones(200 * 1024 * 1024 // 8)  # touched: resident in the parent
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_hold, args=(5.0,)) for _ in range(3)]
    for child in children:
        child.start()
    try:
        time.sleep(0.5)
        pss, rss = tree_memory_mib(os.getpid())
        assert rss > 3.5 * 200
        assert pss < 2 * 200 + 100
        assert pss > 200
    finally:
        for child in children:
            child.terminate()
            child.join()
    del block


def test_the_sampler_keeps_the_largest_sample() -> None:
    values = iter([(10.0, 20.0), (30.0, 25.0), (5.0, 50.0)])
    last = (5.0, 50.0)

    def probe(_pid: int) -> tuple[float, float]:
        return next(values, last)

    with TreeMemorySampler(os.getpid(), interval_s=0.01, probe=probe) as sampler:
        time.sleep(0.2)
    assert sampler.samples >= 3
    assert (sampler.peak_pss_mib, sampler.peak_rss_mib) == (30.0, 50.0)
