"""Before/after figures of issue 19's findings 1, 6 and 7 against a real ``cites-vision serve``.

Runs the service from ``--repo`` (default: this checkout; point it at a checkout of an older
commit for the "before" figures) on loopback and measures:

- **unauthenticated uploads** (finding 1): four concurrent batch uploads without a key, each
  ``--batch-mib`` MiB in 700 parts: seconds until the 401, the service's peak resident memory
  growth, and bytes the client managed to send;
- **JSON flood** (finding 1): three clients loop 20 MB JSON bodies without a key to a feedback
  endpoint while an officer identifies: the officer's median and worst latency;
- **huge header** (finding 6): one connection sends a header of up to ``--header-mib`` MiB in
  64 KiB writes: bytes sent before the server refused, how it answered, and the worst
  ``/healthz`` latency meanwhile;
- **idle sockets** (finding 7): 200 connections that send nothing: how many are still open
  after 15 s.

Not a unit test: figures go to docs/security.md. Example::

    .venv/bin/python -m bench.security_probe --label after
    git worktree add /tmp/before <old commit>
    .venv/bin/python -m bench.security_probe --repo /tmp/before --label before
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    """A running service process."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    key: str

    def rss_bytes(self) -> int:
        """The resident memory of the service process now."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from model.cli import main; raise SystemExit(main())", *args]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(repo: Path, bundle: Path, data_dir: Path) -> Iterator[Server]:
    """Start the service of ``repo`` and make an officer key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITES_")}
    env.update({"PYTHONPATH": str(repo), "CITES_ONNX_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    done = subprocess.run(
        _cli("keys", "create", "--role", "officer", "--name", "probe", "--data-dir", str(data_dir)),
        cwd=repo, env=env, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    key = done.stdout.strip().splitlines()[-1]
    port = _free_port()
    args = ["serve", "--port", str(port), "--data-dir", str(data_dir), "--bundle", str(bundle)]
    log = (data_dir / "service.log").open("wb")
    process = subprocess.Popen(_cli(*args), cwd=repo, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"service did not start: {(data_dir / 'service.log').read_text()}")
        time.sleep(0.2)
    try:
        yield Server(url, port, process, key)
    finally:
        process.terminate()
        process.wait(30)
        log.close()


class RssSampler:
    """Samples the service's resident memory every 20 ms while in use."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak = server.rss_bytes()
        self.start = self.peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, self.server.rss_bytes())
            time.sleep(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _read_status(sock: socket.socket, timeout: float) -> int:
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    parts = data.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def unauthenticated_batch(server: Server, mib: int, parts: int = 700) -> dict[str, Any]:
    """Four concurrent keyless batch uploads of ``mib`` MiB each."""
    boundary = "probe"
    part_size = mib * 1024 * 1024 // parts
    part_head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="x.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    payload = b"\xff" * part_size
    total = parts * (len(part_head) + part_size + 2) + len(f"--{boundary}--\r\n")
    results: list[dict[str, Any]] = []

    def one() -> None:
        sent = 0
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", server.port), timeout=120) as sock:
            head = (
                f"POST /v1/identifications:batch HTTP/1.1\r\nHost: x\r\nContent-Type: "
                f"multipart/form-data; boundary={boundary}\r\nContent-Length: {total}\r\n\r\n"
            )
            sock.sendall(head.encode())
            try:
                for _ in range(parts):
                    sock.sendall(part_head + payload + b"\r\n")
                    sent += len(part_head) + part_size + 2
                sock.sendall(f"--{boundary}--\r\n".encode())
            except OSError:
                pass  # the server refused and closed: what we measure
            status = _read_status(sock, 120)
        results.append(
            {"status": status, "seconds": time.perf_counter() - started, "sent_bytes": sent}
        )

    with RssSampler(server) as rss:
        threads = [threading.Thread(target=one) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return {
        "declared_mib_each": round(total / 2**20),
        "statuses": sorted({r["status"] for r in results}),
        "seconds_to_answer_max": round(max(r["seconds"] for r in results), 3),
        "sent_mib_max": round(max(r["sent_bytes"] for r in results) / 2**20, 1),
        "rss_growth_mib": round((rss.peak - rss.start) / 2**20, 1),
    }


def _photo() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (640, 480), (180, 160, 120)).save(out, "JPEG", quality=90)
    return out.getvalue()


def _json_attacker(url: str, stop_at: float) -> None:
    """One keyless client posting 20 MB JSON bodies in a loop (run in its own process, so that
    its CPU and GIL do not slow the officer's client)."""
    body = b'{"verdict": "confirm", "note": "' + b"n" * 20_000_000 + b'"}'
    with httpx.Client(base_url=url, timeout=60) as client:
        while time.monotonic() < stop_at:
            with contextlib.suppress(httpx.HTTPError):
                client.post(
                    "/v1/identifications/x/feedback",
                    content=body,
                    headers={"Content-Type": "application/json"},
                )


def _officer_latencies(server: Server, seconds: float) -> list[float]:
    photo = _photo()
    headers = {"Authorization": f"Bearer {server.key}"}
    latencies: list[float] = []
    with httpx.Client(base_url=server.url, timeout=60) as officer:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            officer.post("/v1/identifications", files={"image": ("a.jpg", photo)}, headers=headers)
            latencies.append(time.perf_counter() - started)
    return latencies


def _single_json(server: Server) -> float:
    """Seconds from the first byte of a keyless 20 MB JSON request to its answer."""
    body = b'{"verdict": "confirm", "note": "' + b"n" * 20_000_000 + b'"}'
    head = (
        "POST /v1/identifications/x/feedback HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", server.port), timeout=120) as sock:
        sock.sendall(head)
        with contextlib.suppress(OSError):
            sock.sendall(body)
        _read_status(sock, 120)
    return time.perf_counter() - started


def json_flood(server: Server, seconds: float = 10.0) -> dict[str, Any]:
    """Officer latency alone, then while three keyless clients send 20 MB JSON bodies."""
    import multiprocessing

    _officer_latencies(server, 1.0)  # warm up
    idle = _officer_latencies(server, seconds / 2)
    context = multiprocessing.get_context("spawn")
    stop_at = time.monotonic() + seconds + 5
    attackers = [
        context.Process(target=_json_attacker, args=(server.url, stop_at)) for _ in range(3)
    ]
    for process in attackers:
        process.start()
    time.sleep(3)  # spawned interpreters import httpx and start sending
    healthz: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not stop.is_set():
                started = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    client.get("/healthz")
                healthz.append(time.perf_counter() - started)
                time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    loaded = _officer_latencies(server, seconds)
    stop.set()
    prober.join()
    for process in attackers:
        process.join(60)
    return {
        "single_20mb_json_seconds_to_401": round(_single_json(server), 3),
        "healthz_median_ms_under_flood": round(statistics.median(healthz) * 1000, 1),
        "healthz_max_ms_under_flood": round(max(healthz) * 1000, 1),
        "officer_idle_median_ms": round(statistics.median(idle) * 1000, 1),
        "officer_requests_under_flood": len(loaded),
        "officer_median_ms": round(statistics.median(loaded) * 1000, 1),
        "officer_max_ms": round(max(loaded) * 1000, 1),
    }


def huge_header(server: Server, mib: int) -> dict[str, Any]:
    """One connection sends a header of up to ``mib`` MiB; /healthz is timed meanwhile."""
    healthz: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                started = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    client.get("/healthz")
                healthz.append(time.perf_counter() - started)
                time.sleep(0.05)

    thread = threading.Thread(target=probe)
    sent = 0
    chunk = b"a" * 65536
    with RssSampler(server) as rss:
        thread.start()
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            try:
                while sent < mib * 2**20:
                    sock.sendall(chunk)
                    sent += len(chunk)
                sock.sendall(b"\r\n\r\n")
            except OSError:
                pass
            status = _read_status(sock, 60)
        elapsed = time.perf_counter() - started
        stop.set()
        thread.join()
    return {
        "header_sent_mib": round(sent / 2**20, 2),
        "status": status,
        "seconds": round(elapsed, 2),
        "healthz_max_ms": round(max(healthz) * 1000, 1) if healthz else None,
        "rss_growth_mib": round((rss.peak - rss.start) / 2**20, 1),
    }


def idle_sockets(server: Server, count: int = 200, wait_s: float = 15.0) -> dict[str, Any]:
    """How many silent connections the server still holds after ``wait_s``."""
    sockets = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(count)]
    time.sleep(wait_s)
    open_count = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            sock.recv(65536)  # b"" (closed) or a 408 answer before the close: not held
        except BlockingIOError:
            open_count += 1  # nothing to read and not closed: still held open
        except OSError:
            pass
        sock.close()
    return {"connections": count, "still_open_after_s": wait_s, "still_open": open_count}


def main(argv: list[str] | None = None) -> int:
    """Run the probes and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose service to run")
    parser.add_argument("--bundle", type=Path, default=REPO / "weights" / "default")
    parser.add_argument("--label", default="after")
    parser.add_argument("--batch-mib", type=int, default=150)
    parser.add_argument("--header-mib", type=int, default=100)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results: dict[str, Any] = {"label": args.label, "repo": str(args.repo)}
    with (
        tempfile.TemporaryDirectory(prefix="cites-probe-") as tmp,
        serve(args.repo.resolve(), args.bundle.resolve(), Path(tmp) / "data") as server,
    ):
        results["unauthenticated_batch"] = unauthenticated_batch(server, args.batch_mib)
        logger.info("%s", results)
        results["json_flood"] = json_flood(server)
        logger.info("%s", results)
        results["huge_header"] = huge_header(server, args.header_mib)
        logger.info("%s", results)
        results["idle_sockets"] = idle_sockets(server)
    sys.stdout.write(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
