"""Bounded decoding (issue 19, findings 2, 3 and 5) and damaged JPEG data (issue 12).

Each test builds its hostile file itself, runs against an in-process app on loopback, and
checks that the fix holds and that an officer identifying at the same time with another key is
answered promptly. Bounds are generous for a shared CI machine; the point is seconds, not the
minute a hostile file used to take.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from model.imageio import check_jpeg_data
from service.decode import MAX_JPEG_SCANS, check_decoding_cost
from tests import hostile
from tests.factories import RED, make_tiny_bundle, solid_image_bytes
from tests.images import zeroed_middle
from tests.service.test_api import Api, assert_problem, start_api

PROMPT_S = 5.0
"""An officer's identification while a hostile client works: well under the 30 s (or the
minute) it took before, with room for a shared machine under heavy load (on an idle one it takes
tens of milliseconds)."""


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights dir with the tiny test model."""
    root = tmp_path_factory.mktemp("weights")
    make_tiny_bundle(root, version="tiny-1")
    return root


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


# ---- hostile files, built here ------------------------------------------------------------------


def photo_jpeg(size: tuple[int, int] = (320, 240), *, progressive: bool = False) -> bytes:
    """A JPEG with real texture (so its entropy-coded data is not trivial)."""
    width, height = size
    rng = np.random.default_rng(7)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, progressive=progressive)
    return out.getvalue()


def repeated_scan_jpeg(repeats: int) -> bytes:
    """A progressive JPEG whose last scan is repeated ``repeats`` times (finding 2)."""
    data = photo_jpeg((256, 256), progressive=True)
    last_scan = data.rindex(b"\xff\xda")
    scan = data[last_scan : data.rindex(b"\xff\xd9")]
    return data[:last_scan] + scan * repeats + b"\xff\xd9"


def many_exif_jpeg(segments: int) -> bytes:
    """A JPEG with ``segments`` EXIF segments (finding 3)."""
    exif = Image.Exif()
    exif[0x010F] = "Camera"
    payload = b"Exif\x00\x00" + exif.tobytes()
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    data = photo_jpeg()
    return data[:2] + segment * segments + data[2:]


SLOW_SIDE = 12_000
SLOW_SETTINGS: dict[str, Any] = {"max_pixels": SLOW_SIDE * SLOW_SIDE, "decode_timeout_s": 1.0}
"""A pixel limit that admits :func:`slow_png`, and a decode time limit it cannot meet (it takes
seconds even on an idle core) while an ordinary photo takes milliseconds."""


@functools.cache
def slow_png() -> bytes:
    """A real grey PNG of 12,000 x 12,000 zeros: inside the (test's) pixel limit, 150 kB on the
    wire, slow to decode (inflate, grey to RGB, resize); it stands for any file within the caps
    that decodes slowly."""
    return hostile.png_real_bomb(SLOW_SIDE)


def post(api: Api, data: bytes, key: str, name: str = "x.jpg") -> httpx.Response:
    """POST one image with ``key``."""
    return api.client.post(
        "/v1/identifications",
        headers={"Authorization": f"Bearer {key}"},
        files={"image": (name, data, "application/octet-stream")},
    )


def timed_officer(api: Api) -> tuple[int, float]:
    """An officer's identification of an ordinary photo: (status, seconds)."""
    started = time.perf_counter()
    response = post(api, solid_image_bytes(RED), api.keys["officer"], "ok.png")
    return response.status_code, time.perf_counter() - started


# ---- damaged compressed data --------------------------------------------------------------------


def test_jpeg_with_zeroed_middle_is_refused_as_corrupt_and_not_stored(
    make_api: Callable[..., Api],
) -> None:
    api = make_api()
    clean = photo_jpeg((640, 480))
    damaged = zeroed_middle(clean)
    with pytest.raises(ValueError, match="damaged"):
        check_jpeg_data(damaged)
    check_jpeg_data(clean)  # the check itself passes intact photos

    response = post(api, damaged, api.keys["officer"])
    body = assert_problem(response, 422, "corrupt-image")
    assert "damaged" in body["detail"]
    assert not [p for p in (api.settings.data_dir / "images").rglob("*") if p.is_file()]
    assert post(api, clean, api.keys["officer"]).status_code == 201

    batch = api.client.post(
        "/v1/identifications:batch",
        headers=api.h("scanner"),
        files=[("images", ("a.jpg", damaged, "image/jpeg")), ("images", ("b.jpg", clean, "x"))],
    )
    results = batch.json()["results"]
    assert results[0]["error"]["type"].endswith("/corrupt-image")
    assert "identification" in results[1]


def test_progressive_and_cmyk_jpegs_still_pass_the_integrity_check() -> None:
    check_jpeg_data(photo_jpeg(progressive=True))
    cmyk = io.BytesIO()
    Image.new("CMYK", (64, 48), (10, 200, 30, 5)).save(cmyk, "JPEG")
    check_jpeg_data(cmyk.getvalue())


