"""Roles: every role against every operation of the API (the matrix of docs/api.md), against a
real service process; missing, unknown and revoked keys are refused at once; keys never show up
in responses or in the service's logs after they were created."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests import hostile
from tests.service_helpers import ServiceHandle, running_service

logger = logging.getLogger(__name__)

ROLES = ("officer", "scanner", "trainer", "admin")
ALL = frozenset(ROLES)

#: Which roles may call which operation (docs/api.md, "Roles"). Every ``/v1`` operation of the
#: OpenAPI schema must be listed here, so a new route cannot slip in without a decision.
MATRIX: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/v1/me"): ALL,
    ("GET", "/v1/taxa"): ALL,
    ("GET", "/v1/taxa/{taxon_id}"): ALL,
    ("GET", "/v1/models"): ALL,
    ("GET", "/v1/models/active"): ALL,
    ("POST", "/v1/identifications"): frozenset({"officer", "scanner", "admin"}),
    ("POST", "/v1/identifications:batch"): frozenset({"scanner", "admin"}),
    ("POST", "/v1/identifications:views"): frozenset({"officer", "scanner", "admin"}),
    ("GET", "/v1/identifications"): ALL,
    ("GET", "/v1/identifications/{identification_id}"): ALL,
    ("GET", "/v1/identifications/{identification_id}/image"): ALL,
    ("GET", "/v1/identifications/{identification_id}/heatmap"): ALL,
    ("GET", "/v1/identifications/{identification_id}/located"): ALL,
    ("GET", "/v1/identifications/{identification_id}/feedback"): ALL,
    ("POST", "/v1/identifications/{identification_id}/feedback"): frozenset(
        {"officer", "trainer", "admin"}
    ),
    ("GET", "/v1/feedback/export"): frozenset({"trainer", "admin"}),
    ("POST", "/v1/verifications"): frozenset({"officer", "scanner", "admin"}),
    ("GET", "/v1/verifications"): ALL,
    ("GET", "/v1/verifications/{verification_id}"): ALL,
    ("POST", "/v1/models/{version}/activate"): frozenset({"admin"}),
    ("POST", "/v1/models/rollback"): frozenset({"admin"}),
    ("GET", "/v1/models/history"): ALL,
    ("GET", "/v1/models/active/offline-package"): ALL,
    ("GET", "/v1/models/active/offline-model"): ALL,
    ("GET", "/v1/feedback/conflicts"): frozenset({"trainer", "admin"}),
    ("POST", "/v1/feedback/conflicts/{sha256}/resolve"): frozenset({"trainer", "admin"}),
}
PUBLIC = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/")


@dataclass
class Context:
    """The running service, one key per role, and ids that valid requests can refer to."""

    handle: ServiceHandle
    keys: dict[str, str]
    identification_id: str
    taxon_id: str
    version: str
    verification_id: str = ""
    image_sha256: str = ""
    seen: list[str] = field(default_factory=list)  # every response body and header seen

    def client(self, key: str | None = None, header: str = "authorization") -> httpx.Client:
        """A client that sends ``key`` (or none) the way ``header`` says."""
        headers: dict[str, str] = {}
        if key is not None:
            headers = (
                {"Authorization": f"Bearer {key}"}
                if header == "authorization"
                else {"X-API-Key": key}
            )
        return httpx.Client(base_url=self.handle.url, headers=headers, timeout=60)

    def record(self, response: httpx.Response) -> httpx.Response:
        """Keep what the service said, to look for leaked keys afterwards."""
        self.seen.append(response.text if _is_text(response) else "")
        self.seen.append(repr(dict(response.headers)))
        return response


def _is_text(response: httpx.Response) -> bool:
    ctype = str(response.headers.get("content-type", ""))
    return ctype.startswith(("application/json", "application/problem", "text/"))


def _jpeg(seed: int) -> tuple[str, bytes, str]:
    return (f"r{seed}.jpg", hostile.image_bytes(seed=seed), "image/jpeg")


Request = Callable[[httpx.Client, Context, int], httpx.Response]


def _path(template: str, ctx: Context) -> str:
    return (
        template.replace("{identification_id}", ctx.identification_id)
        .replace("{taxon_id}", ctx.taxon_id)
        .replace("{version}", ctx.version)
        .replace("{verification_id}", ctx.verification_id)
        .replace("{sha256}", ctx.image_sha256)
    )


PERMIT = {
    "permit_number": "26KE000001",
    "permit_type": "export",
    "issuing_country": "KE",
    "country_of_export": "KE",
    "country_of_import": "FR",
    "scientific_name": "Loxodonta africana",
    "appendix": "I",
    "source_code": "W",
    "purpose_code": "S",
    "valid_until": "2099-12-31",
}
"""Declared data of a valid permit, for the operations that need one."""


def _request_for(method: str, template: str) -> Request:
    """A valid request for the operation, so that only the role decides the answer."""

    def send(client: httpx.Client, ctx: Context, seed: int) -> httpx.Response:
        path = _path(template, ctx)
        if template == "/v1/identifications" and method == "POST":
            return client.post(path, files={"image": _jpeg(seed)})
        if template == "/v1/verifications" and method == "POST":
            return client.post(path, data=PERMIT, files=[("images", _jpeg(seed))])
        if template.endswith((":batch", ":views")):
            return client.post(path, files=[("images", _jpeg(seed)), ("images", _jpeg(seed + 1))])
        if template.endswith("/feedback") and method == "POST":
            return client.post(path, json={"verdict": "confirm", "note": "role matrix"})
        if template == "/v1/taxa":
            return client.get(path, params={"q": "elephant"})
        if template.endswith("/resolve"):
            return client.post(path, json={"label": ctx.taxon_id, "note": "role matrix"})
        if template == "/v1/models/rollback":
            # something to roll back to: the active version activated (again) by an admin
            with ctx.client(ctx.keys["admin"]) as admin:
                again = admin.post(_path("/v1/models/{version}/activate", ctx))
                assert again.status_code == 200, again.text
        return client.request(method, path)

    return send


@pytest.fixture(scope="module")
def ctx(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    """A server, a key for every role, an identification and a taxon id."""
    data_dir = tmp_path_factory.mktemp("roles-data")
    # this module sends a wrong key to every operation: more than the default burst of wrong
    # keys per address, whose throttling (429) tests/service/test_abuse.py checks
    no_throttle = {"CITES_AUTH_FAILURE_BURST": "100000"}
    with running_service(tiny_bundle, data_dir, env=no_throttle) as handle:
        keys = {role: handle.make_key(role) for role in ROLES}
        with httpx.Client(
            base_url=handle.url, headers={"Authorization": f"Bearer {keys['admin']}"}, timeout=60
        ) as admin:
            made = admin.post("/v1/identifications", files={"image": _jpeg(1)})
            assert made.status_code == 201, made.text
            active = admin.get("/v1/models/active").json()
            taxon_id = next(lab["taxon_id"] for lab in active["labels"] if lab["taxon_id"])
            checked = admin.post("/v1/verifications", data=PERMIT, files=[("images", _jpeg(2))])
            assert checked.status_code == 201, checked.text
        yield Context(
            handle,
            keys,
            made.json()["id"],
            taxon_id,
            active["version"],
            checked.json()["id"],
            image_sha256=made.json()["image"]["sha256"],
        )


def test_matrix_covers_every_operation(ctx: Context) -> None:
    """The OpenAPI schema has exactly the operations of the matrix (plus public ones)."""
    schema = httpx.get(ctx.handle.url + "/openapi.json", timeout=30).json()
    operations = {
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"} and path.startswith("/v1")
    }
    normalised = {(m, _normalise(p)) for m, p in operations}
    expected = {(m, _normalise(p)) for m, p in MATRIX}
    assert normalised == expected, {
        "in the API, not in the matrix": sorted(normalised - expected),
        "in the matrix, not in the API": sorted(expected - normalised),
    }


def _normalise(path: str) -> str:
    """Path parameters' names do not matter: ``/x/{id}`` == ``/x/{identification_id}``."""
    return "/".join("{}" if part.startswith("{") else part for part in path.split("/"))


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("method", "template"), list(MATRIX), ids=[f"{m} {p}" for m, p in MATRIX])
def test_role_matrix(ctx: Context, role: str, method: str, template: str) -> None:
    """Allowed roles get a 2xx, the others a 403 problem; no answer is 401 or 5xx."""
    allowed = role in MATRIX[(method, template)]
    seed = 100 + ROLES.index(role) * 50 + list(MATRIX).index((method, template))
    with ctx.client(ctx.keys[role]) as client:
        response = ctx.record(_request_for(method, template)(client, ctx, seed))
    if allowed and template.endswith("/located"):  # a camera answer has no box: 404, not 403
        assert response.status_code == 404, (role, method, template, response.text[:300])
        assert response.json()["type"].endswith("no-location")
    elif allowed:
        assert 200 <= response.status_code < 300, (role, method, template, response.text[:300])
    else:
        assert response.status_code == 403, (role, method, template, response.text[:300])
        assert response.headers["content-type"].startswith(hostile.PROBLEM_MEDIA_TYPE)
        assert role in response.json()["detail"] or "role" in response.json()["detail"]


