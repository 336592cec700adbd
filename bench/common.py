"""Shared helpers for the benchmarks: paths, timing statistics, machine facts."""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / "bench" / ".cache"
RESULTS_FILE = REPO_ROOT / "docs" / "benchmarks" / "results.json"
FIGURES_DIR = REPO_ROOT / "docs" / "benchmarks"
DEFAULT_BUNDLE = REPO_ROOT / "weights" / "default"


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository, overridable with ``CITES_SHARED_DATA``."""
    override = os.environ.get("CITES_SHARED_DATA")
    if override:
        return Path(override)
    return REPO_ROOT.parent / "shared" / "data"


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    """Median of the finite values; NaN when there are none."""
    finite = [v for v in values if v == v]
    return statistics.median(finite) if finite else float("nan")


def time_repeated(
    func: Callable[[], object], *, min_time_s: float, min_repeats: int = 3, warmup: int = 1
) -> list[float]:
    """Call ``func`` ``warmup`` times, then repeatedly for at least ``min_time_s``.

    Returns:
        The wall time of each timed call in seconds.
    """
    for _ in range(warmup):
        func()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return times


def git_commit() -> str:
    """The short commit of the working tree (``unknown`` outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (or the platform string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Facts about the machine and software the numbers were measured on."""
    import numpy

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpus": cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": round(os.getloadavg()[0], 1),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        info["memory_gib"] = round(mem_kb / 1024**2, 1)
    except (OSError, StopIteration):
        pass
    return info


def proc_kib(pid: int, field: str, file: str = "status") -> int:
    """A ``kB`` field of ``/proc/PID/<file>`` (``VmHWM``, ``VmRSS`` of ``status``; ``Pss`` of
    ``smaps_rollup``); 0 when the process is gone or the field is absent."""
    try:
        text = Path(f"/proc/{pid}/{file}").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def peak_rss_mib(pids: Sequence[int]) -> float:
    """Sum of the peak resident set sizes (``VmHWM``) of ``pids``, in MiB; 0 when unreadable."""
    return sum(proc_kib(pid, "VmHWM") for pid in pids) / 1024.0


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.Error:
        return [pid]


def write_json(path: Path, data: object) -> None:
    """Write ``data`` as indented JSON, creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
