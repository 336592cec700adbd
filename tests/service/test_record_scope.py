"""Record scope (CITES_RECORD_SCOPE): ``all`` shares every record, ``key`` limits officer and
scanner keys to their own identifications, ``group`` to those of their key group (the part of
the key name before ``/``); trainers and admins read everything. Also: text with NUL or other
control characters is a 422 on PostgreSQL too (it used to be a 500 there)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.keys import create_key
from service.settings import Settings
from tests.service_helpers import start_postgres

KEY_NAMES = {
    "port-jane": ("antwerp-port/jane", "officer"),
    "port-omar": ("antwerp-port/omar", "officer"),
    "port-scanner": ("antwerp-port/scanner-1", "scanner"),
    "airport-li": ("brussels-airport/li", "officer"),
    "trainer": ("training", "trainer"),
    "admin": ("root", "admin"),
}


@dataclass
class Deployment:
    client: TestClient
    keys: dict[str, str]
    made_by: dict[str, str]  # identification id per key label

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def visible(self, who: str) -> set[str]:
        listed = self.client.get("/v1/identifications?limit=100", headers=self.h(who)).json()
        ids = {item["id"] for item in listed["items"]}
        for ident, owner in ((i, o) for o, i in self.made_by.items()):
            status = self.client.get(f"/v1/identifications/{ident}", headers=self.h(who))
            image = self.client.get(f"/v1/identifications/{ident}/image", headers=self.h(who))
            history = self.client.get(f"/v1/identifications/{ident}/feedback", headers=self.h(who))
            seen = status.status_code == 200
            assert seen == (ident in ids), (who, owner)
            assert image.status_code == history.status_code == (200 if seen else 404)
        return {owner for owner, ident in self.made_by.items() if ident in ids}


def photo(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def deploy(tiny_bundle: Path, tmp_path: Path) -> Iterator[object]:
    started: list[TestClient] = []

    def make(scope: str, database_url: str | None = None) -> Deployment:
        settings = Settings(
            data_dir=tmp_path / f"data-{scope}-{len(started)}",
            bundle_dir=tiny_bundle,
            onnx_threads=1,
            record_scope=scope,  # type: ignore[arg-type]
            database_url=database_url,
        )
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        started.append(client)
        keys = {}
        with client.app.state.context.sessions() as session:  # type: ignore[attr-defined]
            for label, (name, role) in KEY_NAMES.items():
                keys[label], _ = create_key(session, name, role)
        deployment = Deployment(client, keys, {})
        for label in ("port-jane", "port-omar", "port-scanner", "airport-li"):
            made = client.post(
                "/v1/identifications",
                files={"image": ("a.png", photo((200, 20, 20)), "image/png")},
                headers=deployment.h(label),
            )
            assert made.status_code == 201, made.text
            deployment.made_by[label] = made.json()["id"]
        return deployment

    yield make
    for client in started:
        client.__exit__(None, None, None)


EVERYONE = {"port-jane", "port-omar", "port-scanner", "airport-li"}


def test_scope_all_is_the_default_and_shares_everything(deploy) -> None:  # type: ignore[no-untyped-def]
    assert Settings().record_scope == "all"
    deployment = deploy("all")
    for who in ("port-jane", "airport-li", "port-scanner", "trainer"):
        assert deployment.visible(who) == EVERYONE


def test_scope_key_shows_only_the_callers_own_records(deploy) -> None:  # type: ignore[no-untyped-def]
    deployment = deploy("key")
    assert deployment.visible("port-jane") == {"port-jane"}
    assert deployment.visible("port-scanner") == {"port-scanner"}
    assert deployment.visible("airport-li") == {"airport-li"}
    assert deployment.visible("trainer") == EVERYONE
    assert deployment.visible("admin") == EVERYONE
    # feedback on someone else's record is refused as if it did not exist
    other = deployment.made_by["airport-li"]
    refused = deployment.client.post(
        f"/v1/identifications/{other}/feedback",
        json={"verdict": "confirm"},
        headers=deployment.h("port-jane"),
    )
    assert refused.status_code == 404


def test_scope_group_shows_the_records_of_the_key_group(deploy) -> None:  # type: ignore[no-untyped-def]
    deployment = deploy("group")
    port = {"port-jane", "port-omar", "port-scanner"}
    assert deployment.visible("port-jane") == port
    assert deployment.visible("port-scanner") == port
    assert deployment.visible("airport-li") == {"airport-li"}
    assert deployment.visible("trainer") == EVERYONE
    heatmap = deployment.client.get(
        f"/v1/identifications/{deployment.made_by['port-omar']}/heatmap",
        headers=deployment.h("airport-li"),
    )
    assert heatmap.status_code == 404


@pytest.mark.postgres
def test_control_characters_are_422_on_postgresql(deploy) -> None:  # type: ignore[no-untyped-def]
    try:
        server = start_postgres()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        deployment = deploy("all", server.create_database("nul_checks"))
        client, h = deployment.client, deployment.h("port-jane")
        ident = deployment.made_by["port-jane"]
        made = client.post(
            "/v1/identifications",
            files={"image": ("a.png", photo((9, 9, 9)), "image/png")},
            data={"case_ref": "CASE\x00"},
            headers=h,
        )
        assert made.status_code == 422, made.text
        bad_note = client.post(
            f"/v1/identifications/{ident}/feedback",
            json={"verdict": "correct", "taxon_id": "a\x00b", "note": "x\x00"},
            headers=h,
        )
        assert bad_note.status_code == 422, bad_note.text
        for url in (
            "/v1/identifications?case_ref=%00",
            "/v1/identifications?label=%00x",
            f"/v1/identifications/{ident}%00",
            "/v1/identifications/%00/image",
        ):
            response = client.get(url, headers=h)
            assert response.status_code == 422, (url, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
        assert client.get("/v1/identifications", headers=h).json()["total"] == 4
    finally:
        server.stop()
