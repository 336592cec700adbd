"""Two real service processes sharing one PostgreSQL database and one data folder: an
activation or a rollback made through either is served by both within 5 s, and both record it
in one history."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.factories import RED, make_tiny_bundle, solid_image_bytes
from tests.service_helpers import ServiceHandle, start_postgres, start_service

FOLLOW_WITHIN_S = 5.0


def _serving(handle: ServiceHandle) -> str:
    return str(
        httpx.get(handle.url + "/readyz", timeout=5, trust_env=False).json()["model_version"]
    )


def _wait_for(handle: ServiceHandle, version: str) -> float:
    """Seconds until ``handle`` serves ``version`` (fails after FOLLOW_WITHIN_S)."""
    started = time.monotonic()
    while _serving(handle) != version:
        if time.monotonic() - started > FOLLOW_WITHIN_S:
            pytest.fail(f"{handle.url} still serves {_serving(handle)}, not {version}")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.postgres
def test_replicas_follow_activation_and_rollback(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    make_tiny_bundle(weights, version="tiny-1")
    make_tiny_bundle(weights, version="tiny-2", parent_version="tiny-1", scale=6.0)
    try:
        server = start_postgres()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    handles: list[ServiceHandle] = []
    try:
        env = {
            "DATABASE_URL": server.create_database("cites_replicas"),
            "CITES_REPLICA_POLL_S": "0.5",
        }
        data = tmp_path / "shared-data"
        first = start_service(weights / "tiny-1", data, env=env)
        handles.append(first)
        second = start_service(weights / "tiny-1", data, env=env)  # after the first migrated
        handles.append(second)
        admin = first.make_key_direct("admin", "trainer-anna")
        assert _serving(first) == _serving(second) == "tiny-1"

        done = first.client(admin).post("/v1/models/tiny-2/activate", json={"reason": "test"})
        assert done.status_code == 200, done.text
        assert _serving(first) == "tiny-2"
        assert _wait_for(second, "tiny-2") < FOLLOW_WITHIN_S

        # the other replica identifies with the new model and stores into the shared folder
        officer = second.make_key_direct("officer")
        made = second.client(officer).post(
            "/v1/identifications", files={"image": ("r.png", solid_image_bytes(RED), "image/png")}
        )
        assert made.status_code == 201, made.text
        assert made.json()["model_version"] == "tiny-2"
        got = first.client(officer).get(f"/v1/identifications/{made.json()['id']}")
        assert got.status_code == 200

        back = second.client(admin).post("/v1/models/rollback")
        assert back.status_code == 200, back.text
        assert back.json()["version"] == "tiny-1"
        assert _wait_for(first, "tiny-1") < FOLLOW_WITHIN_S

        history = first.client(admin).get("/v1/models/history").json()["items"]
        assert [(h["action"], h["from"], h["to"], h["by"]) for h in history] == [
            ("rollback", "tiny-2", "tiny-1", "trainer-anna"),
            ("activate", "tiny-1", "tiny-2", "trainer-anna"),
        ]
        assert history[1]["reason"] == "test"
    finally:
        for handle in handles:
            handle.stop()
        server.stop()
