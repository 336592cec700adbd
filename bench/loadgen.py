"""A small closed-loop HTTP load generator, run in its own process (``python -m bench.loadgen``).

``concurrency`` workers each keep one HTTP/1.1 keep-alive connection to a **loopback** server and
send multipart uploads back to back, cycling through the images of a folder. The run is bounded:
it stops after ``--requests`` requests or ``--duration`` seconds, whichever comes first, and every
request has a timeout. It speaks raw HTTP over asyncio streams (no client library) so that the
generator takes as little of the shared CPUs as possible away from the server it measures.
Each JPEG upload carries a unique comment segment unless ``--same-bytes`` is given, so that every
request is a new image to the server, as officers' photos are.

It prints one JSON object: status counts, latency percentiles of the successful requests, images
per second, and the time the run took.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import percentile

logger = logging.getLogger(__name__)

BOUNDARY = "cites-vision-bench-7d3f0a"
MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".tif": "image/tiff"}


class LoadgenError(Exception):
    """Bad arguments (e.g. a target that is not on loopback)."""


@dataclass(frozen=True)
class Payload:
    """One request body as fixed multipart framing around the image bytes it carries.

    ``body(tag)`` joins them; with a ``tag`` every JPEG gets a comment segment holding it, so
    that each request uploads different bytes (as real photos are) and a server that stores
    images by content hash cannot skip the write.
    """

    frames: tuple[bytes, ...]
    files: tuple[bytes, ...]

    @property
    def images(self) -> int:
        """Number of images in the body."""
        return len(self.files)

    def body(self, tag: bytes | None = None) -> bytes:
        """The request body, with every JPEG made unique by ``tag`` when given."""
        out = [self.frames[0]]
        for data, frame in zip(self.files, self.frames[1:], strict=True):
            out.append(unique_jpeg(data, tag) if tag is not None else data)
            out.append(frame)
        return b"".join(out)


def unique_jpeg(data: bytes, tag: bytes) -> bytes:
    """``data`` with a JPEG comment segment (``FF FE``) holding ``tag`` after the SOI marker;
    other formats are returned unchanged."""
    if data[:2] != b"\xff\xd8" or len(tag) > 65000:
        return data
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(tag) + 2) + tag + data[2:]


@dataclass
class Outcome:
    """What the workers saw, merged."""

    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    images_ok: int = 0
    sent: int = 0
    done_at: list[tuple[float, int]] = field(default_factory=list)
    """(completion time, images) of each successful request."""
    item_errors: dict[str, int] = field(default_factory=dict)
    """Failed images inside successful batch answers, by status."""

    def count(self, status: str) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


def multipart_payload(
    files: list[tuple[str, bytes]], field_name: str, extra: dict[str, str]
) -> Payload:
    """Frame form fields and files as ``multipart/form-data`` with :data:`BOUNDARY`."""
    frames: list[bytes] = []
    current = b""
    for key, value in extra.items():
        disposition = f'Content-Disposition: form-data; name="{key}"'
        current += f"--{BOUNDARY}\r\n{disposition}\r\n\r\n{value}\r\n".encode()
    for filename, _data in files:
        mime = MIME.get(Path(filename).suffix.lower(), "application/octet-stream")
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field_name}"; '
            f'filename="{filename}"\r\nContent-Type: {mime}\r\n\r\n'
        )
        frames.append(current + head.encode())
        current = b"\r\n"
    frames.append(current + f"--{BOUNDARY}--\r\n".encode())
    return Payload(tuple(frames), tuple(data for _name, data in files))


def build_payloads(
    folder: Path, field_name: str, per_request: int, extra: dict[str, str], limit: int = 512
) -> list[Payload]:
    """Group the images of ``folder`` (sorted by name) into request bodies of ``per_request``."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in MIME)[: max(limit, 1)]
    if not paths:
        raise LoadgenError(f"no images (.jpg, .png, .tif) in {folder}")
    files = [(p.name, p.read_bytes()) for p in paths]
    payloads: list[Payload] = []
    for start in range(0, len(files), per_request):
        group = files[start : start + per_request]
        if len(group) < per_request and payloads:
            break
        payloads.append(multipart_payload(group, field_name, extra))
    return payloads