@pytest.mark.parametrize(("method", "template"), list(MATRIX), ids=[f"{m} {p}" for m, p in MATRIX])
@pytest.mark.parametrize(
    "presented",
    ["none", "garbage", "wrong_secret", "empty_bearer", "basic_scheme"],
)
def test_without_a_valid_key_every_operation_is_401(
    ctx: Context, method: str, template: str, presented: str
) -> None:
    """No key, a malformed key or a wrong secret for a real key id: 401 with a challenge."""
    key_id = ctx.keys["admin"].split("_")[1]
    headers = {
        "none": {},
        "garbage": {"Authorization": "Bearer not-a-key"},
        "wrong_secret": {"Authorization": f"Bearer cv_{key_id}_{'A' * 43}"},
        "empty_bearer": {"Authorization": "Bearer"},
        "basic_scheme": {"Authorization": "Basic YWRtaW46YWRtaW4="},
    }[presented]
    with httpx.Client(base_url=ctx.handle.url, headers=headers, timeout=60) as client:
        response = ctx.record(_request_for(method, template)(client, ctx, 7))
    assert response.status_code == 401, (presented, method, template, response.text[:300])
    assert response.headers["content-type"].startswith(hostile.PROBLEM_MEDIA_TYPE)
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")


def test_x_api_key_header_is_accepted(ctx: Context) -> None:
    """``X-API-Key`` works like ``Authorization: Bearer``."""
    with ctx.client(ctx.keys["officer"], header="x-api-key") as client:
        response = ctx.record(client.get("/v1/me"))
    assert response.status_code == 200
    assert response.json()["role"] == "officer"


