"""Run a server in its own process on loopback: start, wait until ready, stop, read memory."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import REPO_ROOT, peak_rss_mib, process_tree

logger = logging.getLogger(__name__)


class ServerStartError(RuntimeError):
    """The server process exited or never answered its readiness URL."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A running server: its process, base URL and the peak memory seen so far."""

    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    pids: set[int] = field(default_factory=set)

    def refresh_pids(self) -> None:
        """Remember every process of the server's tree (workers can come and go)."""
        self.pids.update(process_tree(self.process.pid))

    def pause(self) -> None:
        """Stop the server's process group (SIGSTOP) so it takes no CPU from another server's run;
        some servers (LitServe's worker loops) poll even when idle."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Continue a paused server (SIGCONT)."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGCONT)

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the server's live processes."""
        self.refresh_pids()
        return cpu_seconds(sorted(self.pids))

    def peak_rss_mib(self) -> float:
        """Sum of the peak RSS of the server's processes (an upper bound of the true peak)."""
        self.refresh_pids()
        return peak_rss_mib(sorted(self.pids))


def cpu_seconds(pids: Sequence[int]) -> float:
    """Sum of user + system CPU seconds of ``pids`` (from ``/proc/<pid>/stat``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


def _wait_ready(server: ServerProcess, ready_path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    url = server.base_url + ready_path
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-3000:]
            raise ServerStartError(
                f"{server.name} exited with {server.process.returncode}:\n{tail}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise ServerStartError(f"{server.name} did not answer {url} within {timeout_s:.0f} s")


@contextmanager
def running_server(
    name: str,
    argv: Sequence[str],
    *,
    port: int,
    ready_path: str,
    env: Mapping[str, str] | None = None,
    log_dir: Path,
    start_timeout_s: float = 120.0,
) -> Iterator[ServerProcess]:
    """Run ``argv`` (which must listen on ``127.0.0.1:port``) until the block ends."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    full_env = {**os.environ, **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            cwd=REPO_ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(name, process, f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_ready(server, ready_path, start_timeout_s)
        server.refresh_pids()
        logger.info("%s ready at %s (pid %d)", name, server.base_url, process.pid)
        yield server
    finally:
        _stop(server)


def _stop(server: ServerProcess) -> None:
    server.resume()
    server.refresh_pids()
    if server.process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            logger.warning("%s ignored SIGTERM; killing its process group", server.name)
            with suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=10)


def python_argv(module: str, *args: str) -> list[str]:
    """``[python, -m, module, *args]`` with this interpreter."""
    return [sys.executable, "-m", module, *args]
