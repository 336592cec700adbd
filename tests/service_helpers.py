"""Start the real service (uvicorn in a subprocess) on a free loopback port, for tests.

Usage::

    with running_service(bundle_dir, tmp_path / "data") as service:
        key = service.make_key("officer")
        httpx.get(service.url + "/v1/me", headers={"Authorization": f"Bearer {key}"})

The process logs to ``<data_dir>/service.log`` (``ServiceHandle.log_text()``). ``env`` adds
environment variables (e.g. ``{"CITES_BATCH_MAX_WAIT_MS": "20"}`` or ``{"DATABASE_URL": ...}``);
``extra_bundles_dir`` is the weights directory whose versions ``/v1/models`` lists and
``/v1/models/{version}/activate`` loads (default: the bundle's parent).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_command(*args: str) -> list[str]:
    """``cites-vision ARGS`` run with this interpreter."""
    return [sys.executable, "-c", "from model.cli import main; raise SystemExit(main())", *args]


@dataclass
class ServiceHandle:
    """A running service process."""

    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(repr=False)

    def make_key(self, role: str, name: str | None = None) -> str:
        """Create an API key with the CLI (as a user would) and return it."""
        done = subprocess.run(
            cli_command(
                "keys",
                "create",
                "--role",
                role,
                "--name",
                name or f"test-{role}",
                "--data-dir",
                str(self.data_dir),
            ),
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"keys create failed ({done.returncode}): {done.stderr}")
        return done.stdout.strip().splitlines()[-1]

    def make_key_direct(self, role: str, name: str | None = None) -> str:
        """Create a key in-process against the service's database (fast; for tests that need
        many keys and already cover the CLI elsewhere)."""
        from service.database import make_engine, make_sessionmaker
        from service.keys import create_key

        url = self.env.get("DATABASE_URL") or self.env.get("CITES_DATABASE_URL")
        url = url or f"sqlite:///{(self.data_dir / 'cites.sqlite3').resolve()}"
        engine = make_engine(url)
        try:
            with make_sessionmaker(engine)() as session:
                key, _info = create_key(session, name or f"test-{role}", role)
        finally:
            engine.dispose()
        return key

    def client(self, key: str | None = None, timeout: float = 60.0) -> httpx.Client:
        """An httpx client for this service, sending ``key`` as a bearer token."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout, trust_env=False)

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    @property
    def running(self) -> bool:
        """True while the process lives."""
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop gracefully (SIGTERM), killing after ``timeout``; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """Kill at once (SIGKILL), as a crash would."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def start_service(
    bundle_dir: Path,
    data_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    extra_bundles_dir: Path | None = None,
    port: int | None = None,
) -> ServiceHandle:
    """Start ``cites-vision serve`` and wait until ``/readyz`` answers 200."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CITES_")}
    full_env.pop("DATABASE_URL", None)
    full_env.update({"PYTHONUNBUFFERED": "1", "CITES_ONNX_THREADS": "1"})
    full_env.update(env or {})
    port = port or free_port()
    args = [
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--bundle",
        str(bundle_dir),
    ]
    if extra_bundles_dir is not None:
        args += ["--weights-dir", str(extra_bundles_dir)]
    log_path = data_dir / "service.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            cli_command(*args), cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    handle = ServiceHandle(f"http://127.0.0.1:{port}", data_dir, process, log_path, full_env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"service exited with {process.returncode} before ready:\n{handle.log_text()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            ready = httpx.get(handle.url + "/readyz", timeout=2, trust_env=False)
            if ready.status_code == 200:
                return handle
        if time.monotonic() > deadline:
            handle.kill()
            raise RuntimeError(f"service not ready after {START_TIMEOUT_S} s:\n{handle.log_text()}")
        time.sleep(0.1)


@contextlib.contextmanager
def running_service(
    bundle_dir: Path,
    data_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    extra_bundles_dir: Path | None = None,
) -> Iterator[ServiceHandle]:
    """A started service for the ``with`` block; stopped (or killed) afterwards."""
    handle = start_service(bundle_dir, data_dir, env=env, extra_bundles_dir=extra_bundles_dir)
    try:
        yield handle
    finally:
        handle.stop()


# ---- a throwaway PostgreSQL server ------------------------------------------------------


def find_postgres_bin() -> Path | None:
    """The folder with ``initdb``, ``pg_ctl`` and ``postgres`` (newest Debian version first)."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for name in ("/usr/local/bin", "/usr/bin"):
        candidates.append(Path(name))
    for folder in candidates:
        if all((folder / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in a temp dir, listening on loopback; trust auth for user cites."""

    bin_dir: Path
    root: Path
    port: int
    run_as: str | None

    @property
    def admin_url(self) -> str:
        """URL of the maintenance database."""
        return f"postgresql+psycopg://cites@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        """URL of ``database``."""
        return f"postgresql+psycopg://cites@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its URL."""
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=cites dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    def start(self) -> None:
        """initdb and start; raises RuntimeError with the server's words when it fails."""
        data = self.root / "data"
        sockets = self.root / "sockets"
        sockets.mkdir()
        if self.run_as is not None:
            subprocess.run(["chown", "-R", self.run_as, str(self.root)], check=True)
        done = self._run(
            "initdb",
            "-D",
            str(data),
            "-U",
            "cites",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr or done.stdout}")
        options = (
            f"-k {sockets} -p {self.port} -h 127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        done = self._run(
            "pg_ctl",
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        if done.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")
            raise RuntimeError(f"pg_ctl start failed: {done.stderr}\n{log}")

    def stop(self) -> None:
        """Stop the server at once and delete its files."""
        import shutil

        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """Start a throwaway PostgreSQL server; raises ``FileNotFoundError`` when no server binary
    is installed (``make system-deps`` installs Debian's) and RuntimeError when it fails."""
    import tempfile

    bin_dir = find_postgres_bin()
    if bin_dir is None:
        raise FileNotFoundError(
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres) in /usr/lib/postgresql/*/bin"
            " or /usr/local/bin; install Debian's postgresql package (make system-deps)"
        )
    run_as = None
    if os.geteuid() == 0:  # postgres refuses to run as root
        import pwd

        try:
            run_as = pwd.getpwnam("postgres").pw_name
        except KeyError as exc:
            raise RuntimeError("running as root and there is no 'postgres' user") from exc
    root = Path(tempfile.mkdtemp(prefix="cites-pg-"))
    os.chmod(root, 0o755)
    server = PostgresServer(bin_dir, root, free_port(), run_as)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server
