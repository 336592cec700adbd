"""Abuse suite (issue 19): one client, with or without a key, cannot take the service away from
everyone else, and the clean-edge promises of docs/security.md hold.

Every test talks to a real ``cites-vision serve`` process on loopback, often over raw sockets
(an attacker does not use a polite HTTP client). Traffic and time are bounded: bodies are
*declared* huge but only a few KiB are sent; each wait has a deadline of a few seconds. While
attacks run, an officer's identification must still be answered within its normal latency.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import stat
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.factories import solid_image
from tests.service_helpers import ServiceHandle, start_service

OFFICER_LATENCY_S = 1.0
"""An officer's identification during an attack: the tiny model answers in ~20 ms when idle."""
MEMORY_BOUND_BYTES = 64 * 1024 * 1024
"""How much the service's resident memory may grow while unauthenticated uploads hammer it."""
SERVICE_ENV = {
    "CITES_HEADER_TIMEOUT_S": "1",
    "CITES_BODY_TIMEOUT_S": "1",
    "CITES_AUTH_FAILURE_BURST": "8",
    "CITES_AUTH_FAILURES_PER_MINUTE": "6",
}


@dataclass
class Service:
    """The running service with one key per role."""

    handle: ServiceHandle
    keys: dict[str, str]

    @property
    def port(self) -> int:
        return int(self.handle.url.rsplit(":", 1)[1])

    def client(self, role: str | None = None) -> httpx.Client:
        return self.handle.client(self.keys[role] if role else None, timeout=10)

    def rss(self) -> int:
        status = Path(f"/proc/{self.handle.process.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert match is not None
        return int(match.group(1)) * 1024


@pytest.fixture(scope="module")
def service(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    handle = start_service(tiny_bundle, tmp_path_factory.mktemp("abuse"), env=SERVICE_ENV)
    try:
        keys = {role: handle.make_key_direct(role) for role in ("officer", "scanner", "admin")}
        keys["trainer"] = handle.make_key_direct("trainer", "abuse-trainer")
        yield Service(handle, keys)
    finally:
        handle.stop()


def photo(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A photo the quality gate accepts (a blank one is answered ``unusable_image``)."""
    out = io.BytesIO()
    solid_image(color, (320, 240)).save(out, "JPEG", quality=90)
    return out.getvalue()


def identify(service: Service, role: str = "officer", **fields: str) -> httpx.Response:
    with service.client(role) as client:
        return client.post(
            "/v1/identifications", files={"image": ("a.jpg", photo(), "image/jpeg")}, data=fields
        )


@contextlib.contextmanager
def raw(service: Service, timeout: float = 5.0) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=timeout)
    try:
        yield sock
    finally:
        sock.close()


def read_response(
    sock: socket.socket, deadline_s: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response (until the declared length or close)."""
    sock.settimeout(deadline_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0] else 0
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    length = int(headers.get("content-length", "0") or 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def officer_latency(service: Service) -> float:
    started = time.perf_counter()
    response = identify(service)
    assert response.status_code == 201, response.text
    return time.perf_counter() - started


# ---- finding 1: authentication before the body ------------------------------------------------


def _unauthenticated_upload(service: Service, path: str, declared: int, ctype: str) -> float:
    """Declare ``declared`` bytes, send 64 KiB, and time the answer (which must be 401)."""
    with raw(service) as sock:
        started = time.perf_counter()
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {declared}\r\n\r\n".encode()
        )
        with contextlib.suppress(OSError):
            sock.sendall(b"-" * 65536)
        status, headers, body = read_response(sock)
        elapsed = time.perf_counter() - started
    assert status == 401, body[:300]
    assert headers["content-type"].startswith("application/problem+json")
    assert headers.get("connection") == "close"  # the unread body is not drained
    assert json.loads(body)["type"].endswith("/unauthenticated")
    return elapsed


def test_unauthenticated_uploads_are_refused_before_their_body(service: Service) -> None:
    """600 MB batch and 20 MB JSON bodies without a key: 401 at once, memory flat, officers
    served on time (before the fix the 401 came only after the whole body arrived)."""
    officer_latency(service)  # warm up
    rss_before = service.rss()
    batch = "/v1/identifications:batch"
    feedback = "/v1/identifications/x/feedback"
    elapsed = [
        _unauthenticated_upload(service, batch, 600_000_000, "multipart/form-data; boundary=b"),
        _unauthenticated_upload(service, feedback, 20_000_000, "application/json"),
    ]
    assert max(elapsed) < 1.0, elapsed  # milliseconds when idle; CI machines are shared
    stop = threading.Event()
    errors: list[BaseException] = []

    def attacker() -> None:
        try:
            while not stop.is_set():
                _unauthenticated_upload(service, batch, 600_000_000, "multipart/form-data; b=x")
                time.sleep(0.05)  # a 600 MB upload each, ~60 a second together
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=attacker) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        latencies = sorted(officer_latency(service) for _ in range(5))
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert errors == []
    # the median within the normal latency; no single request stalled (the machine running the
    # tests may be shared, so one slow sample is tolerated up to three times the bound)
    assert latencies[2] < OFFICER_LATENCY_S, latencies
    assert latencies[-1] < 3 * OFFICER_LATENCY_S, latencies
    assert service.rss() - rss_before < MEMORY_BOUND_BYTES


def test_json_bodies_are_small(service: Service) -> None:
    """An officer's feedback body declared at 1 MiB gets 413 at once (the limit is 64 KiB);
    before, any body up to the 20 MiB upload limit was read and parsed."""
    with raw(service) as sock:
        started = time.perf_counter()
        sock.sendall(
            b"POST /v1/identifications/x/feedback HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + service.keys["officer"].encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{"
        )
        status, headers, body = read_response(sock)
    assert time.perf_counter() - started < 1.0
    assert status == 413 and headers["content-type"].startswith("application/problem+json")
    assert "65536" in json.loads(body)["detail"]


# ---- finding 6 and 7: headers, idle and slow sockets --------------------------------------------


def test_huge_headers_get_431_and_do_not_stall_others(service: Service) -> None:
    """A 1 MiB header (the attack used 100 MiB) is cut off at 64 KiB with a 431 problem, and
    /healthz answers meanwhile."""
    with raw(service) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with contextlib.suppress(OSError):
            for _ in range(16):
                sock.sendall(b"a" * 65536)
                with httpx.Client(base_url=service.handle.url, timeout=2) as other:
                    assert other.get("/healthz").status_code == 200
        status, headers, body = read_response(sock)
    assert status == 431, body
    assert headers["content-type"].startswith("application/problem+json")
    assert json.loads(body)["status"] == 431


def test_enormous_keys_are_refused(service: Service) -> None:
    """A 100 KB Authorization header (the attack sent 10 MB, accepted) is over the head limit;
    a 20 KB one is refused as a key without a database lookup."""
    with service.handle.client(None, timeout=5) as client:
        huge = client.get("/v1/me", headers={"Authorization": "Bearer " + "k" * 100_000})
        long = client.get("/v1/me", headers={"Authorization": "Bearer " + "k" * 20_000})
    assert huge.status_code == 431
    assert long.status_code == 401
    for response in (huge, long):
        assert response.headers["content-type"].startswith("application/problem+json")


def test_idle_and_slow_sockets_are_closed(service: Service) -> None:
    """With CITES_HEADER_TIMEOUT_S=1 / CITES_BODY_TIMEOUT_S=1: a silent connection, a head sent
    one byte at a time and a stalled body are all closed within seconds (before: never)."""
    with raw(service) as sock:  # connects, sends nothing
        started = time.perf_counter()
        status, _headers, body = read_response(sock, deadline_s=4)
        assert status == 408 and json.loads(body)["status"] == 408
        assert time.perf_counter() - started < 3
    with raw(service) as sock:  # slowloris: a byte every 0.2 s never completes the head
        started = time.perf_counter()
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100
        closed = False
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.2)
            if time.perf_counter() - started > 4:
                break
        if not closed:
            status, _headers, _body = read_response(sock, deadline_s=2)
            assert status in (0, 408)
        assert time.perf_counter() - started < 4
    with raw(service) as sock:  # a body that stalls
        sock.sendall(
            b"POST /v1/identifications HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + service.keys["officer"].encode()
            + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000\r\n\r\n"
            + b"--b\r\n"
        )
        started = time.perf_counter()
        sock.settimeout(4)
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass
        assert time.perf_counter() - started < 3.5
    assert officer_latency(service) < OFFICER_LATENCY_S


def test_the_servers_own_400_is_a_problem(service: Service) -> None:
    with raw(service) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, headers, body = read_response(sock)
    assert status == 400
    assert headers["content-type"].startswith("application/problem+json")
    assert json.loads(body)["status"] == 400


# ---- finding 14: failed keys, traced actions ---------------------------------------------


def test_failed_keys_are_throttled_per_address(service: Service) -> None:
    wrong = {"Authorization": "Bearer cv_00000000_" + "x" * 43}
    statuses = []
    with service.handle.client(None, timeout=5) as client:
        for _ in range(20):
            statuses.append(client.get("/v1/me", headers=wrong).status_code)
        throttled = client.get("/v1/me", headers=wrong)
        assert throttled.status_code == 429
        assert int(throttled.headers["retry-after"]) >= 1
        assert throttled.headers["content-type"].startswith("application/problem+json")
        # a valid key from the same address still works (no lock-out of a shared proxy address)
        valid = client.get("/v1/me", headers={"Authorization": f"Bearer {service.keys['officer']}"})
        assert valid.status_code == 200
        metrics = client.get("/metrics").text
    assert statuses.count(401) <= 8 and 429 in statuses
    match = re.search(r'cites_auth_failures_total\{reason="throttled"\} (\d+)', metrics)
    assert match and int(match.group(1)) >= 1
    assert re.search(r'cites_auth_failures_total\{reason="invalid"\} (\d+)', metrics)


def test_admin_and_trainer_actions_name_the_key(service: Service) -> None:
    version = service.client("admin").get("/v1/models/active").json()["version"]
    with service.client("admin") as admin:
        assert admin.post(f"/v1/models/{version}/activate").status_code == 200
    with service.client("trainer") as trainer:
        assert trainer.get("/v1/feedback/export").status_code == 200
    log = service.handle.log_text()
    admin_id = service.keys["admin"].split("_")[1]
    trainer_id = service.keys["trainer"].split("_")[1]
    assert re.search(rf"key {admin_id}\b.*activat\w* model {re.escape(version)}", log)
    assert re.search(rf"key {trainer_id} .*exports feedback", log)


# ---- findings 8-13 and 16: clean edges -----------------------------------------------------------


def test_control_characters_are_422(service: Service) -> None:
    created = identify(service)
    ident = created.json()["id"]
    assert identify(service, case_ref="CASE\x00-1").status_code == 422
    with service.client("officer") as client:
        note = client.post(
            f"/v1/identifications/{ident}/feedback", json={"verdict": "confirm", "note": "a\x00b"}
        )
        assert note.status_code == 422
        ok = client.post(
            f"/v1/identifications/{ident}/feedback",
            json={"verdict": "confirm", "note": "line one\nline two\tend"},
        )
        assert ok.status_code == 201
        permit = client.post(
            "/v1/verifications",
            files={"images": ("a.jpg", photo(), "image/jpeg")},
            data={"permit_number": "AB\x00123", "description": "two tusks\ncarved"},
        )
        assert permit.status_code == 422, permit.text
        assert permit.json()["type"].endswith("/control-characters")
        assert "permit_number" in permit.json()["detail"]
        assert "description" not in permit.json()["detail"]
        for url in (
            "/v1/identifications?case_ref=%00",
            "/v1/identifications?label=a%0d%0ab",
            f"/v1/identifications/{ident}%00",
            "/v1/taxa?q=%00",
        ):
            response = client.get(url)
            assert response.status_code == 422, url
            assert response.headers["content-type"].startswith("application/problem+json")


def test_log_lines_cannot_be_forged(service: Service) -> None:
    """Paths with encoded line breaks reach log lines (refused bodies, refused keys) escaped."""
    forged = "FORGED created API key deadbeef (x, role admin)".replace(" ", "%20")
    with raw(service) as sock:  # a refused body: its path is logged
        sock.sendall(
            f"POST /v1/identifications%0a{forged} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {service.keys['officer']}\r\n"
            "Content-Length: 900000000\r\n\r\n".encode()
        )
        assert read_response(sock)[0] in (413, 422)  # over the limit / control characters
    with service.handle.client("cv_00000000_" + "y" * 43, timeout=5) as wrong:
        wrong.get("/v1/taxa/a%0d%0a" + forged)
    time.sleep(0.2)
    for line in service.handle.log_text().splitlines():
        assert not line.startswith("FORGED"), line


def test_redirects_do_not_trust_the_host_header(service: Service) -> None:
    with service.client("officer") as client:
        response = client.get(
            "/v1/identifications/", headers={"Host": "evil.example"}, follow_redirects=False
        )
    assert response.status_code in (301, 302, 307, 308)
    location = response.headers["location"]
    assert "evil.example" not in location and location.startswith("/v1/identifications")
    assert not location.startswith("//")


def test_security_headers_everywhere(service: Service) -> None:
    ident = identify(service).json()["id"]
    with service.client("officer") as client:
        urls = [
            "/",
            "/static/app.css",
            "/static/js/app.js",
            f"/v1/identifications/{ident}/image",
            f"/v1/identifications/{ident}/heatmap",
            "/v1/me",
        ]
        for url in urls:
            response = client.get(url)
            assert response.status_code == 200, (url, response.text[:200])
            csp = response.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "'unsafe-inline'" not in csp
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
    with service.handle.client(None, timeout=5) as anonymous:
        refused = anonymous.get("/v1/me")
    assert refused.status_code == 401 and refused.headers["x-content-type-options"] == "nosniff"


def test_data_files_are_private(service: Service) -> None:
    identify(service)
    data_dir = service.handle.data_dir
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "cites.sqlite3").stat().st_mode) == 0o600
    images = [p for p in (data_dir / "images").rglob("*") if p.is_file()]
    folders = [p for p in (data_dir / "images").rglob("*") if p.is_dir()]
    assert images and folders
    assert {stat.S_IMODE(p.stat().st_mode) for p in images} == {0o600}
    assert {stat.S_IMODE(p.stat().st_mode) for p in folders} == {0o700}


