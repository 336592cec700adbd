"""The HTTP API in detail, in-process (FastAPI TestClient) with real tiny ONNX bundles: every
resource, every error mapping, roles, pagination, filters, feedback history, export, GPS
stripping, content addressing, limits, hot swap and micro-batching."""

from __future__ import annotations

import csv
import io
import logging
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.imagestore import jpeg_segments_readable
from service.inference import InferenceItem, run_batch
from service.keys import create_key, revoke_key
from service.privacy import GPS_IFD_TAG
from service.settings import Settings
from service.tables import Identification
from tests import images
from tests.factories import (
    BLUE,
    GREEN,
    MAGENTA,
    RED,
    make_corrupt_bundle,
    make_tiny_bundle,
    solid_image_bytes,
)
from tests.service.test_storage import jpeg_with_gps

PROBLEM = "application/problem+json"
ROLES = ("officer", "scanner", "trainer", "admin")


@dataclass
class Api:
    """A started app, its client and one key per role."""

    client: TestClient
    keys: dict[str, str]
    settings: Settings

    def h(self, role: str = "admin", **extra: str) -> dict[str, str]:
        """Headers with the key of ``role``."""
        return {"Authorization": f"Bearer {self.keys[role]}", **extra}

    def identify(
        self,
        color: tuple[int, int, int] = RED,
        role: str = "officer",
        data: bytes | None = None,
        **fields: Any,
    ) -> httpx.Response:
        """POST one image."""
        body = data if data is not None else solid_image_bytes(color)
        return self.client.post(
            "/v1/identifications",
            headers=self.h(role),
            files={"image": ("x.png", body, "image/png")},
            data={k: str(v) for k, v in fields.items()},
        )

    @property
    def context(self) -> Any:
        """The app's shared objects."""
        return self.client.app.state.context  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights dir with tiny-1, tiny-2 (same model, another version) and a corrupt one."""
    root = tmp_path_factory.mktemp("weights")
    make_tiny_bundle(root, version="tiny-1", with_ood=True, ood_threshold=30.0)
    make_tiny_bundle(root, version="tiny-2", parent_version="tiny-1")
    make_corrupt_bundle(root, version="tiny-broken")
    return root


def start_api(weights: Path, data_dir: Path, **overrides: Any) -> Iterator[Api]:
    """Start an app on ``weights/tiny-1`` with settings overrides; yields an :class:`Api`."""
    settings = Settings(
        data_dir=data_dir,
        bundle_dir=weights / "tiny-1",
        onnx_threads=1,
        decode_workers=2,
        **overrides,
    )
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        keys = {}
        with app.state.context.sessions() as session:
            for role in ROLES:
                keys[role], _ = create_key(session, f"test-{role}", role)
        yield Api(client, keys, settings)


@pytest.fixture(scope="module")
def api(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app shared by the read-mostly tests of this module."""
    yield from start_api(weights, tmp_path_factory.mktemp("data"))


@pytest.fixture
def make_api(weights: Path, tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Start a fresh app with its own settings and data dir."""
    started: list[Iterator[Api]] = []

    def make(**overrides: Any) -> Api:
        gen = start_api(weights, tmp_path / f"data{len(started)}", **overrides)
        started.append(gen)
        return next(gen)

    yield make
    for gen in started:
        gen.close()


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    """The response is a problem document of ``status`` and type ``slug``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].endswith("/" + slug), body
    assert body["title"] and body["detail"]
    return body


# ---- identify ----------------------------------------------------------------------------


def test_the_service_model_does_not_spin_on_shared_cores(api: Api) -> None:
    """The service's ONNX Runtime threads sleep when idle: they share the cores with decoding."""
    options = api.context.host.current.session_options
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_identify_red_is_elephant_ivory_appendix_i(api: Api) -> None:
    response = api.identify(RED, origin_country="ke", case_ref="SEIZ-1", top_k=2)
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/identifications/{body['id']}"
    assert response.headers["content-language"] == "en"
    assert body["model_version"] == "tiny-1"
    assert body["origin_country"] == "KE" and body["case_ref"] == "SEIZ-1"
    assert len(body["image"]["sha256"]) == 64
    assert [t["label"] for t in body["top_k"]] == ["ivory", "ceramic"]
    first = body["top_k"][0]
    assert first["rank"] == 1 and first["appendix"] == "I" and first["probability"] > 0.99
    assert first["taxon"]["scientific_name"] == "Loxodonta africana"
    decision = body["decision"]
    assert decision["kind"] == "taxon" and decision["rule"] == "label_threshold"
    assert decision["label"] == "ivory" and decision["appendix"] == "I"
    assert body["guidance"]["language"] == "en"
    assert "Appendix I" in body["guidance"]["title"]
    assert body["feedback"] is None


