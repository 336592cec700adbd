"""The service under load, micro-batching on and off, and the raw predictor it wraps.

Our service runs as ``cites-vision serve`` in its own process on loopback (anonymous access so
that no key lookup is measured twice; a fresh data directory per run); the load generator
(:mod:`bench.loadgen`) runs in another process. Every load run is bounded in requests and time.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, cpu_count
from bench.images import BenchImage
from bench.servers.process import ServerProcess, free_port, python_argv, running_server

logger = logging.getLogger(__name__)

SINGLE_PATH = "/v1/identifications"
BATCH_PATH = "/v1/identifications:batch"
CONCURRENCIES = (1, 8, 32, 64)
BATCH_IMAGES_PER_REQUEST = 8


def run_loadgen(
    url: str,
    images_dir: Path,
    *,
    concurrency: int,
    requests: int,
    duration_s: float,
    field: str = "image",
    per_request: int = 1,
    warmup: int = 2,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
    batch_answers: bool = False,
) -> dict[str, Any]:
    """Run :mod:`bench.loadgen` in its own process and return its JSON summary."""
    argv = python_argv(
        "bench.loadgen",
        "--url",
        url,
        "--images",
        str(images_dir),
        "--field",
        field,
        "--per-request",
        str(per_request),
        "--concurrency",
        str(concurrency),
        "--requests",
        str(requests),
        "--duration",
        str(duration_s),
        "--warmup",
        str(warmup),
        "--timeout",
        str(timeout_s),
    )
    for key, value in (headers or {}).items():
        argv += ["--header", f"{key}: {value}"]
    if batch_answers:
        argv.append("--batch-answers")
    done = subprocess.run(
        argv,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=duration_s + timeout_s * (warmup + 2) + 30,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def service_env(
    bundle_dir: Path, data_dir: Path, *, batching: bool, precision: str = "auto"
) -> dict[str, str]:
    """Environment for ``cites-vision serve`` in the benchmarks."""
    env = {
        "CITES_BUNDLE_DIR": str(bundle_dir.resolve()),
        "CITES_DATA_DIR": str(data_dir),
        "CITES_ALLOW_ANONYMOUS": "true",
        "CITES_PRECISION": precision,
    }
    if not batching:
        env["CITES_BATCH_MAX_SIZE"] = "1"
        env["CITES_BATCH_MAX_WAIT_MS"] = "0"
    return env


@contextmanager
def our_service(
    bundle_dir: Path,
    log_dir: Path,
    *,
    batching: bool = True,
    precision: str = "auto",
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """Run ``cites-vision serve`` on a free loopback port with a throw-away data directory."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="cites-bench-") as data_dir:
        env = service_env(bundle_dir, Path(data_dir), batching=batching, precision=precision)
        env.update(extra_env or {})
        argv = python_argv(
            "model.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--bundle",
            str(bundle_dir.resolve()),
            "--data-dir",
            data_dir,
            "--log-level",
            "warning",
        )
        name = f"service-batching-{'on' if batching else 'off'}-{precision}"
        with running_server(
            name, argv, port=port, ready_path="/readyz", env=env, log_dir=log_dir
        ) as server:
            yield server


def measured_load(
    server: ServerProcess, url: str, images_dir: Path, **kwargs: Any
) -> dict[str, Any]:
    """:func:`run_loadgen` plus the server's CPU time per successful image (``cpu_ms_per_image``):
    unlike images/s, CPU time per image hardly depends on what else the shared machine runs."""
    before = server.cpu_seconds()
    result = run_loadgen(url, images_dir, **kwargs)
    used = server.cpu_seconds() - before
    result["server_cpu_s"] = used
    images = result.get("images_ok") or 0
    result["cpu_ms_per_image"] = 1000.0 * used / images if images else float("nan")
    return result


def active_model(server: ServerProcess) -> dict[str, Any]:
    """Version and precision the running service reports (``GET /v1/models/active``)."""
    import urllib.request

    try:
        with urllib.request.urlopen(server.base_url + "/v1/models/active", timeout=10) as answer:
            data = json.loads(answer.read())
    except (OSError, ValueError) as exc:
        logger.warning("could not read the active model: %s", exc)
        return {}
    return {"version": data.get("version"), "precision": data.get("precision")}


def load_matrix(
    server: ServerProcess,
    images_dir: Path,
    *,
    concurrencies: tuple[int, ...] = CONCURRENCIES,
    duration_s: float = 8.0,
    max_requests: int = 5000,
    endpoints: tuple[str, ...] = ("single", "batch"),
) -> dict[str, dict[str, Any]]:
    """Load ``server`` on each endpoint at each concurrency; adds the server's peak memory."""
    results: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        results[endpoint] = {}
        for concurrency in concurrencies:
            if endpoint == "single":
                url, field, per_request = server.base_url + SINGLE_PATH, "image", 1
            else:
                url, field = server.base_url + BATCH_PATH, "images"
                per_request = BATCH_IMAGES_PER_REQUEST
            result = measured_load(
                server,
                url,
                images_dir,
                concurrency=concurrency,
                requests=max_requests,
                duration_s=duration_s,
                field=field,
                per_request=per_request,
                batch_answers=endpoint == "batch",
            )
            result["peak_rss_mib"] = server.peak_rss_mib()
            results[endpoint][str(concurrency)] = result
            logger.info(
                "%s %s c=%d: %.1f img/s p50 %.0f ms p99 %.0f ms statuses %s %s, peak %.0f MiB",
                server.name,
                endpoint,
                concurrency,
                result["images_per_s"],
                result["p50_ms"],
                result["p99_ms"],
                result["statuses"],
                result.get("item_errors") or "",
                result["peak_rss_mib"],
            )
    return results


def run(
    bundle_dir: Path,
    images_dir: Path,
    log_dir: Path,
    *,
    concurrencies: tuple[int, ...] = CONCURRENCIES,
    duration_s: float = 8.0,
) -> dict[str, Any]:
    """Both endpoints at every concurrency, micro-batching on and off."""
    results: dict[str, Any] = {"concurrencies": list(concurrencies), "duration_s": duration_s}
    for batching in (True, False):
        key = "batching_on" if batching else "batching_off"
        with our_service(bundle_dir, log_dir, batching=batching) as server:
            results["active_model"] = active_model(server)
            results[key] = load_matrix(
                server, images_dir, concurrencies=concurrencies, duration_s=duration_s
            )
            results[key + "_peak_rss_mib"] = server.peak_rss_mib()
    return results


def raw_predictor_throughput(
    bundle_dir: Path, images: list[BenchImage], *, batch: int = 16, seconds: float = 6.0
) -> dict[str, Any]:
    """Images/s of the predictor in-process (decode, preprocess, inference, decision), batch 16.

    The same images the load tests send; the service's throughput is reported as a share of this.
    """
    from model.bundle import load_bundle
    from model.predictor import Predictor

    predictor = Predictor(load_bundle(bundle_dir), threads=cpu_count())
    datas = [image.data for image in images]
    groups = [datas[i : i + batch] for i in range(0, len(datas) - batch + 1, batch)]
    predictor.predict_bytes(groups[0])  # warm-up
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for group in groups:
            predictor.predict_bytes(group)
            done += len(group)
            if time.perf_counter() - start >= seconds:
                break
    elapsed = time.perf_counter() - start
    return {"batch": batch, "images": done, "seconds": elapsed, "images_per_s": done / elapsed}