# ---- expensive structure: refused before decoding -----------------------------------------------


def test_repeated_progressive_scans_are_refused_at_once(make_api: Callable[..., Api]) -> None:
    api = make_api()
    hostile_file = repeated_scan_jpeg(5000)
    assert hostile_file.count(b"\xff\xda") > MAX_JPEG_SCANS
    with ThreadPoolExecutor(3) as pool:
        attacks = [pool.submit(post, api, hostile_file, api.keys["scanner"]) for _ in range(2)]
        officer = pool.submit(timed_officer, api)
        status, officer_s = officer.result()
        responses = [a.result() for a in attacks]
    for response in responses:
        body = assert_problem(response, 422, "image-too-complex")
        assert "scans" in body["detail"]
    assert status == 201 and officer_s < PROMPT_S, officer_s
    # a normal progressive photo is fine
    assert post(api, photo_jpeg(progressive=True), api.keys["officer"]).status_code == 201


def test_hundreds_of_exif_segments_are_refused_at_once(make_api: Callable[..., Api]) -> None:
    api = make_api()
    hostile_file = many_exif_jpeg(300)
    started = time.perf_counter()
    body = assert_problem(post(api, hostile_file, api.keys["scanner"]), 422, "image-too-complex")
    assert "EXIF" in body["detail"]
    assert time.perf_counter() - started < PROMPT_S
    check_decoding_cost(many_exif_jpeg(1))  # one EXIF block is what cameras write


# ---- slow decodes: stopped, worker freed, other clients served ---------------------------------


def test_a_decode_past_its_time_limit_is_stopped_and_frees_its_worker(
    make_api: Callable[..., Api],
) -> None:
    api = make_api(**SLOW_SETTINGS)
    slow = slow_png()
    workers = api.context.decode._workers
    with ThreadPoolExecutor(3) as pool:
        attacks = [pool.submit(post, api, slow, api.keys["scanner"], "s.png") for _ in range(2)]
        time.sleep(0.05)
        status, officer_s = pool.submit(timed_officer, api).result()
        responses = [a.result() for a in attacks]
    for response in responses:
        body = assert_problem(response, 422, "image-too-complex")
        assert "CITES_DECODE_TIMEOUT_S" in body["detail"]
    assert status == 201 and officer_s < PROMPT_S, officer_s
    assert workers.replaced >= 2  # each stopped decode's worker was replaced
    statuses = [timed_officer(api)[0] for _ in range(3)]  # the pool is whole again
    assert statuses == [201, 201, 201]
    assert 'cites_rejected_total{reason="image_too_complex"}' in api.client.get("/metrics").text


def test_one_key_cannot_hold_more_than_its_share(make_api: Callable[..., Api]) -> None:
    """Per key: one of the two decoders, and at most 2 images in progress (429 beyond)."""
    api = make_api(**SLOW_SETTINGS, max_requests_per_key=2, max_batch_images=2)
    slow = slow_png()
    with ThreadPoolExecutor(7) as pool:
        attacks = [pool.submit(post, api, slow, api.keys["scanner"], "s.png") for _ in range(6)]
        time.sleep(0.1)
        status, officer_s = pool.submit(timed_officer, api).result()
        responses = [a.result() for a in attacks]
    assert status == 201 and officer_s < PROMPT_S, officer_s
    refused = [r for r in responses if r.status_code == 429]
    assert refused, [r.status_code for r in responses]
    body = assert_problem(refused[0], 429, "too-many-requests")
    assert refused[0].headers["retry-after"] == "1"
    assert "share" in body["detail"]
    assert {r.status_code for r in responses} <= {422, 429}


# ---- heat maps: same admission, capped, cached ---------------------------------------------------


def test_heatmaps_are_capped_cached_and_admitted(make_api: Callable[..., Api]) -> None:
    api = make_api(max_pixels=SLOW_SIDE * SLOW_SIDE, max_requests_per_key=1, max_batch_images=1)
    big = Image.new("RGB", (1300, 900), RED)
    buffer = io.BytesIO()
    big.save(buffer, "PNG")
    created = post(api, buffer.getvalue(), api.keys["officer"], "big.png")
    assert created.status_code == 201, created.text
    url = created.json()["heatmap_url"]
    first = api.client.get(url, headers=api.h("officer"))
    assert first.status_code == 200
    assert max(Image.open(io.BytesIO(first.content)).size) <= 1024
    again = api.client.get(url, headers=api.h("officer"))
    assert again.content == first.content and len(api.context.heatmaps.cache._entries) == 1

    # the same key, already at its share with a slow identification: the heat map is refused
    api.context.heatmaps.cache._entries.clear()
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post, api, slow_png(), api.keys["officer"], "s.png")
        deadline = time.monotonic() + 5
        while api.context.admission.in_progress == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = api.client.get(url, headers=api.h("officer"))
        assert slow.result().status_code in (201, 422)
    assert_problem(refused, 429, "too-many-requests")
    assert api.client.get(url, headers=api.h("officer")).status_code == 200
