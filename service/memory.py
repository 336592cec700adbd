"""How the service's processes give memory back to the machine (glibc ``malloc`` settings).

Officers' photos arrive as buffers of several megabytes: the upload's bytes, the message that
carries them to a decode worker, the decoder's input. glibc serves a buffer above its *mmap
threshold* with its own mapping, which it unmaps on ``free``: the memory goes back at once. But
the threshold is dynamic: every time such a buffer is freed, glibc raises the threshold to its
size (up to 32 MiB), so from then on buffers of that size come from the heap, whose free space
is kept and fragments across the threads' arenas. A service that had decoded a few 14 MB
photos therefore kept hundreds of MiB it no longer used (docs/benchmarks.md, "Large uploads").

:func:`return_large_buffers` fixes the threshold (a fixed value switches the dynamic one off)
and limits the number of arenas, in this process with ``mallopt`` and, through the
environment, in every process it starts afterwards (the decode workers' fork server reads it at
start-up). Settings already in the environment win, so an operator can still choose others.
Elsewhere than glibc it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import MutableMapping

logger = logging.getLogger(__name__)

LARGE_BUFFER_BYTES = 1 << 20
"""Buffers of at least this size get their own mapping and go back to the machine when freed.
Small enough for every upload and decoder buffer, large enough that the many small objects of
a request stay on the heap."""

MALLOC_ARENAS = 2
"""glibc's default is 8 per core; each thread pool's allocations then fragment their own."""

_M_MMAP_THRESHOLD = -3  # from glibc's <malloc.h>
_M_ARENA_MAX = -8

_ENVIRONMENT = {
    "MALLOC_MMAP_THRESHOLD_": LARGE_BUFFER_BYTES,
    "MALLOC_ARENA_MAX": MALLOC_ARENAS,
}


def return_large_buffers(environ: MutableMapping[str, str] | None = None) -> bool:
    """Apply the settings of the module docstring to this process and, through ``environ``
    (``os.environ`` by default), to the processes it starts. Returns True when this process's
    allocator took them (glibc), False elsewhere."""
    target = os.environ if environ is None else environ
    for name, value in _ENVIRONMENT.items():
        target.setdefault(name, str(value))
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        logger.info("not glibc: large buffers are returned as this platform's malloc decides")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    threshold = int(target["MALLOC_MMAP_THRESHOLD_"])
    arenas = int(target["MALLOC_ARENA_MAX"])
    applied = bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_ARENA_MAX, arenas))
    if not applied:
        logger.warning(
            "glibc refused the malloc settings (threshold %d, arenas %d)", threshold, arenas
        )
    return applied
