"""The image checks through the HTTP API (issue 14): unusable photos and scanner images never
get a taxon or a look-alike, in single and batch calls, with guidance in the caller's
language."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.keys import create_key
from service.settings import Settings
from tests.factories import RED, blank_image_bytes, make_tiny_bundle, solid_image_bytes


def _scan_png() -> bytes:
    """A synthetic pseudo-colour scan: white field, orange, blue and green shapes."""
    rng = np.random.default_rng(0)
    pixels = np.full((300, 400, 3), 250, dtype=np.float64)
    pixels[60:200, 50:250] = (235, 140, 50)
    pixels[120:240, 200:330] = (40, 90, 200)
    pixels[100:130, 80:300] = (60, 170, 90)
    pixels += rng.normal(0, 4, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    weights = tmp_path_factory.mktemp("weights")
    bundle = make_tiny_bundle(weights, version="tiny-1")
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        bundle_dir=bundle,
        onnx_threads=1,
        decode_workers=2,
    )
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        with app.state.context.sessions() as session:
            key, _ = create_key(session, "test-scanner", "scanner")
        yield test_client, key


def _post(client: tuple[TestClient, str], data: bytes, language: str = "en") -> dict[str, object]:
    test_client, key = client
    response = test_client.post(
        "/v1/identifications",
        headers={"Authorization": f"Bearer {key}", "Accept-Language": language},
        files={"image": ("photo.png", data, "image/png")},
    )
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (blank_image_bytes((230, 215, 180)), "uniform"),
        (blank_image_bytes((230, 215, 180), size=(1, 1)), "too_small"),
        (blank_image_bytes((255, 255, 255)), "uniform"),
    ],
    ids=["beige-640x480", "1x1", "white"],
)
def test_unusable_photos_get_unusable_image(
    client: tuple[TestClient, str], data: bytes, problem: str
) -> None:
    body = _post(client, data)
    decision = body["decision"]
    assert isinstance(decision, dict)
    assert decision["kind"] == "unusable_image" and problem in decision["rule"]
    assert decision["taxon"] is None and decision["label"] is None
    assert body["top_k"] == []
    guidance = body["guidance"]
    assert isinstance(guidance, dict)
    assert "Retake the photo" in guidance["text"]


def test_unusable_guidance_follows_the_language(client: tuple[TestClient, str]) -> None:
    french = _post(client, blank_image_bytes((230, 215, 180)), "fr")["guidance"]
    spanish = _post(client, blank_image_bytes((230, 215, 180)), "es")["guidance"]
    assert isinstance(french, dict) and isinstance(spanish, dict)
    assert "Reprenez la photo" in french["text"]
    assert "Vuelva a tomar la foto" in spanish["text"]


def test_a_scan_is_outside_the_domain_also_in_a_batch(client: tuple[TestClient, str]) -> None:
    test_client, key = client
    response = test_client.post(
        "/v1/identifications:batch",
        headers={"Authorization": f"Bearer {key}"},
        files=[
            ("images", ("scan.png", _scan_png(), "image/png")),
            ("images", ("photo.png", solid_image_bytes(RED), "image/png")),
        ],
    )
    assert response.status_code == 200, response.text
    scan, photo = (r["identification"] for r in response.json()["results"])
    assert scan["decision"]["kind"] == "outside_training_domain"
    assert scan["decision"]["rule"] == "modality:pseudo_colour"
    assert scan["top_k"] == [] and scan["decision"]["taxon"] is None
    assert photo["decision"]["kind"] == "taxon"


@pytest.mark.shared_data
def test_real_scans_sent_without_a_modality_are_outside_the_domain(
    client: tuple[TestClient, str], shared_data: Path
) -> None:
    scans = sorted((shared_data / "xray-baggage").rglob("*.jpg"))[::7]
    for path in scans:
        decision = _post(client, path.read_bytes())["decision"]
        assert isinstance(decision, dict)
        assert decision["kind"] == "outside_training_domain", path.name