def test_identify_blue_is_lookalike_and_magenta_uncertain(api: Api) -> None:
    blue = api.identify(BLUE).json()
    assert blue["decision"]["kind"] == "lookalike"
    assert blue["decision"]["appendix"] is None
    assert "check the documents" in blue["guidance"]["title"].lower()
    magenta = api.identify(MAGENTA).json()
    assert magenta["decision"]["kind"] == "uncertain"
    assert magenta["decision"]["refer_to_expert"] is True
    assert magenta["decision"]["rule"] == "below_thresholds"


def test_guidance_language_follows_accept_language(api: Api) -> None:
    response = api.client.post(
        "/v1/identifications",
        headers=api.h("officer", **{"Accept-Language": "de;q=1, es;q=0.9, fr;q=0.5"}),
        files={"image": ("g.png", solid_image_bytes(GREEN), "image/png")},
    )
    body = response.json()
    assert response.headers["content-language"] == "es"
    assert body["guidance"]["language"] == "es"
    assert body["decision"]["taxon"]["common_name"] == "palisandro de la India"
    again = api.client.get(
        f"/v1/identifications/{body['id']}", headers=api.h("officer", **{"Accept-Language": "fr"})
    ).json()
    assert again["guidance"]["language"] == "fr"
    assert "Annexe II" in again["guidance"]["title"]


@pytest.mark.parametrize(
    ("data", "status", "slug"),
    [
        (images.empty(), 422, "empty-image"),
        (images.text(), 422, "unsupported-image"),
        (images.truncated_png(), 422, "corrupt-image"),
        (images.png_declaring(20_000, 20_000), 413, "too-many-pixels"),
    ],
)
def test_unusable_images_are_4xx_problems(api: Api, data: bytes, status: int, slug: str) -> None:
    assert_problem(api.identify(data=data), status, slug)


def test_form_validation_errors_are_problems(api: Api) -> None:
    body = assert_problem(api.identify(top_k=0), 422, "validation-error")
    assert body["errors"][0]["loc"][-1] == "top_k"
    assert_problem(api.identify(modality="sonar"), 422, "validation-error")
    assert_problem(api.identify(origin_country="XX"), 422, "validation-error")
    missing = api.client.post("/v1/identifications", headers=api.h(), data={"top_k": "1"})
    body = assert_problem(missing, 422, "validation-error")
    assert "image" in body["detail"]


def test_modality_the_model_never_saw_is_refused(api: Api) -> None:
    body = assert_problem(api.identify(modality="xray"), 422, "unsupported-modality")
    assert "camera" in body["detail"]


def test_routing_errors_are_problems(api: Api) -> None:
    assert_problem(api.client.get("/v1/nothing-here", headers=api.h()), 404, "not-found")
    assert_problem(
        api.client.delete("/v1/identifications", headers=api.h()), 405, "method-not-allowed"
    )
    assert_problem(api.client.get("/v1/identifications/nope", headers=api.h()), 404, "not-found")


