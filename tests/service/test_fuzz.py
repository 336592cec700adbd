"""Fuzzing with a bounded budget, run in CI.

1. schemathesis over the service's own OpenAPI schema, every operation, with a valid admin key,
   positive and negative data: no 5xx, and every answer conforms to the schema (status code
   documented, content type documented, body valid against the documented schema).
2. hypothesis on :func:`model.preprocess.preprocess_bytes`: random bytes and mutations of valid
   images of every accepted format (bit flips, truncations, spliced and repeated slices, foreign
   headers) either give a finite (3, S, S) float32 array or raise an ``ImageError`` subclass,
   never anything else.

The budget is set by ``CITES_FUZZ_EXAMPLES`` (API examples per operation and mode, default 6)
and ``CITES_FUZZ_IMAGE_EXAMPLES`` (preprocessing examples, default 1000).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from PIL import Image

from model.preprocess import ImageError, PreprocessConfig, preprocess_bytes
from tests import hostile

logger = logging.getLogger(__name__)

API_EXAMPLES = int(os.environ.get("CITES_FUZZ_EXAMPLES", "6"))
IMAGE_EXAMPLES = int(os.environ.get("CITES_FUZZ_IMAGE_EXAMPLES", "1000"))
FUZZ_MAX_PIXELS = 4_000_000  # keeps each example fast; larger declared sizes must be refused


# --- the API --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Api:
    """A running service: its OpenAPI schema (loaded by schemathesis), URL and an admin key."""

    schema: Any
    url: str
    key: str


@pytest.fixture(scope="module")
def api(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A real server, its OpenAPI schema loaded by schemathesis, and an admin key."""
    schemathesis = pytest.importorskip("schemathesis", reason="pip install -e '.[dev]'")
    from tests.service_helpers import running_service  # the service extras, only for this part

    data_dir = tmp_path_factory.mktemp("fuzz-data")
    with running_service(tiny_bundle, data_dir) as handle:
        key = handle.make_key("admin")
        schema = schemathesis.openapi.from_url(f"{handle.url}/openapi.json")
        yield Api(schema, handle.url, key)


def test_schemathesis_every_operation(api: Api) -> None:
    """No 5xx and no response that violates the schema, for every operation."""
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = api.schema
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    headers = {"Authorization": f"Bearer {api.key}"}
    examples = 0
    operations: list[str] = []
    skipped_negative: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        operations.append(f"{operation.method.upper()} {operation.path}")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=API_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                nonlocal examples
                examples += 1
                case.call_and_validate(headers=headers, checks=checks, timeout=60)

            try:
                run()
            except Unsatisfiable:
                if mode is GenerationMode.POSITIVE:
                    raise
                skipped_negative.append(operations[-1])  # nothing in it can be made invalid
    assert any("/v1/identifications" in op for op in operations), operations
    logger.info("schemathesis: %d examples over %d operations", examples, len(operations))
    print(f"schemathesis: {examples} examples over {len(operations)} operations")


def test_schemathesis_real_resources(api: Api) -> None:
    """Random ids only reach 404s; this sends every read with ids that exist (an identification
    with feedback, a taxon, the active version) and validates those answers against the schema
    too (images, heat maps, archives and JSON bodies alike)."""
    import httpx
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = api.schema
    headers = {"Authorization": f"Bearer {api.key}"}
    with httpx.Client(base_url=api.url, headers=headers, timeout=60) as client:
        made = client.post(
            "/v1/identifications",
            files={"image": ("r.jpg", hostile.image_bytes(seed=5), "image/jpeg")},
        )
        assert made.status_code == 201, made.text
        ident = made.json()["id"]
        fed = client.post(f"/v1/identifications/{ident}/feedback", json={"verdict": "confirm"})
        assert fed.status_code == 201, fed.text
        active = client.get("/v1/models/active").json()
        checked_permit = client.post(
            "/v1/verifications",
            data={
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
            },
            files={"images": ("r.jpg", hostile.image_bytes(seed=6), "image/jpeg")},
        )
        assert checked_permit.status_code == 201, checked_permit.text
    values = {
        "verification_id": checked_permit.json()["id"],
        "identification_id": ident,
        "id": ident,
        "taxon_id": next(lab["taxon_id"] for lab in active["labels"] if lab["taxon_id"]),
        "version": active["version"],
    }
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() != "GET":
            continue
        names = [p.name for p in operation.path_parameters]
        query = {"q": "elephant"} if operation.path == "/v1/taxa" else None
        case = operation.Case(path_parameters={n: values[n] for n in names}, query=query)
        response = case.call_and_validate(headers=headers, checks=checks, timeout=60)
        if operation.path.endswith("/located"):  # a camera answer has no box: documented 404
            assert response.status_code == 404, (operation.path, response.status_code)
            checked.append(operation.path)
            continue
        assert 200 <= response.status_code < 300, (operation.path, response.status_code)
        checked.append(operation.path)
    assert any("/image" in path for path in checked), checked