def count_batch_items(body: bytes, outcome: Outcome) -> int:
    """Successful images in a batch answer (``results[]`` entries with an ``identification``);
    failed entries are counted in ``outcome.item_errors`` by their status."""
    try:
        results = json.loads(body).get("results", [])
    except (ValueError, AttributeError):
        outcome.item_errors["unparsable"] = outcome.item_errors.get("unparsable", 0) + 1
        return 0
    ok = 0
    for entry in results:
        if isinstance(entry, dict) and entry.get("identification") is not None:
            ok += 1
        else:
            error = entry.get("error") if isinstance(entry, dict) else None
            key = str(error.get("status", "?")) if isinstance(error, dict) else "?"
            outcome.item_errors[key] = outcome.item_errors.get(key, 0) + 1
    return ok


def check_loopback(url: str) -> tuple[str, int, str]:
    """Split ``url`` into host, port, path; refuse anything that is not a loopback address."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme != "http" or not loopback:
        raise LoadgenError(f"the load generator only targets http on loopback, not {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return host, parts.port or 80, path


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Read one HTTP/1.1 response; returns (status, body, keep_alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(chunks)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    keep_alive = headers.get("connection", "").lower() != "close"
    return status, body, keep_alive


async def _worker(
    index: int,
    host: str,
    port: int,
    request_head: bytes,
    payloads: list[Payload],
    budget: dict[str, Any],
    outcome: Outcome,
    timeout_s: float,
) -> None:
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    position = index
    while True:
        if budget["left"] <= 0 or time.perf_counter() >= budget["deadline"]:
            break
        budget["left"] -= 1
        payload = payloads[position % len(payloads)]
        position += budget["stride"]
        budget["serial"] += 1
        tag = (
            f"cites-bench {budget['run']} {budget['serial']}".encode() if budget["unique"] else None
        )
        body = payload.body(tag)
        start = time.perf_counter()
        try:
            if connection is None:
                connection = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
            connection[1].write(request_head % len(body) + body)
            status, _body, keep_alive = await asyncio.wait_for(
                _read_response(connection[0]), timeout_s
            )
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            outcome.sent += 1
            outcome.count(type(exc).__name__)
            if connection is not None:
                connection[1].close()
            connection = None
            continue
        elapsed = time.perf_counter() - start
        outcome.sent += 1
        outcome.count(str(status))
        if 200 <= status < 300:
            images = payload.images
            if budget["count_items"]:
                images = count_batch_items(_body, outcome)
            outcome.latencies_s.append(elapsed)
            outcome.images_ok += images
            outcome.done_at.append((start + elapsed, images))
        if not keep_alive:
            connection[1].close()
            connection = None
    if connection is not None:
        connection[1].close()


async def run_load(
    url: str,
    payloads: list[Payload],
    *,
    concurrency: int,
    max_requests: int,
    duration_s: float,
    headers: dict[str, str] | None = None,
    timeout_s: float = 60.0,
    warmup: int = 0,
    unique: bool = True,
    batch_answers: bool = False,
) -> dict[str, Any]:
    """Run the closed loop and return its summary (see the module docstring)."""
    if concurrency < 1 or max_requests < 1 or duration_s <= 0:
        raise LoadgenError("concurrency, requests and duration must be positive")
    host, port, path = check_loopback(url)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request_head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"{extra}Content-Length: %d\r\n\r\n"
    ).encode()
    if warmup:
        warm = Outcome()
        warm_budget = {
            "left": warmup,
            "deadline": time.perf_counter() + duration_s,
            "stride": 1,
            "serial": 0,
            "run": f"{time.time_ns()}-warmup",
            "unique": unique,
            "count_items": False,
        }
        await _worker(0, host, port, request_head, payloads, warm_budget, warm, timeout_s)
    outcome = Outcome()
    budget: dict[str, Any] = {
        "left": max_requests,
        "deadline": time.perf_counter() + duration_s,
        "stride": concurrency,
        "serial": 0,
        "run": str(time.time_ns()),
        "unique": unique,
        "count_items": batch_answers,
    }
    start = time.perf_counter()
    await asyncio.gather(
        *(
            _worker(i, host, port, request_head, payloads, budget, outcome, timeout_s)
            for i in range(concurrency)
        )
    )
    end = time.perf_counter()
    return summarise(
        outcome,
        end - start,
        concurrency,
        window_s=min(end, budget["deadline"]) - start,
        started=start,
    )


def summarise(
    outcome: Outcome,
    wall_s: float,
    concurrency: int,
    *,
    window_s: float | None = None,
    started: float = 0.0,
) -> dict[str, Any]:
    """Turn raw outcomes into the printed summary.

    Throughput counts what completed within the measurement window (start to the time limit, or
    to the end when the request limit came first), so the drain of the requests still in flight
    at the time limit does not dilute it.
    """
    ok = sum(n for s, n in outcome.statuses.items() if s.isdigit() and 200 <= int(s) < 300)
    lat_ms = [t * 1000.0 for t in outcome.latencies_s]
    window = window_s if window_s and window_s > 0 else wall_s
    in_window = [(t, n) for t, n in outcome.done_at if t - started <= window]
    images_in_window = sum(n for _, n in in_window) if outcome.done_at else outcome.images_ok
    return {
        "concurrency": concurrency,
        "requests": outcome.sent,
        "ok": ok,
        "errors": outcome.sent - ok,
        "statuses": dict(sorted(outcome.statuses.items())),
        "images_ok": outcome.images_ok,
        "item_errors": dict(sorted(outcome.item_errors.items())),
        "wall_s": wall_s,
        "window_s": window,
        "requests_per_s": (len(in_window) if outcome.done_at else ok) / window if window else 0.0,
        "images_per_s": images_in_window / window if window > 0 else 0.0,
        "p50_ms": percentile(lat_ms, 50),
        "p95_ms": percentile(lat_ms, 95),
        "p99_ms": percentile(lat_ms, 99),
        "mean_ms": sum(lat_ms) / len(lat_ms) if lat_ms else float("nan"),
    }


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the load generator."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT/path (loopback only)")
    parser.add_argument("--images", type=Path, required=True, help="folder of images to send")
    parser.add_argument("--field", default="image", help="multipart file field name")
    parser.add_argument("--per-request", type=int, default=1, help="images per request")
    parser.add_argument("--form", action="append", default=[], help="extra form field k=v")
    parser.add_argument("--header", action="append", default=[], help="extra header 'K: V'")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=200, help="stop after this many")
    parser.add_argument("--duration", type=float, default=20.0, help="stop after these seconds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests first")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    parser.add_argument("--limit-images", type=int, default=512)
    parser.add_argument(
        "--batch-answers",
        action="store_true",
        help="answers are batch answers: count the images in results[] that succeeded",
    )
    parser.add_argument(
        "--same-bytes",
        action="store_true",
        help="send the files unchanged (default: a unique JPEG comment per request, so every "
        "upload is new to a content-addressed store, as real photos are)",
    )
    return parser


def _pair(item: str, separator: str) -> tuple[str, str]:
    key, found, value = item.partition(separator)
    if not found:
        raise LoadgenError(f"expected KEY{separator}VALUE, got {item!r}")
    return key.strip(), value.strip()


def main(argv: list[str] | None = None) -> int:
    """Run one bounded load test and print its JSON summary on stdout."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        form = dict(_pair(item, "=") for item in args.form)
        headers = dict(_pair(item, ":") for item in args.header)
        payloads = build_payloads(
            args.images, args.field, args.per_request, form, args.limit_images
        )
        result = asyncio.run(
            run_load(
                args.url,
                payloads,
                concurrency=args.concurrency,
                max_requests=args.requests,
                duration_s=args.duration,
                headers=headers,
                timeout_s=args.timeout,
                warmup=args.warmup,
                unique=not args.same_bytes,
                batch_answers=args.batch_answers,
            )
        )
    except (LoadgenError, ValueError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
