"""``/v1/verifications`` end to end in-process (FastAPI TestClient, the tiny real ONNX bundle):
verdicts per image, each permit-only check, refused codes in the caller's language, storage
with the case, list and read back, roles."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.keys import create_key
from service.settings import Settings
from tests.factories import GREEN, MAGENTA, RED, solid_image_bytes

PROBLEM = "application/problem+json"

ELEPHANT_FROM_KENYA = {
    "permit_number": "26KE000042",
    "permit_type": "export",
    "issuing_country": "KE",
    "country_of_export": "KE",
    "country_of_import": "FR",
    "scientific_name": "Loxodonta africana",
    "appendix": "I",
    "source_code": "W",
    "purpose_code": "S",
    "description": "carved tusk",
    "quantity": "1",
    "unit": "PCS",
    "valid_from": "2026-01-01",
    "valid_until": "2099-12-31",
}
MAHOGANY_FROM_PERU = {
    **ELEPHANT_FROM_KENYA,
    "permit_number": "26PE000123",
    "issuing_country": "PE",
    "country_of_export": "PE",
    "scientific_name": "Swietenia macrophylla",
    "appendix": "II",
    "purpose_code": "T",
    "description": "sawn wood",
    "quantity": "12.5",
    "unit": "MTQ",
}


@dataclass
class Api:
    client: TestClient
    keys: dict[str, str]

    def verify(
        self,
        permit: dict[str, str],
        colors: tuple[tuple[int, int, int], ...] = (RED,),
        role: str = "officer",
        language: str = "en",
        **extra: str,
    ) -> httpx.Response:
        files = [
            ("images", (f"{i}.png", solid_image_bytes(c), "image/png"))
            for i, c in enumerate(colors)
        ]
        return self.client.post(
            "/v1/verifications",
            headers={"Authorization": f"Bearer {self.keys[role]}", "Accept-Language": language},
            data={**permit, **extra},
            files=files,
        )

    def get(self, path: str, role: str = "trainer", **params: Any) -> httpx.Response:
        return self.client.get(
            path, headers={"Authorization": f"Bearer {self.keys[role]}"}, params=params
        )


@pytest.fixture(scope="module")
def api(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        bundle_dir=tiny_bundle,
        onnx_threads=1,
        decode_workers=1,
    )
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        with app.state.context.sessions() as session:
            keys = {
                role: create_key(session, f"test-{role}", role)[0]
                for role in ("officer", "scanner", "trainer", "admin")
            }
        yield Api(client, keys)


def check(body: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in body["checks"] if c["check"] == name)


def test_matching_image_and_permit_are_consistent(api: Api) -> None:
    response = api.verify(ELEPHANT_FROM_KENYA, case_ref="CASE-V1")
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["Location"] == f"/v1/verifications/{body['id']}"
    assert body["verdict"] == "consistent", body["reasons"]
    assert body["applicable_appendix"] == "I" and body["origin_country"] == "KE"
    assert body["listing"]["verified"] is True
    assert [c["outcome"] for c in body["checks"]] == ["consistent"] * 3
    image = body["images"][0]
    assert image["verdict"] == "consistent"
    assert image["reason"].startswith("declared Loxodonta africana, Appendix I; the image suggests")
    # the image's identification is stored with the case and can be read on its own
    ident = api.get(image["identification_url"]).json()
    assert ident["case_ref"] == "CASE-V1" and ident["origin_country"] == "KE"


def test_image_of_another_taxon_is_inconsistent_with_the_reason(api: Api) -> None:
    body = api.verify(MAHOGANY_FROM_PERU, (GREEN, MAGENTA)).json()
    assert body["verdict"] == "inconsistent"
    first, second = body["images"]
    assert first["verdict"] == "inconsistent"
    assert first["reason"].startswith(
        "declared Swietenia macrophylla, Appendix II; the image suggests Dalbergia latifolia "
        "(0.99), Appendix II"
    )
    assert second["verdict"] == "inconclusive" and "refer to an expert" in second["reason"]
    # the mahogany population row was verified (V-old, taxonomy check of 2026-12-02)
    assert body["listing"]["verified"] is True
    assert body["listing"]["verification"] == "V-old"
    assert "listing_source" not in {c["check"] for c in body["checks"]}


def test_an_appendix_from_a_recalled_row_is_flagged(api: Api) -> None:
    tiger = {**ELEPHANT_FROM_KENYA, "scientific_name": "Panthera tigris", "country_of_export": "IN"}
    body = api.verify(tiger, (MAGENTA,)).json()
    assert body["listing"] == {**body["listing"], "verified": False, "verification": "R"}
    flagged = check(body, "listing_source")
    assert flagged["outcome"] == "inconclusive"
    assert flagged["reason"].startswith("caution: the taxonomy row for Panthera tigris")
    assert body["verdict"] == "inconclusive"


@pytest.mark.parametrize(
    ("overrides", "name", "words"),
    [
        ({"appendix": "II", "purpose_code": "P"}, "appendix", "declared Appendix II, but"),
        ({"valid_from": "2025-01-01", "valid_until": "2025-06-30"}, "validity", "expired"),
        ({"purpose_code": "T"}, "purpose", "purpose T (commercial) is not allowed"),
    ],
)
def test_each_permit_only_check_makes_the_verdict_inconsistent(
    api: Api, overrides: dict[str, str], name: str, words: str
) -> None:
    body = api.verify({**ELEPHANT_FROM_KENYA, **overrides}).json()
    assert body["verdict"] == "inconsistent"
    found = check(body, name)
    assert found["outcome"] == "inconsistent" and words in found["reason"]
    assert found["reason"] in body["reasons"]
    assert body["images"][0]["verdict"] == "consistent"  # the image itself still matches


def test_unknown_codes_are_refused_in_the_callers_language(api: Api) -> None:
    response = api.verify(
        {**ELEPHANT_FROM_KENYA, "purpose_code": "K", "country_of_import": "XX"}, language="fr"
    )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["title"] == "Données de permis non valides"
    assert "code inconnu 'K'" in problem["detail"]
    assert {tuple(e["loc"]) for e in problem["errors"]} == {
        ("body", "purpose_code"),
        ("body", "country_of_import"),
    }
    spanish = api.verify({**ELEPHANT_FROM_KENYA, "source_code": "Y"}, language="es").json()
    assert "código desconocido 'Y'" in spanish["detail"]


def test_missing_images_and_roles(api: Api) -> None:
    response = api.client.post(
        "/v1/verifications",
        headers={"Authorization": f"Bearer {api.keys['officer']}"},
        data=ELEPHANT_FROM_KENYA,
    )
    assert response.status_code == 422
    assert api.verify(ELEPHANT_FROM_KENYA, role="trainer").status_code == 403
    assert api.verify(ELEPHANT_FROM_KENYA, role="scanner").status_code == 201


def test_verifications_are_listed_and_read_back_in_any_language(api: Api) -> None:
    made = api.verify(ELEPHANT_FROM_KENYA, case_ref="CASE-LIST", purpose_code="T").json()
    listed = api.get("/v1/verifications", case_ref="CASE-LIST").json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == made["id"]
    assert (
        api.get("/v1/verifications", verdict="inconsistent", case_ref="CASE-LIST").json()["total"]
        == 1
    )
    assert (
        api.get("/v1/verifications", verdict="consistent", case_ref="CASE-LIST").json()["total"]
        == 0
    )
    spanish = api.client.get(
        f"/v1/verifications/{made['id']}",
        headers={"Authorization": f"Bearer {api.keys['trainer']}", "Accept-Language": "es"},
    ).json()
    assert spanish["verdict"] == "inconsistent"
    assert "el propósito T (comercial) no está permitido" in check(spanish, "purpose")["reason"]
    assert spanish["declared_taxon"]["common_name"] == "elefante africano"
    missing = api.get("/v1/verifications/nope")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith(PROBLEM)


def test_identifications_flag_an_appendix_from_an_unverified_row(api: Api) -> None:
    def identify(color: tuple[int, int, int]) -> dict[str, Any]:
        response = api.client.post(
            "/v1/identifications",
            headers={"Authorization": f"Bearer {api.keys['officer']}"},
            files={"image": ("x.png", solid_image_bytes(color), "image/png")},
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    rosewood = identify(GREEN)["decision"]  # Dalbergia latifolia: "inherits #15" is recalled
    assert rosewood["appendix"] == "II"
    assert rosewood["listing"]["verified"] is False
    assert rosewood["listing"]["row"] == "taxa.tsv dalbergia-latifolia"
    ivory = identify(RED)
    assert ivory["decision"]["listing"]["verified"] is True
    assert all("listing" in candidate for candidate in ivory["top_k"])


def test_taxon_lookup_with_an_origin_names_the_listing_row(api: Api) -> None:
    body = api.get("/v1/taxa/swietenia-macrophylla", origin_country="PE").json()
    listing = body["appendix_for_origin"]["listing"]
    assert listing["row"].startswith("populations.tsv swietenia-macrophylla II")
    assert listing["verified"] is (listing["verification"] != "R")


def test_an_unreadable_image_gives_an_inconclusive_entry_with_the_problem(api: Api) -> None:
    response = api.client.post(
        "/v1/verifications",
        headers={"Authorization": f"Bearer {api.keys['officer']}"},
        data=ELEPHANT_FROM_KENYA,
        files=[
            ("images", ("good.png", solid_image_bytes(RED), "image/png")),
            ("images", ("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg")),
        ],
    )
    assert response.status_code == 201, response.text
    good, broken = response.json()["images"]
    assert good["verdict"] == "consistent"
    assert broken["verdict"] == "inconclusive" and broken["error"]["status"] == 422
    assert "identification_id" not in broken
    assert response.json()["verdict"] == "inconclusive"