@pytest.mark.parametrize("path", PUBLIC)
def test_public_endpoints_need_no_key(ctx: Context, path: str) -> None:
    """Health, readiness, metrics and the API description answer without a key."""
    response = ctx.record(httpx.get(ctx.handle.url + path, timeout=30))
    assert response.status_code == 200, (path, response.text[:200])


def test_revoked_key_is_refused_at_once(ctx: Context) -> None:
    """A key revoked with the CLI while the server runs fails on the very next request."""
    key = ctx.handle.make_key("officer")
    with ctx.client(key) as client:
        assert client.get("/v1/me").status_code == 200
        key_id = key.split("_")[1]
        _cli(ctx.handle.env, "keys", "revoke", key_id, "--data-dir", str(ctx.handle.data_dir))
        response = ctx.record(client.get("/v1/me"))
        assert response.status_code == 401, response.text
        assert client.post("/v1/identifications", files={"image": _jpeg(3)}).status_code == 401


def test_keys_never_leak_in_responses(ctx: Context) -> None:
    """No response seen by this module (all roles, all operations) contains a key or secret."""
    assert ctx.seen, "run with the other tests of this module"
    secrets = [key.split("_", 2)[2] for key in ctx.keys.values()]
    for text in ctx.seen:
        for secret in secrets:
            assert secret not in text


def test_keys_never_leak_in_logs(ctx: Context) -> None:
    """The server's log (requests with good, bad and revoked keys) never holds a secret."""
    log = ctx.handle.log_text()
    assert log.strip(), "the service wrote no log at all"
    secrets = [key.split("_", 2)[2] for key in ctx.keys.values()] + ["A" * 43]
    for secret in secrets:
        assert secret not in log


def test_keys_list_never_shows_secrets(ctx: Context) -> None:
    """``keys list`` shows ids, names and roles, never a secret."""
    out = _cli(ctx.handle.env, "keys", "list", "--data-dir", str(ctx.handle.data_dir))
    for role, key in ctx.keys.items():
        assert key.split("_")[1] in out
        assert key.split("_", 2)[2] not in out, role


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "model.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr
