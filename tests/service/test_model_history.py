"""Activation history, rollback and feedback conflicts through the API (in-process app), and
the ``models`` / ``feedback`` CLI against them."""

from __future__ import annotations

import csv
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from model.cli import main
from service.app import create_app
from service.keys import create_key
from service.settings import Settings
from tests.factories import BLUE, GREEN, RED, make_tiny_bundle, solid_image_bytes
from tests.service.test_xray import XRAY_LABELS

PROBLEM = "application/problem+json"


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str], Settings]]:
    """An app on tiny-1 with tiny-2 beside it, and one key per role (named role-name)."""
    weights = tmp_path / "weights"
    make_tiny_bundle(weights, version="tiny-1")
    make_tiny_bundle(weights, version="tiny-2", parent_version="tiny-1", scale=6.0)
    settings = Settings(
        data_dir=tmp_path / "data", bundle_dir=weights / "tiny-1", onnx_threads=1, replica_poll_s=0
    )
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        keys = {}
        with app.state.context.sessions() as session:
            for role in ("officer", "trainer", "admin"):
                keys[role], _ = create_key(session, f"{role}-name", role)
            keys["officer2"], _ = create_key(session, "officer-two", "officer")
        yield client, keys, settings


def _h(keys: dict[str, str], role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys[role]}"}


def test_activation_and_rollback_are_recorded(app_client: Any) -> None:
    client, keys, _ = app_client
    nothing = client.post("/v1/models/rollback", headers=_h(keys, "admin"))
    assert nothing.status_code == 409 and nothing.headers["content-type"].startswith(PROBLEM)
    assert "tiny-1" in nothing.json()["detail"]
    done = client.post(
        "/v1/models/tiny-2/activate", headers=_h(keys, "admin"), json={"reason": "better"}
    )
    assert done.status_code == 200, done.text
    assert client.get("/readyz").json()["model_version"] == "tiny-2"
    # only an admin may roll back
    assert client.post("/v1/models/rollback", headers=_h(keys, "trainer")).status_code == 403
    back = client.post("/v1/models/rollback", headers=_h(keys, "admin"))
    assert back.status_code == 200 and back.json()["version"] == "tiny-1"
    assert client.get("/readyz").json()["model_version"] == "tiny-1"
    history = client.get("/v1/models/history", headers=_h(keys, "officer")).json()["items"]
    assert [(h["action"], h["from"], h["to"], h["by"]) for h in history] == [
        ("rollback", "tiny-2", "tiny-1", "admin-name"),
        ("activate", "tiny-1", "tiny-2", "admin-name"),
    ]
    assert history[1]["reason"] == "better" and history[0]["at"].endswith("Z")
    # rollbacks stack: a second one finds nothing earlier than tiny-1 (no ping-pong)
    again = client.post("/v1/models/rollback", headers=_h(keys, "admin"))
    assert again.status_code == 409 and again.json()["type"].endswith("/nothing-to-roll-back")
    # tiny-1 -> tiny-2 -> tiny-1 (activated) then one rollback returns to tiny-2
    for version in ("tiny-2", "tiny-1"):
        client.post(f"/v1/models/{version}/activate", headers=_h(keys, "admin"))
    assert (
        client.post("/v1/models/rollback", headers=_h(keys, "admin")).json()["version"] == "tiny-2"
    )
    assert (
        client.post("/v1/models/rollback", headers=_h(keys, "admin")).json()["version"] == "tiny-1"
    )
    long_reason = client.post(
        "/v1/models/tiny-2/activate", headers=_h(keys, "admin"), json={"reason": "x" * 1001}
    )
    assert long_reason.status_code == 422


def _camera_and_two_xray_bundles(tmp_path: Path) -> Settings:
    """Settings serving camera bundle tiny-1, with x-ray bundles xray-1 and xray-2 beside it."""
    weights = tmp_path / "weights"
    make_tiny_bundle(weights, version="tiny-1")
    for version in ("xray-1", "xray-2"):
        make_tiny_bundle(weights, version=version, labels=XRAY_LABELS, modalities=("xray",))
    return Settings(
        data_dir=tmp_path / "data", bundle_dir=weights / "tiny-1", onnx_threads=1, replica_poll_s=0
    )


def test_xray_activations_have_their_own_history_and_rollback(tmp_path: Path) -> None:
    """An x-ray activation is recorded with its modality, the history can be filtered by it, and
    a rollback of the x-ray model leaves the camera model alone (and the other way round)."""
    settings = _camera_and_two_xray_bundles(tmp_path)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        with app.state.context.sessions() as session:
            admin, _ = create_key(session, "admin-name", "admin")
        headers = {"Authorization": f"Bearer {admin}"}
        none_yet = client.post("/v1/models/rollback?modality=xray", headers=headers)
        assert none_yet.status_code == 409 and "xray" in none_yet.json()["detail"]
        for version in ("xray-1", "xray-2"):
            done = client.post(f"/v1/models/{version}/activate?modality=xray", headers=headers)
            assert done.status_code == 200, done.text
        history = client.get("/v1/models/history?modality=xray", headers=headers).json()["items"]
        assert [(h["modality"], h["from"], h["to"]) for h in history] == [
            ("xray", "xray-1", "xray-2"),
            ("xray", None, "xray-1"),
        ]
        assert client.get("/v1/models/history?modality=camera", headers=headers).json() == {
            "items": []
        }
        camera_back = client.post("/v1/models/rollback", headers=headers)
        assert camera_back.status_code == 409  # the camera model was never changed
        back = client.post("/v1/models/rollback?modality=xray", headers=headers)
        assert back.status_code == 200 and back.json()["version"] == "xray-1"
        active = client.get("/v1/models/active", headers=headers).json()["by_modality"]
        assert active["xray"]["version"] == "xray-1" and active["camera"]["version"] == "tiny-1"
        everything = client.get("/v1/models/history", headers=headers).json()["items"]
        assert (everything[0]["modality"], everything[0]["action"]) == ("xray", "rollback")
    # a restart serves the x-ray version the history ended on
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        active = client.get("/v1/models/active", headers=headers).json()["by_modality"]
        assert active["xray"]["version"] == "xray-1"


