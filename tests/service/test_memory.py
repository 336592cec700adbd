"""service.memory: large buffers go back to the machine once freed (glibc)."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from service.memory import LARGE_BUFFER_BYTES, MALLOC_ARENAS, return_large_buffers

# Frees a 14 MB buffer (which raises glibc's dynamic threshold to its size), then allocates and
# frees another one the same way, and prints how much resident memory that second buffer left
# behind, in MiB.
PROBE = """
import sys
from service.memory import return_large_buffers
if sys.argv[1] == "fixed":
    return_large_buffers()

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

size = 14 * 1024 * 1024
first = bytearray(size)
del first
keep_heap_busy = [bytes(64) for _ in range(1000)]
before = rss_kib()
second = bytearray(size)
tail = bytes(64)  # an object after the buffer stops the heap's top from being trimmed
del second
print((rss_kib() - before) / 1024)
"""


def _is_glibc() -> bool:
    try:
        ctypes.CDLL(None).mallopt  # noqa: B018
    except (OSError, AttributeError):
        return False
    return sys.platform.startswith("linux")


def test_settings_go_to_the_environment_and_an_operators_own_win() -> None:
    environ: dict[str, str] = {"MALLOC_ARENA_MAX": "4"}
    return_large_buffers(environ)
    assert environ["MALLOC_MMAP_THRESHOLD_"] == str(LARGE_BUFFER_BYTES)
    assert environ["MALLOC_ARENA_MAX"] == "4"  # the operator's setting is kept
    assert MALLOC_ARENAS == 2


@pytest.mark.skipif(not _is_glibc(), reason="the settings are glibc's")
def test_a_freed_photo_sized_buffer_leaves_no_resident_memory_behind() -> None:
    def left_behind_mib(mode: str) -> float:
        out = subprocess.run(
            [sys.executable, "-c", PROBE, mode],
            capture_output=True,
            text=True,
            check=True,
            env={"PATH": "/usr/bin:/bin"},
        )
        return float(out.stdout.strip())

    assert left_behind_mib("fixed") < 2.0
    # without the settings glibc keeps the second buffer on its heap: the probe measures
    # something real
    assert left_behind_mib("default") > 10.0