# --- preprocessing --------------------------------------------------------------------------


def _seed_images() -> list[bytes]:
    """One small valid image per accepted format and colour mode, plus hostile headers."""
    seeds = [hostile.image_bytes(fmt, (40, 30), seed=i) for i, fmt in enumerate(("JPEG", "PNG"))]
    base = Image.new("RGB", (40, 30), (200, 30, 60))
    variants: list[tuple[Image.Image, str, dict[str, Any]]] = [
        (base, "WEBP", {}),
        (base, "TIFF", {}),
        (base, "GIF", {}),
        (base, "BMP", {}),
        (base.convert("L"), "PNG", {}),
        (base.convert("RGBA"), "PNG", {}),
        (base.convert("P"), "PNG", {}),
        (base.convert("CMYK"), "JPEG", {}),
        (base, "JPEG", {"progressive": True}),
        (Image.new("I;16", (40, 30), 40000), "PNG", {}),
        (Image.new("I;16", (40, 30), 1000), "TIFF", {}),
    ]
    for image, fmt, options in variants:
        buf = io.BytesIO()
        image.save(buf, format=fmt, **options)
        seeds.append(buf.getvalue())
    seeds += [
        hostile.animated_gif(3),
        hostile.jpeg_with_exif(hostile.exif_orientation(6)),
        hostile.jpeg_with_exif(hostile.exif_garbage()),
        hostile.png_declaring(3000, 3000),
        hostile.tiff_declaring(2000, 2000),
        hostile.gif_declaring(500, 500),
    ]
    return seeds


SEEDS = _seed_images()


@st.composite
def mutated_image(draw: st.DrawFn) -> bytes:
    """A valid image of some format, damaged in one to four ways."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("flip", "truncate", "splice", "repeat", "zero", "header")))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "repeat":
            end = min(len(data), at + draw(st.integers(1, 512)))
            data[at:at] = data[at:end] * draw(st.integers(1, 8))
        elif kind == "zero":
            end = min(len(data), at + draw(st.integers(1, 256)))
            data[at:end] = b"\x00" * (end - at)
        else:
            other = draw(st.sampled_from(SEEDS))
            data[: min(len(other), 64)] = other[:64]
    return bytes(data)


image_inputs = st.one_of(st.binary(max_size=2048), mutated_image(), st.sampled_from(SEEDS))
CONFIG = PreprocessConfig(input_size=64, resize_shorter=72)
PREPROCESS_RUNS: list[str] = []


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # Pillow's own "Corrupt EXIF data" notes
@settings(
    max_examples=IMAGE_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=image_inputs)
def test_preprocess_only_raises_typed_errors(data: bytes) -> None:
    """Any byte string gives a finite model input or an ``ImageError``: nothing else escapes."""
    try:
        array = preprocess_bytes(data, CONFIG, max_pixels=FUZZ_MAX_PIXELS)
    except ImageError as exc:
        assert exc.code in {"empty", "unsupported", "corrupt", "too_large"}, exc.code
        assert str(exc).strip(), "an image error needs a message the user can act on"
        PREPROCESS_RUNS.append(exc.code)
        return
    assert array.shape == (3, 64, 64)
    assert array.dtype == np.float32
    assert np.isfinite(array).all()
    PREPROCESS_RUNS.append("ok")


def test_preprocess_fuzz_exercised_both_outcomes() -> None:
    """The fuzzer above really reached decoded images and every kind of refusal it can."""
    if not PREPROCESS_RUNS:
        pytest.skip("run together with test_preprocess_only_raises_typed_errors")
    counts = {code: PREPROCESS_RUNS.count(code) for code in sorted(set(PREPROCESS_RUNS))}
    logger.info("preprocess fuzz: %d examples %s", len(PREPROCESS_RUNS), counts)
    print(f"preprocess fuzz: {len(PREPROCESS_RUNS)} examples {counts}")
    assert counts.get("ok", 0) > 0 and counts.get("corrupt", 0) + counts.get("unsupported", 0) > 0