def test_csv_export_escapes_formulas(service: Service) -> None:
    formula = '=HYPERLINK("http://evil.example","x")'
    ident = identify(service, case_ref=formula).json()["id"]
    with service.client("officer") as client:
        assert (
            client.post(
                f"/v1/identifications/{ident}/feedback", json={"verdict": "confirm"}
            ).status_code
            == 201
        )
    with service.client("trainer") as trainer:
        archive = trainer.get("/v1/feedback/export").content
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        handle = tar.extractfile("manifest.csv")
        assert handle is not None
        manifest = handle.read().decode()
    row = next(line for line in manifest.splitlines() if ident in line)
    assert "'=HYPERLINK" in row
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row.split(","))


def test_readyz_reports_an_unwritable_store(service: Service) -> None:
    images = service.handle.data_dir / "images"
    aside = images.with_name("images.aside")
    with httpx.Client(base_url=service.handle.url, timeout=5) as client:
        assert client.get("/readyz").json()["image_store"] == "writable"
        images.rename(aside)
        images.write_bytes(b"not a folder\n")
        try:
            response = client.get("/readyz")
        finally:
            images.unlink()
            aside.rename(images)
        assert response.status_code == 503
        assert "image store" in response.json()["detail"]
        assert client.get("/readyz").status_code == 200


def test_a_second_image_part_is_refused(service: Service) -> None:
    with service.client("officer") as client:
        response = client.post(
            "/v1/identifications",
            files=[
                ("image", ("a.jpg", photo(), "image/jpeg")),
                ("image", ("b.jpg", photo((10, 10, 200)), "image/jpeg")),
            ],
        )
    assert response.status_code == 422
    assert response.json()["type"].endswith("/duplicate-image-part")


def test_model_paths_are_for_admins_only(service: Service) -> None:
    server_root = str(service.handle.data_dir.parents[1])
    for role in ("officer", "scanner", "trainer"):
        with service.client(role) as client:
            listing = client.get("/v1/models")
        assert listing.status_code == 200
        assert "weights_dir" not in listing.json()
        assert all("path" not in item for item in listing.json()["items"])
        assert server_root not in listing.text
    with service.client("admin") as admin:
        listing = admin.get("/v1/models").json()
    assert listing["weights_dir"] and listing["items"][0]["path"].startswith("/")
