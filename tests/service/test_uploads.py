"""Large uploads stay in their spool file: a decode worker reads the file by descriptor and the
store copies it (service.uploads, service.decodeworkers.FileContent)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.decodeworkers import DecodeWorkers, FileContent
from service.uploads import PASS_AS_FILE_BYTES, Upload
from tests.factories import make_tiny_bundle
from tests.images import zeroed_middle
from tests.service.test_abuse_decoding import post
from tests.service.test_api import Api, assert_problem, start_api
from tests.service.test_storage import jpeg_with_gps


def large_jpeg(seed: int = 3) -> bytes:
    """A JPEG of fine noise, larger than :data:`PASS_AS_FILE_BYTES` (about 1.4 MB)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=95, subsampling=0)
    data = out.getvalue()
    assert len(data) > PASS_AS_FILE_BYTES
    return data


def large_jpeg_with_gps() -> bytes:
    """:func:`large_jpeg`'s pixels with the EXIF (GPS included) of :func:`jpeg_with_gps`."""
    with Image.open(io.BytesIO(jpeg_with_gps())) as small:
        exif = small.getexif()
    with Image.open(io.BytesIO(large_jpeg(4))) as image:
        out = io.BytesIO()
        image.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    weights = tmp_path_factory.mktemp("weights")
    make_tiny_bundle(weights, version="tiny-1")
    yield from start_api(weights, tmp_path_factory.mktemp("data"))


def stored_files(api: Api) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (api.settings.data_dir / "images").rglob("*.*")}


def test_a_worker_reads_a_passed_file_without_moving_its_offset() -> None:
    content = bytes(range(256)) * 5000
    workers = DecodeWorkers(1, timeout_s=30)
    workers.start()
    try:
        with tempfile.TemporaryFile() as handle:
            handle.write(content)
            handle.seek(17)
            received = asyncio.run(workers.run(bytes, FileContent(handle.fileno(), len(content))))
            assert received == content
            assert handle.tell() == 17
            # the worker goes on with ordinary jobs: the pipe stayed in step
            assert asyncio.run(workers.run(len, b"abc")) == 3
    finally:
        workers.close()


def test_only_a_large_spooled_upload_is_passed_as_its_file() -> None:
    assert Upload.from_bytes(b"x" * (2 * PASS_AS_FILE_BYTES)).file_descriptor() is None
    with tempfile.SpooledTemporaryFile(max_size=1024) as spooled:
        spooled.write(b"y" * 100)
        assert Upload(size=100, file=spooled).file_descriptor() is None
    with tempfile.TemporaryFile() as on_disk:
        on_disk.write(b"z" * PASS_AS_FILE_BYTES)
        upload = Upload(size=PASS_AS_FILE_BYTES, file=on_disk)
        assert upload.file_descriptor() == on_disk.fileno()
        copy = io.BytesIO()
        upload.copy_to(copy)
        assert copy.getvalue() == b"z" * PASS_AS_FILE_BYTES


def test_a_large_photo_is_identified_and_stored_without_the_server_reading_it(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_reading(self: Upload) -> bytes:
        if self.size >= PASS_AS_FILE_BYTES:
            raise AssertionError("the server read a large upload into memory")
        return original(self)

    original = Upload.read
    monkeypatch.setattr(Upload, "read", no_reading)
    photo = large_jpeg()
    response = post(api, photo, api.keys["officer"])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["image"]["sha256"] == hashlib.sha256(photo).hexdigest()
    assert body["image"]["size"] == len(photo)
    stored = stored_files(api)
    assert stored[f"{body['image']['sha256']}.jpg"] == photo
    image = api.client.get(f"/v1/identifications/{body['id']}/image", headers=api.h("officer"))
    assert image.content == photo


def test_a_large_photo_with_a_position_is_stored_without_it(api: Api) -> None:
    photo = large_jpeg_with_gps()
    assert len(photo) > PASS_AS_FILE_BYTES
    response = post(api, photo, api.keys["officer"])
    assert response.status_code == 201, response.text
    body = response.json()
    stored = stored_files(api)[f"{body['image']['sha256']}.jpg"]
    assert stored != photo
    assert body["image"]["size"] == len(stored)
    with Image.open(io.BytesIO(stored)) as image:
        assert not image.getexif().get_ifd(0x8825)  # no GPS left
        assert image.getexif()[0x010F] == "TestCam"  # the rest is kept


def test_a_large_damaged_photo_is_refused_and_nothing_is_stored(api: Api) -> None:
    before = stored_files(api)
    response = post(api, zeroed_middle(large_jpeg(5), 4000), api.keys["officer"])
    assert_problem(response, 422, "corrupt-image")
    assert stored_files(api) == before


def test_several_large_photos_of_one_item_are_each_stored(api: Api) -> None:
    photos = [large_jpeg(6), large_jpeg(7)]
    response = api.client.post(
        "/v1/identifications:views",
        headers=api.h("officer"),
        files=[("images", (f"{i}.jpg", p, "image/jpeg")) for i, p in enumerate(photos)],
    )
    assert response.status_code == 201, response.text
    stored = stored_files(api)
    for photo in photos:
        assert stored[f"{hashlib.sha256(photo).hexdigest()}.jpg"] == photo


def test_paths_are_not_needed(tmp_path: Path) -> None:
    """The spool file may have no name at all (an unlinked temporary file)."""
    with tempfile.TemporaryFile(dir=tmp_path) as handle:
        handle.write(b"q" * PASS_AS_FILE_BYTES)
        assert not list(tmp_path.iterdir())
        assert Upload(size=PASS_AS_FILE_BYTES, file=handle).file_descriptor() is not None
