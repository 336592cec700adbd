"""Peak memory of the service while many clients upload large photos at once.

Issue 12 measured 1066 MiB with 64 clients each sending the same 14 MB, 12-megapixel JPEG for
20 s, because every upload was read into memory as soon as its key was checked. Uploads now
stay in the multipart parser's spool file until a decode worker takes them
(:mod:`service.uploads`), so memory should grow with the number of decoders, not with the
number of uploads in flight.

This script runs ``cites-vision serve`` (default settings, anonymous access, a throw-away data
directory) and :mod:`bench.loadgen` against it, then reports the peak resident memory
(``VmHWM``) of the server process and of the server with its decode workers.

The decode workers are forked from a fork server that imported the decoding modules, so most of
their pages are shared with it and with each other; the sum of each process's own peak counts
those pages once per process, and adds peaks that did not happen at the same moment: an upper
bound. The script therefore also samples the whole process tree every 0.1 s while the load
runs and reports the largest sum of proportional set sizes (``Pss`` in
``/proc/PID/smaps_rollup``: each shared page divided among the processes that share it), which
is the memory the service takes from the machine at that moment, and the largest sum of the
processes' current RSS at one moment.

Run: ``.venv/bin/python -m bench.upload_memory [--clients 64 --seconds 20]``; it prints JSON and
with ``--out FILE`` writes it. The goal (issue 12) is a peak below 700 MiB.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import DEFAULT_BUNDLE, peak_rss_mib, proc_kib, process_tree, write_json
from bench.service_load import SINGLE_PATH, measured_load, our_service

logger = logging.getLogger("bench.upload_memory")

GOAL_MIB = 700.0


def large_photo(size: tuple[int, int] = (4032, 3024)) -> bytes:
    """A 12 MP JPEG of about 14 MB: fine noise at quality 95, 4:2:0 (14.3 MB)."""
    width, height = size
    rng = np.random.default_rng(14)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=95, subsampling=2)
    return out.getvalue()


def tree_memory_mib(pid: int) -> tuple[float, float]:
    """(sum of Pss, sum of current RSS) of ``pid`` and its descendants now, in MiB."""
    pids = process_tree(pid)
    pss = sum(proc_kib(p, "Pss", "smaps_rollup") for p in pids)
    rss = sum(proc_kib(p, "VmRSS") for p in pids)
    return pss / 1024.0, rss / 1024.0


class TreeMemorySampler:
    """Samples :func:`tree_memory_mib` every ``interval_s`` in a thread; keeps the largest."""

    def __init__(
        self,
        pid: int,
        interval_s: float = 0.1,
        probe: Callable[[int], tuple[float, float]] = tree_memory_mib,
    ) -> None:
        self._pid = pid
        self._interval_s = interval_s
        self._probe = probe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self.peak_pss_mib = 0.0
        self.peak_rss_mib = 0.0
        self.samples = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            pss, rss = self._probe(self._pid)
            self.peak_pss_mib = max(self.peak_pss_mib, pss)
            self.peak_rss_mib = max(self.peak_rss_mib, rss)
            self.samples += 1
            self._stop.wait(self._interval_s)

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(bundle: Path, clients: int, seconds: float) -> dict[str, Any]:
    """Run the load and return the figures."""
    photo = large_photo()
    with tempfile.TemporaryDirectory(prefix="cites-upload-mem-") as scratch:
        folder = Path(scratch) / "images"
        folder.mkdir()
        (folder / "phone.jpg").write_bytes(photo)
        with (
            our_service(bundle, Path(scratch)) as server,
            TreeMemorySampler(server.process.pid) as sampler,
        ):
            load = measured_load(
                server,
                server.base_url + SINGLE_PATH,
                folder,
                concurrency=clients,
                requests=100_000,
                duration_s=seconds,
                timeout_s=120.0,
            )
            main_pid = server.process.pid
            tree = process_tree(main_pid)
            server_mib = peak_rss_mib([main_pid])
            tree_mib = peak_rss_mib(tree)
    return {
        "clients": clients,
        "seconds": seconds,
        "upload_bytes": len(photo),
        "statuses": load.get("statuses"),
        "images_ok": load.get("images_ok"),
        "server_peak_rss_mib": round(server_mib, 1),
        "server_and_workers_peak_rss_mib": round(tree_mib, 1),
        "peak_sampled_rss_mib": round(sampler.peak_rss_mib, 1),
        "peak_sampled_pss_mib": round(sampler.peak_pss_mib, 1),
        "samples": sampler.samples,
        "processes": len(tree),
        "goal_mib": GOAL_MIB,
        "met": sampler.peak_pss_mib < GOAL_MIB,
        "met_by_summed_peaks": tree_mib < GOAL_MIB,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure and print the figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.upload_memory", description=__doc__)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    result = measure(args.bundle, args.clients, args.seconds)
    text = json.dumps(result, indent=2)
    sys.stdout.write(text + "\n")
    if args.out is not None:
        write_json(args.out, result)
    return 0 if result["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
