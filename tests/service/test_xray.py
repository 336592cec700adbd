"""Camera and x-ray served at once, through the running service (uvicorn subprocess).

The weights folder holds a tiny camera bundle and a tiny x-ray bundle (``xray``, served by
default beside the camera one). Scanner files of every kind must be answered by the x-ray
bundle; a Threat Detection Report gets 422; without an x-ray bundle an x-ray image gets 422.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from model.labels import Label
from tests.factories import RED, make_tiny_bundle, solid_image_bytes
from tests.scanner_files import (
    DICOS_DX_JPEG_LOSSLESS,
    DICOS_DX_PALETTE,
    DICOS_DX_UNCOMPRESSED,
    DICOS_TDR,
    dicom_bytes,
    ramp_uint16,
    tiff_bytes,
)
from tests.service_helpers import ServiceHandle, running_service

pytest.importorskip("pydicom", reason="the scanner extra (pydicom) is not installed")

XRAY_LABELS: tuple[Label, ...] = (
    Label(0, "suspected-ivory-bone", "Suspected ivory or bone", "ivory-any", "cites"),
    Label(1, "porcelain-lookalike", "Porcelain (look-alike)", "ceramic-porcelain", "lookalike"),
    Label(2, "suspected-timber", "Suspected timber", "timber-cites", "cites"),
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    make_tiny_bundle(folder, version="tiny-1")
    make_tiny_bundle(folder, version="xray", labels=XRAY_LABELS, modalities=("xray",))
    make_tiny_bundle(folder, version="xray-2", labels=XRAY_LABELS, modalities=("xray",))
    return folder


@pytest.fixture(scope="module")
def service(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHandle]:
    data = tmp_path_factory.mktemp("data")
    with running_service(weights / "tiny-1", data, extra_bundles_dir=weights) as handle:
        yield handle


@pytest.fixture(scope="module")
def officer(service: ServiceHandle) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.make_key('officer')}"}


def _identify(
    service: ServiceHandle, headers: dict[str, str], data: bytes, **fields: str
) -> httpx.Response:
    return httpx.post(
        service.url + "/v1/identifications",
        headers=headers,
        files={"image": ("scan.bin", data, "application/octet-stream")},
        data=fields,
        timeout=60,
    )


def _pseudo_colour_scan() -> bytes:
    """A dual-energy style scan: white background, an orange bag, a red-brown dense object."""
    scan = np.full((300, 400, 3), 250, dtype=np.uint8)
    scan[60:240, 60:340] = (235, 170, 90)
    scan[120:180, 150:230] = (250, 10, 10)
    buffer = io.BytesIO()
    Image.fromarray(scan).save(buffer, format="PNG")
    return buffer.getvalue()


SCANNER_FILES = {
    "dicos-dx-jpeg-lossless": lambda: DICOS_DX_JPEG_LOSSLESS.read_bytes(),
    "dicos-dx-uncompressed": lambda: DICOS_DX_UNCOMPRESSED.read_bytes(),
    "dicos-palette-colour": lambda: DICOS_DX_PALETTE.read_bytes(),
    "dicom-written-by-pydicom": lambda: dicom_bytes(
        ramp_uint16(96, 64),
        photometric="MONOCHROME1",
        slope=1,
        intercept=-1000,
        window=(1000, 2000),
    ),
    "tiff-16-bit": lambda: tiff_bytes(ramp_uint16(80, 60)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCANNER_FILES))
def test_scanner_files_are_answered_by_the_xray_bundle(
    service: ServiceHandle, officer: dict[str, str], name: str
) -> None:
    response = _identify(service, officer, SCANNER_FILES[name]())
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["model_version"] == "xray"
    assert body["modality"] == "xray"
    assert body["modality_source"] != "default"
    assert body["top_k"][0]["label"] in {label.id for label in XRAY_LABELS}
    image = httpx.get(service.url + body["image"]["url"], headers=officer, timeout=30)
    assert image.status_code == 200
    if name.startswith("dicom") or name.startswith("dicos"):
        assert image.headers["content-type"] == "image/png"  # rendered, no DICOM headers kept


@pytest.mark.slow
def test_pseudo_colour_scan_with_modality_is_answered_and_located(
    service: ServiceHandle, officer: dict[str, str]
) -> None:
    response = _identify(service, officer, _pseudo_colour_scan(), modality="xray")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["model_version"] == "xray" and body["modality_source"] == "caller"
    assert body["top_k"][0]["label"] == "suspected-ivory-bone"  # red dominates: label 0
    location = body["location"]
    x0, y0, x1, y1 = location["box_px"]
    assert 0 <= x0 < x1 <= 400 and 0 <= y0 < y1 <= 300
    drawn = httpx.get(service.url + location["image_url"], headers=officer, timeout=30)
    assert drawn.status_code == 200 and drawn.headers["content-type"] == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(drawn.content)).convert("RGB")).astype(int)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 30) & (pixels[..., 2] > 20)
    assert red.sum() > 50, "the box is drawn"


@pytest.mark.shared_data
def test_real_pseudo_colour_scans_without_modality_go_to_the_xray_bundle(
    service: ServiceHandle, officer: dict[str, str], shared_data: Path
) -> None:
    """Real dual-energy scans sent as plain JPEGs, with no modality: the pixels say x-ray (the
    scanner-image detector), so the x-ray bundle answers."""
    scans = sorted((shared_data / "xray-baggage").rglob("*.jpg"))[::7][:5]
    assert scans, "xray-baggage has scans"
    for scan in scans:
        response = _identify(service, officer, scan.read_bytes())
        assert response.status_code == 201, (scan.name, response.text)
        body = response.json()
        assert body["modality"] == "xray", (scan.name, body["modality_source"])
        assert body["modality_source"].startswith("pixels:"), body["modality_source"]
        assert body["model_version"] == "xray"


@pytest.mark.slow
def test_camera_photo_still_goes_to_the_camera_bundle(
    service: ServiceHandle, officer: dict[str, str]
) -> None:
    response = _identify(service, officer, solid_image_bytes(RED))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["model_version"] == "tiny-1" and body["modality"] == "camera"
    assert body["location"] is None
    located = httpx.get(
        service.url + f"/v1/identifications/{body['id']}/located", headers=officer, timeout=30
    )
    assert located.status_code == 404


@pytest.mark.slow
def test_threat_detection_report_gets_422(service: ServiceHandle, officer: dict[str, str]) -> None:
    response = _identify(service, officer, DICOS_TDR.read_bytes())
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"].endswith("no-pixel-data")
    assert "Threat Detection Report" in body["detail"]


@pytest.mark.slow
def test_models_active_lists_both_and_activation_names_the_modality(
    service: ServiceHandle, officer: dict[str, str]
) -> None:
    active = httpx.get(service.url + "/v1/models/active", headers=officer, timeout=30).json()
    assert active["version"] == "tiny-1"  # the single-model shape is unchanged: camera
    assert active["by_modality"]["camera"]["version"] == "tiny-1"
    assert active["by_modality"]["xray"]["version"] == "xray"
    admin = {"Authorization": f"Bearer {service.make_key('admin')}"}
    wrong = httpx.post(
        service.url + "/v1/models/xray-2/activate?modality=camera", headers=admin, timeout=60
    )
    assert wrong.status_code == 422 and wrong.json()["type"].endswith("modality-mismatch")
    swapped = httpx.post(
        service.url + "/v1/models/xray-2/activate?modality=xray", headers=admin, timeout=60
    )
    assert swapped.status_code == 200, swapped.text
    assert swapped.json()["activated_for"] == ["xray"]
    listing = httpx.get(service.url + "/v1/models", headers=officer, timeout=30).json()
    assert listing["active"] == "tiny-1"
    assert listing["active_by_modality"] == {"camera": "tiny-1", "xray": "xray-2"}
    body = _identify(service, officer, DICOS_DX_UNCOMPRESSED.read_bytes()).json()
    assert body["model_version"] == "xray-2"
    back = httpx.post(service.url + "/v1/models/xray/activate", headers=admin, timeout=60)
    assert back.status_code == 200 and back.json()["activated_for"] == ["xray"]


@pytest.mark.slow
def test_without_an_xray_bundle_xray_images_get_422(weights: Path, tmp_path: Path) -> None:
    camera_only = tmp_path / "weights"
    make_tiny_bundle(camera_only, version="tiny-1")
    with running_service(camera_only / "tiny-1", tmp_path / "data") as handle:
        headers = {"Authorization": f"Bearer {handle.make_key('officer')}"}
        response = _identify(handle, headers, DICOS_DX_UNCOMPRESSED.read_bytes())
        assert response.status_code == 422
        body = response.json()
        assert body["type"].endswith("unsupported-modality")
        assert "no xray model is active" in body["detail"]
        assert "DICOS" in body["detail"]  # says how the service knew it was an x-ray image
        said = _identify(handle, headers, solid_image_bytes(RED), modality="xray")
        assert said.status_code == 422 and "you said so" in said.json()["detail"]
        photo = _identify(handle, headers, solid_image_bytes(RED))
        assert photo.status_code == 201
        active = httpx.get(handle.url + "/v1/models/active", headers=headers, timeout=30).json()
        assert active["by_modality"]["xray"] is None