def test_a_replica_follows_an_xray_activation_made_elsewhere(tmp_path: Path) -> None:
    """The follower reads the persisted x-ray choice too: an activation recorded by another
    replica (here written straight into the shared database) is served after one poll."""
    from service.activations import Change, record_change
    from service.replicas import ActiveVersionFollower

    settings = _camera_and_two_xray_bundles(tmp_path)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        context = app.state.context
        with context.sessions() as session:
            record_change(
                session,
                Change("activate", None, "other-replica", None, None, "xray-2", "xray-2",
                       modality="xray"),
            )  # fmt: skip
        follower = ActiveVersionFollower(context.host, context.sessions, 0)
        assert client.portal is not None
        assert client.portal.call(follower.check_once) is True
        assert context.host.current_for("xray").version == "xray-2"
        assert context.host.current_for("camera").version == "tiny-1"
        assert client.portal.call(follower.check_once) is False  # nothing new


def _identify(client: TestClient, keys: dict[str, str], colour: tuple[int, int, int]) -> str:
    made = client.post(
        "/v1/identifications",
        headers=_h(keys, "officer"),
        files={"image": ("x.png", solid_image_bytes(colour), "image/png")},
    )
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def _feedback(client: TestClient, keys: dict[str, str], who: str, ident: str, **body: Any) -> None:
    done = client.post(f"/v1/identifications/{ident}/feedback", headers=_h(keys, who), json=body)
    assert done.status_code in (200, 201), done.text


def _export(client: TestClient, keys: dict[str, str]) -> tuple[list[dict[str, str]], list[Any]]:
    archive = client.get("/v1/feedback/export", headers=_h(keys, "trainer"))
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        files = {}
        for name in ("manifest.csv", "conflicts.csv"):
            handle = tar.extractfile(name)
            assert handle is not None
            files[name] = list(csv.DictReader(io.TextIOWrapper(handle, encoding="utf-8")))
    return files["manifest.csv"], files["conflicts.csv"]


def test_disagreeing_officers_make_a_conflict_until_a_trainer_resolves_it(
    app_client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client, keys, settings = app_client
    red = _identify(client, keys, RED)
    red_again = _identify(client, keys, RED)  # the same image identified twice
    green = _identify(client, keys, GREEN)
    blue = _identify(client, keys, BLUE)
    _feedback(client, keys, "officer", red, verdict="confirm")  # ivory
    _feedback(client, keys, "officer2", red_again, verdict="correct", label="ceramic")
    _feedback(client, keys, "officer", green, verdict="confirm")
    _feedback(client, keys, "officer2", green, verdict="confirm")  # agreement: no conflict
    _feedback(client, keys, "officer", blue, verdict="correct", label="ivory")
    _feedback(client, keys, "officer", blue, verdict="confirm")  # one officer changing mind

    rows, conflicts = _export(client, keys)
    assert {r["label"] for r in rows} == {"rosewood", "ceramic"}  # green and blue only
    assert len(conflicts) == 1
    sha = conflicts[0]["sha256"]
    assert conflicts[0]["labels"] == "ceramic;ivory"
    assert "officer-name" in conflicts[0]["officers"] and "officer-two" in conflicts[0]["officers"]
    listed = client.get("/v1/feedback/conflicts", headers=_h(keys, "trainer")).json()["items"]
    assert [c["sha256"] for c in listed] == [sha]
    assert client.get("/v1/feedback/conflicts", headers=_h(keys, "officer")).status_code == 403

    bad = client.post(
        f"/v1/feedback/conflicts/{'0' * 64}/resolve",
        headers=_h(keys, "trainer"),
        json={"label": "x"},
    )
    assert bad.status_code == 404 and bad.headers["content-type"].startswith(PROBLEM)
    assert (
        client.post(
            "/v1/feedback/conflicts/nothex/resolve",
            headers=_h(keys, "trainer"),
            json={"label": "x"},
        ).status_code
        == 422
    )
    # the CLI lists it and a trainer resolves it there
    data_dir = ["--data-dir", str(settings.data_dir)]
    assert main(["feedback", "conflicts", *data_dir]) == 0
    assert sha in capsys.readouterr().out
    assert main(["feedback", "resolve", sha, "--label", "ivory", "--by", "lead", *data_dir]) == 0
    assert main(["feedback", "conflicts", *data_dir]) == 0
    assert "no conflicts" in capsys.readouterr().out
    rows, conflicts = _export(client, keys)
    assert conflicts == []
    red_rows = [r for r in rows if r["label"] == "ivory"]
    assert len(red_rows) == 1  # the resolved image once, with the trainer's label
    assert main(["feedback", "resolve", "f" * 64, "--label", "ivory", *data_dir]) != 0
