"""Our service against the usual alternatives, in the same run, with the same load generator.

The servers run at once on loopback, but only the one being measured is running: the others
are paused (SIGSTOP; LitServe's loops poll even when idle). They are ours (``cites-vision
serve``, default settings), a plain FastAPI endpoint with PyTorch eager per request
(:mod:`bench.servers.plain_torch`) and LitServe with the same ONNX model and dynamic batching
(:mod:`bench.servers.litserve_onnx`), in fp32 and, for reference, on the INT8 file. The CPU
flips between fast and slow states within minutes, so each round measures every server in turn
(the order rotates from round to round), ratios are taken within a round, and the report gives
the median of the per-round ratios.

Two measurements per server and round: images/s at concurrency 32 on the real photos of the load
set, and the latency of one client sending a 12 MP phone JPEG (upload, decode, predict, and for
our service also storing the image and the record, then the answer).
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.bench_model import bundle_facts
from bench.common import median
from bench.servers.process import ServerProcess, free_port, python_argv, running_server
from bench.service_load import SINGLE_PATH, active_model, measured_load, our_service

logger = logging.getLogger(__name__)

SERVERS = ("cites_vision", "litserve", "plain_pytorch", "litserve_int8", "litserve_service_api")
"""``litserve_int8`` serves the same INT8 file as our service (issue 12's baseline);
``litserve_service_api`` runs our own inference stage (:class:`service.inference.PredictorAPI`)
under LitServe, for reference: it stores and records nothing."""


def _start_all(
    stack: ExitStack, bundle_dir: Path, log_dir: Path, ours_model: dict[str, Any]
) -> dict[str, tuple[ServerProcess, str]]:
    servers: dict[str, tuple[ServerProcess, str]] = {}
    ours = stack.enter_context(our_service(bundle_dir, log_dir))
    ours_model.update(active_model(ours))
    servers["cites_vision"] = (ours, ours.base_url + SINGLE_PATH)
    has_int8 = bundle_facts(bundle_dir)["int8"] is not None
    for name, precision in (("litserve", "fp32"), ("litserve_int8", "int8")):
        if precision == "int8" and not has_int8:
            logger.info("the bundle has no INT8 file: LitServe INT8 not measured")
            continue
        port = free_port()
        argv = python_argv(
            "bench.servers.litserve_onnx",
            "--bundle",
            str(bundle_dir),
            "--port",
            str(port),
            "--precision",
            precision,
        )
        lit = stack.enter_context(
            running_server(name, argv, port=port, ready_path="/health", log_dir=log_dir)
        )
        servers[name] = (lit, lit.base_url + "/predict")
    port = free_port()
    stage = stack.enter_context(
        running_server(
            "litserve_service_api",
            python_argv(
                "bench.servers.litserve_service_api",
                "--bundle",
                str(bundle_dir),
                "--port",
                str(port),
            ),
            port=port,
            ready_path="/health",
            log_dir=log_dir,
        )
    )
    servers["litserve_service_api"] = (stage, stage.base_url + "/predict")
    port = free_port()
    plain = stack.enter_context(
        running_server(
            "plain_pytorch",
            python_argv(
                "bench.servers.plain_torch", "--bundle", str(bundle_dir), "--port", str(port)
            ),
            port=port,
            ready_path="/openapi.json",
            log_dir=log_dir,
        )
    )
    servers["plain_pytorch"] = (plain, plain.base_url + "/predict")
    return servers


def _only(servers: dict[str, tuple[ServerProcess, str]], name: str) -> tuple[ServerProcess, str]:
    """Resume server ``name`` and pause the others, so idle servers take no CPU from it."""
    for other, (server, _url) in servers.items():
        if other != name:
            server.pause()
    server, url = servers[name]
    server.resume()
    time.sleep(0.5)  # let it settle after being paused
    return server, url


def run(
    bundle_dir: Path,
    load_dir: Path,
    phone_dir: Path,
    log_dir: Path,
    *,
    rounds: int = 3,
    concurrency: int = 32,
    duration_s: float = 8.0,
    phone_requests: int = 12,
) -> dict[str, Any]:
    """Alternate the three servers over ``rounds``; return per-round numbers and median ratios."""
    with ExitStack() as stack:
        ours_model: dict[str, Any] = {}
        servers = _start_all(stack, bundle_dir, log_dir, ours_model)
        names = tuple(name for name in SERVERS if name in servers)
        throughput: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        phone: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for round_index in range(rounds):
            shift = round_index % len(names)
            order = names[shift:] + names[:shift]
            for name in order:
                server, url = _only(servers, name)
                result = measured_load(
                    server,
                    url,
                    load_dir,
                    concurrency=concurrency,
                    requests=20000,
                    duration_s=duration_s,
                )
                result["peak_rss_mib"] = server.peak_rss_mib()
                throughput[name].append(result)
                logger.info(
                    "round %d %s c=%d: %.1f img/s, statuses %s",
                    round_index + 1,
                    name,
                    concurrency,
                    result["images_per_s"],
                    result["statuses"],
                )
            for name in order:
                server, url = _only(servers, name)
                result = measured_load(
                    server,
                    url,
                    phone_dir,
                    concurrency=1,
                    requests=phone_requests,
                    duration_s=max(30.0, duration_s),
                    warmup=2,
                )
                phone[name].append(result)
                logger.info(
                    "round %d %s 12 MP p50 %.0f ms", round_index + 1, name, result["p50_ms"]
                )
        for server, _url in servers.values():
            server.resume()
        memory = {name: servers[name][0].peak_rss_mib() for name in names}
    summary = summarise(throughput, phone, memory, concurrency)
    summary["active_model"] = ours_model
    return summary


def summarise(
    throughput: dict[str, list[dict[str, Any]]],
    phone: dict[str, list[dict[str, Any]]],
    memory: dict[str, float],
    concurrency: int,
) -> dict[str, Any]:
    """Medians per server and the medians of per-round ratios of ours to each alternative."""
    ours_ips = [r["images_per_s"] for r in throughput["cites_vision"]]
    ours_p50 = [r["p50_ms"] for r in phone["cites_vision"]]
    summary: dict[str, Any] = {"concurrency": concurrency, "servers": {}, "ratios": {}}
    for name in throughput:
        ips = [r["images_per_s"] for r in throughput[name]]
        p50 = [r["p50_ms"] for r in phone[name]]
        summary["servers"][name] = {
            "images_per_s": median(ips),
            "images_per_s_per_round": ips,
            "p50_ms_load": median([r["p50_ms"] for r in throughput[name]]),
            "p99_ms_load": median([r["p99_ms"] for r in throughput[name]]),
            "errors": sum(r["errors"] for r in throughput[name]),
            "statuses": _merge([r["statuses"] for r in throughput[name]]),
            "phone_p50_ms": median(p50),
            "phone_p50_ms_per_round": p50,
            "phone_errors": sum(r["errors"] for r in phone[name]),
            "cpu_ms_per_image": median([r["cpu_ms_per_image"] for r in throughput[name]]),
            "phone_cpu_ms_per_image": median([r["cpu_ms_per_image"] for r in phone[name]]),
            "peak_rss_mib": memory[name],
        }
        if name != "cites_vision":
            summary["ratios"][name] = {
                "throughput": median([a / b for a, b in zip(ours_ips, ips, strict=True) if b > 0]),
                "phone_latency_speedup": median(
                    [b / a for a, b in zip(ours_p50, p50, strict=True) if a > 0]
                ),
                "cpu_per_image": median(
                    [
                        r["cpu_ms_per_image"] / o["cpu_ms_per_image"]
                        for o, r in zip(throughput["cites_vision"], throughput[name], strict=True)
                        if o["cpu_ms_per_image"] > 0
                    ]
                ),
            }
    return summary


def _merge(counts: list[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for item in counts:
        for key, value in item.items():
            merged[key] = merged.get(key, 0) + value
    return merged
