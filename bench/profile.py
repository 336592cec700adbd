"""Where a server spends its CPU under load: py-spy sampling of a running process.

:func:`sample` starts ``py-spy record`` on a server's pid (raw "collapsed stacks" output, idle
threads excluded) while a load runs, then :func:`summarise` ranks functions by the share of
samples in which they are on the stack (inclusive) and at its top (self).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    """Path of the ``py-spy`` executable beside this interpreter, or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.is_file():
        return str(beside)
    return shutil.which("py-spy")


@contextmanager
def sample(pid: int, out_file: Path, *, seconds: float, rate: int = 67) -> Iterator[Path]:
    """Record ``pid`` for up to ``seconds`` while the block runs; yields the output path."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install -e '.[bench]')")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--nonblocking",
        "--subprocesses",  # the decode workers are processes of the service
        "--output",
        str(out_file),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield out_file
    finally:
        try:
            _, err = process.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            process.terminate()
            _, err = process.communicate(timeout=10)
        if process.returncode != 0:
            logger.warning("py-spy exited %s: %s", process.returncode, err.decode()[-500:])


PROJECT_PREFIXES = ("model/", "service/", "bench/")
"""Paths whose functions get an inclusive ranking (the product's own code)."""


def _short(frame: str) -> str | None:
    """``func (relative/path.py)`` for a code frame; ``None`` for process or thread headers."""
    match = _FRAME.match(frame.strip())
    if not match:
        return None
    path = match.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match.group('func')} ({path})"


def summarise(raw_file: Path, top: int = 12) -> dict[str, Any]:
    """Top functions by self share of the samples, and the product's own by inclusive share."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    if not raw_file.is_file():
        return {"samples": 0, "inclusive": [], "self": []}
    for line in raw_file.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [short for f in stack.split(";") if (short := _short(f))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            if frame.split(" (", 1)[-1].startswith(PROJECT_PREFIXES):
                inclusive[frame] += count

    def rank(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "share": count / total}
            for name, count in counter.most_common(top)
            if total
        ]

    return {"samples": total, "inclusive": rank(inclusive), "self": rank(own)}