def test_unexpected_errors_are_500_problems_and_logged(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("bug for the test")

    monkeypatch.setattr(api.context.pipeline, "identify", broken)
    with caplog.at_level(logging.ERROR):
        body = assert_problem(api.identify(), 500, "internal-error")
    assert "bug for the test" not in body["detail"]
    assert any("bug for the test" in (r.exc_text or "") for r in caplog.records)


def test_database_outage_is_503(
    make_api: Callable[..., Api], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.database import make_engine, make_sessionmaker

    api = make_api()
    gone = make_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'cites.sqlite3'}")
    monkeypatch.setattr(api.context, "engine", gone)
    monkeypatch.setattr(api.context, "sessions", make_sessionmaker(gone))
    response = api.client.get("/v1/me", headers=api.h("officer"))
    assert_problem(response, 503, "database-unavailable")
    assert response.headers["retry-after"] == "5"
    assert_problem(api.client.get("/readyz"), 503, "not-ready")
    gone.dispose()


# ---- auth and roles ----------------------------------------------------------------------


def test_missing_wrong_and_revoked_keys_are_401(api: Api) -> None:
    body = assert_problem(api.client.get("/v1/me"), 401, "unauthenticated")
    assert "keys create" in body["detail"]
    response = api.client.get("/v1/me", headers={"Authorization": "Bearer cv_00000000_" + "x" * 43})
    assert_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")
    with api.context.sessions() as session:
        key, info = create_key(session, "short-lived", "officer")
    ok = api.client.get("/v1/me", headers={"X-API-Key": key})
    assert ok.json() == {"key_id": info.id, "name": "short-lived", "role": "officer"}
    with api.context.sessions() as session:
        revoke_key(session, info.id)
    assert_problem(api.client.get("/v1/me", headers={"X-API-Key": key}), 401, "unauthenticated")


@pytest.mark.parametrize(
    ("role", "method", "path", "allowed"),
    [
        ("trainer", "POST", "/v1/identifications", False),
        ("officer", "POST", "/v1/identifications:batch", False),
        ("scanner", "POST", "/v1/identifications/x/feedback", False),
        ("officer", "GET", "/v1/feedback/export", False),
        ("scanner", "GET", "/v1/feedback/export", False),
        ("trainer", "GET", "/v1/feedback/export", True),
        ("officer", "POST", "/v1/models/tiny-1/activate", False),
        ("trainer", "POST", "/v1/models/tiny-1/activate", False),
        ("trainer", "GET", "/v1/models", True),
        ("scanner", "GET", "/v1/identifications", True),
    ],
)
def test_role_matrix(api: Api, role: str, method: str, path: str, allowed: bool) -> None:
    response = api.client.request(method, path, headers=api.h(role))
    if allowed:
        assert response.status_code == 200, response.text
    else:
        body = assert_problem(response, 403, "forbidden")
        assert role in body["detail"]


def test_anonymous_mode_is_explicit_and_loud(
    make_api: Callable[..., Api], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        anon = make_api(allow_anonymous=True)
    assert any("ALLOW_ANONYMOUS" in r.getMessage() for r in caplog.records)
    assert anon.client.get("/v1/me").json()["name"] == "anonymous"
    assert (
        anon.client.post(
            "/v1/identifications", files={"image": ("r.png", solid_image_bytes(RED), "image/png")}
        ).status_code
        == 201
    )


# ---- reading, pagination, filters ---------------------------------------------------------


def test_list_paginates_and_filters(make_api: Callable[..., Api]) -> None:
    api = make_api()
    made = []
    for i, color in enumerate([RED, BLUE, MAGENTA, RED, GREEN]):
        made.append(
            api.identify(
                color, role="officer" if i % 2 else "scanner", case_ref="A" if i < 2 else "B"
            ).json()
        )
    page = api.client.get("/v1/identifications?limit=2", headers=api.h()).json()
    assert page["total"] == 5 and page["next_offset"] == 2
    assert [i["id"] for i in page["items"]] == [made[4]["id"], made[3]["id"]]
    last = api.client.get("/v1/identifications?limit=2&offset=4", headers=api.h()).json()
    assert len(last["items"]) == 1 and last["next_offset"] is None
    by_case = api.client.get("/v1/identifications?case_ref=A", headers=api.h()).json()
    assert {i["id"] for i in by_case["items"]} == {made[0]["id"], made[1]["id"]}
    uncertain = api.client.get("/v1/identifications?decision=uncertain", headers=api.h()).json()
    assert [i["id"] for i in uncertain["items"]] == [made[2]["id"]]
    labelled = api.client.get("/v1/identifications?label=ivory", headers=api.h()).json()
    assert labelled["total"] == 2
    mine = api.client.get("/v1/identifications?mine=true", headers=api.h("officer")).json()
    assert {i["id"] for i in mine["items"]} == {made[1]["id"], made[3]["id"]}
    since = made[3]["created_at"]
    recent = api.client.get("/v1/identifications", params={"since": since}, headers=api.h())
    assert {i["id"] for i in recent.json()["items"]} == {made[3]["id"], made[4]["id"]}
    assert_problem(
        api.client.get("/v1/identifications?decision=maybe", headers=api.h()),
        422,
        "validation-error",
    )
    assert_problem(
        api.client.get("/v1/identifications?limit=1000", headers=api.h()), 422, "validation-error"
    )


def test_image_is_stored_once_and_served_without_gps(make_api: Callable[..., Api]) -> None:
    api = make_api()
    photo = jpeg_with_gps()
    first = api.identify(data=photo).json()
    second = api.identify(data=photo).json()
    assert first["id"] != second["id"]
    assert first["image"]["sha256"] == second["image"]["sha256"]
    assert first["image"]["gps_removed"] is True
    stored = [p for p in (api.settings.data_dir / "images").rglob("*") if p.is_file()]
    assert len(stored) == 1
    served = api.client.get(first["image"]["url"], headers=api.h("trainer"))
    assert served.headers["content-type"] == "image/jpeg"
    exif = Image.open(io.BytesIO(served.content)).getexif()
    assert GPS_IFD_TAG not in exif and exif[0x010F] == "TestCam"


def test_gps_kept_when_configured(make_api: Callable[..., Api]) -> None:
    api = make_api(keep_gps=True)
    body = api.identify(data=jpeg_with_gps()).json()
    served = api.client.get(body["image"]["url"], headers=api.h())
    assert GPS_IFD_TAG in Image.open(io.BytesIO(served.content)).getexif()


def test_heatmap_is_png_of_the_photo(api: Api) -> None:
    photo = Image.new("RGB", (300, 200), RED)
    photo.paste(BLUE, (150, 0, 300, 200))  # red left half (ivory), blue right half (ceramic)
    buffer = io.BytesIO()
    photo.save(buffer, "PNG")
    body = api.identify(data=buffer.getvalue()).json()
    response = api.client.get(body["heatmap_url"], headers=api.h("officer"))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (300, 200)
    other = api.client.get(body["heatmap_url"] + "?label=ceramic", headers=api.h())
    assert other.status_code == 200 and other.content != response.content
    assert_problem(
        api.client.get(body["heatmap_url"] + "?label=nope", headers=api.h()), 422, "unknown-label"
    )


# ---- feedback and export ------------------------------------------------------------------


def test_feedback_history_is_kept_and_latest_shown(api: Api) -> None:
    ident = api.identify(RED).json()
    url = f"/v1/identifications/{ident['id']}/feedback"
    confirm = api.client.post(url, headers=api.h("officer"), json={"verdict": "confirm"})
    assert confirm.status_code == 201 and confirm.json()["created_by"] == "test-officer"
    correct = api.client.post(
        url,
        headers=api.h("trainer"),
        json={
            "verdict": "correct",
            "label": "ceramic",
            "note": "glaze under magnification",
            "case_ref": "  SEIZ-77 ",
        },
    )
    assert correct.status_code == 201
    assert correct.json()["case_ref"] == "SEIZ-77" and correct.json()["note"].startswith("glaze")
    history = api.client.get(url, headers=api.h("scanner")).json()["items"]
    assert [f["verdict"] for f in history] == ["confirm", "correct"]
    assert history[0]["label"] is None and history[1]["label"] == "ceramic"
    assert [f["case_ref"] for f in history] == [None, "SEIZ-77"]
    latest = api.client.get(f"/v1/identifications/{ident['id']}", headers=api.h()).json()
    assert latest["feedback"]["id"] == correct.json()["id"]
    assert latest["feedback"]["case_ref"] == "SEIZ-77"
    blank = api.client.post(url, headers=api.h(), json={"verdict": "confirm", "case_ref": "  "})
    assert blank.status_code == 201 and blank.json()["case_ref"] is None


def test_feedback_validation(api: Api) -> None:
    ident = api.identify(RED).json()
    url = f"/v1/identifications/{ident['id']}/feedback"
    assert_problem(
        api.client.post(url, headers=api.h(), json={"verdict": "correct"}),
        422,
        "validation-error",
    )
    assert_problem(
        api.client.post(url, headers=api.h(), json={"verdict": "correct", "label": "unicorn"}),
        422,
        "unknown-label",
    )
    assert_problem(
        api.client.post(url, headers=api.h(), json={"verdict": "correct", "taxon_id": "nope"}),
        422,
        "unknown-label",
    )
    for body in (
        {"verdict": "confirm", "case_rf": "SEIZ-1"},  # a typo is refused, not dropped
        {"verdict": "confirm", "case_ref": "x" * 121},
        {"verdict": "confirm", "case_ref": 7},
    ):
        response = api.client.post(url, headers=api.h(), json=body)
        assert_problem(response, 422, "validation-error")
    typo = api.client.post(url, headers=api.h(), json={"verdict": "confirm", "case_rf": "S"})
    assert "case_rf" in typo.text
    assert api.client.get(url, headers=api.h()).json()["items"] == []
    ok = api.client.post(url, headers=api.h(), json={"verdict": "correct", "taxon_id": "loxodonta"})
    assert ok.status_code == 201, ok.text
    assert_problem(
        api.client.post(
            "/v1/identifications/nope/feedback", headers=api.h(), json={"verdict": "confirm"}
        ),
        404,
        "not-found",
    )


def test_export_is_a_training_manifest_with_images(make_api: Callable[..., Api]) -> None:
    api = make_api()
    red = api.identify(RED, case_ref="CASE-9").json()
    blue = api.identify(BLUE).json()
    magenta = api.identify(MAGENTA, case_ref="CASE-3").json()
    plain = api.identify(RED).json()  # no case reference anywhere: the id is the case
    api.identify(GREEN)  # no feedback: not exported
    for ident, body in (
        (red, {"verdict": "correct", "label": "rosewood", "case_ref": "OTHER"}),
        (red, {"verdict": "confirm"}),  # the latest wins: the predicted label
        (blue, {"verdict": "correct", "label": "ivory", "case_ref": "SEIZ-4"}),
        (magenta, {"verdict": "correct", "label": "ivory", "case_ref": "SEIZ-4"}),
        (plain, {"verdict": "confirm"}),
    ):
        api.client.post(
            f"/v1/identifications/{ident['id']}/feedback", headers=api.h("officer"), json=body
        )
    response = api.client.get("/v1/feedback/export", headers=api.h("trainer"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/gzip"
    assert "attachment" in response.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        names = tar.getnames()
        manifest = tar.extractfile("manifest.csv")
        assert manifest is not None
        rows = list(csv.DictReader(io.TextIOWrapper(manifest, encoding="utf-8")))
        for row in rows:
            assert row["path"] in names
    assert list(rows[0]) == ["path", "label", "modality", "source", "case_id"]
    by_source = {r["source"]: r for r in rows}
    assert set(by_source) == {f"feedback:{i['id']}" for i in (red, blue, magenta, plain)}
    assert by_source[f"feedback:{red['id']}"]["label"] == "ivory"
    assert by_source[f"feedback:{red['id']}"]["case_id"] == "CASE-9"  # latest has none
    # The feedback's case reference wins over the identification's (or its id).
    assert by_source[f"feedback:{blue['id']}"]["case_id"] == "SEIZ-4"
    assert by_source[f"feedback:{magenta['id']}"]["case_id"] == "SEIZ-4"
    assert by_source[f"feedback:{plain['id']}"]["case_id"] == plain["id"]
    assert by_source[f"feedback:{blue['id']}"]["label"] == "ivory"
    assert by_source[f"feedback:{blue['id']}"]["modality"] == "camera"


def test_export_is_read_by_the_training_loader(
    make_api: Callable[..., Api], tmp_path: Path
) -> None:
    data_module = pytest.importorskip("training.data", reason="the training package")
    api = make_api()
    ident = api.identify(GREEN, case_ref="TIMBER-7").json()
    api.client.post(
        f"/v1/identifications/{ident['id']}/feedback",
        headers=api.h("officer"),
        json={"verdict": "confirm"},
    )
    archive = api.client.get("/v1/feedback/export", headers=api.h("trainer")).content
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(tmp_path / "export", filter="data")
    samples = data_module.load_manifest(tmp_path / "export" / "manifest.csv")
    assert [(s.label, s.modality, s.case_id) for s in samples] == [
        ("rosewood", "camera", "TIMBER-7")
    ]
    assert samples[0].path.is_file()


# ---- taxa and models ---------------------------------------------------------------------


def test_taxa_search_and_get(api: Api) -> None:
    found = api.client.get("/v1/taxa?q=elephant", headers=api.h("officer")).json()["items"]
    assert "loxodonta-africana" in [t["id"] for t in found]
    spanish = api.client.get("/v1/taxa?q=elefante", headers=api.h()).json()["items"]
    assert spanish
    taxon = api.client.get("/v1/taxa/loxodonta-africana?origin_country=BW", headers=api.h()).json()
    assert taxon["scientific_name"] == "Loxodonta africana"
    assert taxon["lineage"][0]["id"] == "loxodonta-africana"
    assert taxon["appendix_for_origin"]["appendix"] == "II"
    assert_problem(api.client.get("/v1/taxa/unicornis", headers=api.h()), 404, "not-found")
    assert_problem(api.client.get("/v1/taxa", headers=api.h()), 422, "validation-error")


def test_models_list_and_active(api: Api) -> None:
    listing = api.client.get("/v1/models", headers=api.h("trainer")).json()
    assert listing["active"] == "tiny-1"
    by_version = {m["version"]: m for m in listing["items"]}
    assert by_version["tiny-1"]["active"] and by_version["tiny-2"]["valid"]
    active = api.client.get("/v1/models/active", headers=api.h("officer")).json()
    assert active["version"] == "tiny-1"
    assert [label["id"] for label in active["labels"]] == ["ivory", "ceramic", "rosewood"]
    assert active["modalities"] == ["camera"]


def test_activate_swaps_persists_and_a_broken_bundle_keeps_the_old(
    weights: Path, tmp_path: Path
) -> None:
    first = start_api(weights, tmp_path / "data")
    api = next(first)
    old = api.identify(RED).json()
    broken = api.client.post("/v1/models/tiny-broken/activate", headers=api.h())
    body = assert_problem(broken, 409, "model-load-failed")
    assert "tiny-1 keeps serving" in body["detail"]
    assert api.identify(RED).json()["model_version"] == "tiny-1"
    assert_problem(api.client.post("/v1/models/tiny-9/activate", headers=api.h()), 404, "not-found")
    swapped = api.client.post("/v1/models/tiny-2/activate", headers=api.h())
    assert swapped.status_code == 200, swapped.text
    assert swapped.json()["version"] == "tiny-2"
    assert api.identify(RED).json()["model_version"] == "tiny-2"
    assert api.client.get("/readyz").json()["model_version"] == "tiny-2"
    metrics = api.client.get("/metrics").text
    assert 'cites_model_info{version="tiny-2"} 1.0' in metrics
    assert 'cites_model_info{version="tiny-1"}' not in metrics
    # a heat map of an identification by the previous model is drawn by that model, kept
    # loaded since the swap
    heat = api.client.get(old["heatmap_url"], headers=api.h())
    assert heat.status_code == 200, heat.text
    assert heat.headers["content-type"] == "image/png"
    first.close()
    # a restart on the same data dir serves the activated version
    second = start_api(weights, tmp_path / "data")
    again = next(second)
    assert again.client.get("/readyz").json()["model_version"] == "tiny-2"
    # ... and loads the earlier model from the weights directory for its heat maps
    reloaded = again.client.get(old["heatmap_url"], headers=again.h())
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.content == heat.content
    # a model that is no longer in the weights directory: 410 with the reason
    with again.context.sessions() as session:
        row = session.get(Identification, old["id"])
        row.model_version = "tiny-gone"
        session.commit()
    gone = assert_problem(
        again.client.get(old["heatmap_url"], headers=again.h()), 410, "model-unavailable"
    )
    assert "tiny-gone" in gone["detail"] and "known versions" in gone["detail"]
    second.close()


def test_requests_in_a_batch_run_on_the_predictor_they_started_with(weights: Path) -> None:
    from model.predictor import Predictor

    old = Predictor(weights / "tiny-1", threads=1)
    new = Predictor(weights / "tiny-2", threads=1)
    calls: list[tuple[str, int]] = []
    for predictor in (old, new):
        original = predictor.predict_arrays

        def spy(batch: Any, *, _p: Predictor = predictor, _o: Any = original, **kw: Any) -> Any:
            calls.append((_p.version, len(batch)))
            return _o(batch, **kw)

        predictor.predict_arrays = spy  # type: ignore[method-assign]
    array = old.preprocess_bytes(solid_image_bytes(RED))
    items = [
        InferenceItem(old, array, None, 3),
        InferenceItem(new, array, "KE", 3),
        InferenceItem(old, array, None, 1),
    ]
    results = run_batch(items)
    assert len(results) == 3
    assert sorted(calls) == [("tiny-1", 2), ("tiny-2", 1)]
    assert results[1].decision.appendix == "I"


# ---- limits, overload, batching ----------------------------------------------------------


def test_upload_limit_from_content_length_and_while_streaming(
    make_api: Callable[..., Api],
) -> None:
    api = make_api(max_upload_bytes=20_000)
    big = images.large_jpeg(800, 600)
    assert len(big) > 20_000
    body = assert_problem(api.identify(data=big), 413, "image-too-large")
    assert "20000" in body["detail"]

    def chunks() -> Iterator[bytes]:
        boundary = b"--b\r\n"
        yield boundary + b'Content-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
        yield b"Content-Type: image/jpeg\r\n\r\n"
        for _ in range(200):
            yield b"\xff" * 1024
        yield b"\r\n--b--\r\n"

    streamed = api.client.post(
        "/v1/identifications",
        headers=api.h(**{"Content-Type": "multipart/form-data; boundary=b"}),
        content=chunks(),
    )
    assert_problem(streamed, 413, "image-too-large")
    assert api.identify(RED).status_code == 201  # small images still pass


def test_batch_results_in_order_with_error_entries(api: Api) -> None:
    files = [
        ("images", ("r.png", solid_image_bytes(RED), "image/png")),
        ("images", ("bad.png", images.truncated_png(), "image/png")),
        ("images", ("b.png", solid_image_bytes(BLUE), "image/png")),
        ("images", ("g.png", solid_image_bytes(GREEN), "image/png")),
    ]
    response = api.client.post(
        "/v1/identifications:batch",
        headers=api.h("scanner"),
        files=files,
        data={"origin_country": "IN"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "tiny-1"
    results = body["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert [r["filename"] for r in results] == ["r.png", "bad.png", "b.png", "g.png"]
    assert results[1]["error"]["type"].endswith("/corrupt-image")
    assert results[1]["error"]["status"] == 422
    labels = [
        r["identification"]["decision"]["label"] for r in (results[0], results[2], results[3])
    ]
    assert labels == ["ivory", "ceramic", "rosewood"]
    assert results[3]["identification"]["origin_country"] == "IN"


def test_batch_too_large_and_empty(make_api: Callable[..., Api]) -> None:
    api = make_api(max_batch_images=2)
    files = [("images", (f"{i}.png", solid_image_bytes(RED), "image/png")) for i in range(3)]
    assert_problem(
        api.client.post("/v1/identifications:batch", headers=api.h("scanner"), files=files),
        413,
        "batch-too-large",
    )
    assert_problem(
        api.client.post("/v1/identifications:batch", headers=api.h("scanner"), data={"top_k": "1"}),
        422,
        "validation-error",
    )


def _slow_batches(api: Api, seconds: float) -> list[int]:
    """Make every micro-batch take ``seconds``; returns the list of batch sizes seen."""
    sizes: list[int] = []
    batcher = api.context.inference.batcher
    original = batcher._run_batch

    def slow(items: Sequence[InferenceItem]) -> Any:
        sizes.append(len(items))
        time.sleep(seconds)
        return original(items)

    batcher._run_batch = slow
    return sizes


def test_full_queue_is_503_with_retry_after(make_api: Callable[..., Api]) -> None:
    api = make_api(queue_max=2, batch_max_size=1, batch_max_wait_ms=0)
    _slow_batches(api, 0.5)
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: api.identify(RED), range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert 201 in statuses and 503 in statuses, statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert_problem(refused, 503, "overloaded")
    assert refused.headers["retry-after"] == "1"
    assert 'cites_rejected_total{reason="overloaded"}' in api.client.get("/metrics").text


def test_slow_identification_times_out_with_504(make_api: Callable[..., Api]) -> None:
    api = make_api(request_timeout_s=0.3)
    _slow_batches(api, 1.0)
    assert_problem(api.identify(RED), 504, "timeout")


def _stored_files(api: Api) -> list[Path]:
    return [p for p in (api.settings.data_dir / "images").rglob("*") if p.is_file()]


def test_image_write_overlaps_inference(make_api: Callable[..., Api]) -> None:
    """The durable write starts before the model answers: the file is there during inference."""
    api = make_api()
    seen: list[int] = []
    original = api.context.inference.batcher._run_batch

    def watch(items: Sequence[InferenceItem]) -> Any:
        # the model "runs" until this request's file is on disk (or 2 s pass)
        deadline = time.monotonic() + 2.0
        while len(_stored_files(api)) <= len(seen) and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(len(_stored_files(api)))
        return original(items)

    api.context.inference.batcher._run_batch = watch
    assert api.identify(RED).status_code == 201
    assert api.identify(data=jpeg_with_gps()).status_code == 201
    assert seen == [1, 2]


def test_refused_jpeg_leaves_no_file(make_api: Callable[..., Api]) -> None:
    """A JPEG's write starts before decoding; a corrupt scan is refused and the file removed."""
    api = make_api()
    buffer = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(buffer, "JPEG")
    photo = buffer.getvalue()
    truncated = photo[: photo.index(b"\xff\xda") + 40]  # headers intact, scan cut short
    assert jpeg_segments_readable(truncated)
    response = api.identify(data=truncated)
    assert response.status_code == 422, response.text
    assert _stored_files(api) == []


def test_timed_out_or_failed_identification_stores_no_file(make_api: Callable[..., Api]) -> None:
    api = make_api(request_timeout_s=0.3)
    _slow_batches(api, 1.0)
    assert_problem(api.identify(RED), 504, "timeout")
    assert _stored_files(api) == []

    def fail(items: Sequence[InferenceItem]) -> Any:
        raise RuntimeError("inference failed")

    api = make_api()  # the slow batch above still holds the first app's worker
    api.context.inference.batcher._run_batch = fail
    assert api.identify(GREEN).status_code == 500
    assert _stored_files(api) == []


def test_failed_identification_keeps_a_file_a_stored_row_uses(make_api: Callable[..., Api]) -> None:
    api = make_api()
    first = api.identify(RED)
    assert first.status_code == 201
    original = api.context.inference.batcher._run_batch

    def fail(items: Sequence[InferenceItem]) -> Any:
        raise RuntimeError("inference failed")

    api.context.inference.batcher._run_batch = fail
    assert api.identify(RED).status_code == 500  # same content: same file
    assert len(_stored_files(api)) == 1
    api.context.inference.batcher._run_batch = original
    served = api.client.get(first.json()["image"]["url"], headers=api.h("trainer"))
    assert served.status_code == 200 and served.content == solid_image_bytes(RED)


def test_concurrent_requests_share_one_onnx_call(make_api: Callable[..., Api]) -> None:
    api = make_api(batch_max_size=8, batch_max_wait_ms=100)
    sizes = _slow_batches(api, 0.05)
    barrier = threading.Barrier(8)

    def one(_: int) -> int:
        barrier.wait()
        return api.identify(RED).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(8))) == [201] * 8
    assert max(sizes) > 1, sizes
    metrics = api.client.get("/metrics").text
    count = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("cites_batch_size_count")
    )
    assert count < 8  # fewer ONNX calls than requests


def test_metrics_count_requests_decisions_and_confidence(api: Api) -> None:
    api.identify(RED)
    text = api.client.get("/metrics").text
    assert (
        'cites_http_requests_total{method="POST",route="/v1/identifications",status="201"}' in text
    )
    assert 'cites_decisions_total{kind="taxon",label="ivory"}' in text
    assert "cites_confidence_bucket" in text
    assert "cites_queue_depth" in text
    assert 'cites_http_request_duration_seconds_bucket{le="0.005",method="POST"' in text


def test_health_ready_docs_and_page(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["database"] == "ok"
    schema = api.client.get("/openapi.json").json()
    assert "/v1/identifications:batch" in schema["paths"]
    assert api.client.get("/docs").status_code == 200


def test_web_page_and_assets_are_served(make_api: Callable[..., Api], tmp_path: Path) -> None:
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>CITES</title>", encoding="utf-8")
    (static / "app.js").write_text("console.log(1);", encoding="utf-8")
    api = make_api(static_dir=static)
    page = api.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>CITES</title>" in page.text
    asset = api.client.get("/static/app.js")
    assert asset.status_code == 200 and "javascript" in asset.headers["content-type"]
    assert_problem(api.client.get("/static/missing.js"), 404, "not-found")


def test_no_web_page_folder_means_api_only(make_api: Callable[..., Api], tmp_path: Path) -> None:
    api = make_api(static_dir=tmp_path / "absent")
    assert_problem(api.client.get("/"), 404, "not-found")
