"""The checks before the model: the quality gate and the scanner-image detector.

Covers issue 14's cases: blank beige 640x480, 1x1, 4x4, uniform white/black, far too dark or
bright, badly blurred, tiny photos enlarged; the 35 real baggage scans through a camera-only
model (all ``outside_training_domain``, none a taxon or look-alike, also in a batch); and the
refusal rate of the gate on the real camera sets (at most 1%)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from model.checks import check_array, prepare_input
from model.imageio import ImageError
from model.modality import detect_modality
from model.predictor import Predictor
from model.preprocess import PreprocessConfig
from model.quality import assess_quality
from tests.factories import RED, blank_image_bytes, make_tiny_bundle, solid_image_bytes

CONFIG = PreprocessConfig()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _photo(size: tuple[int, int] = (400, 300), seed: int = 0) -> Image.Image:
    """A textured, photo-like image: smooth shapes plus fine grain."""
    rng = np.random.default_rng(seed)
    width, height = size
    rows, cols = np.mgrid[0:height, 0:width]
    base = 120 + 60 * np.sin(cols / 23.0) * np.cos(rows / 17.0)
    grain = rng.normal(0, 12, (height, width))
    channels = [base + grain, base * 0.8 + grain, base * 0.6 + grain]
    pixels = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _problems(data: bytes) -> tuple[str, ...]:
    return prepare_input(data, CONFIG)[1].quality.problems


@pytest.fixture(scope="module")
def camera_predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return Predictor(make_tiny_bundle(tmp_path_factory.mktemp("w")), threads=1)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("RGB", (640, 480), (230, 215, 180)), "uniform"),  # blank beige
        (Image.new("RGB", (1, 1), (200, 180, 150)), "too_small"),
        (Image.new("RGB", (640, 480), (255, 255, 255)), "uniform"),
        (Image.new("RGB", (640, 480), (0, 0, 0)), "too_dark"),
        (Image.fromarray(np.random.default_rng(1).integers(0, 255, (4, 4, 3), np.uint8)), None),
        (_photo().point(lambda v: int(v * 0.08)), "too_dark"),
        (_photo().point(lambda v: min(255, int(v * 0.08) + 240)), "too_bright"),
        (_photo().filter(ImageFilter.GaussianBlur(6)), "blurred"),
        (_photo().resize((48, 36)), "blurred"),
    ],
    ids=["beige", "1x1", "white", "black", "4x4", "dark", "bright", "blurred", "48px"],
)
def test_the_gate_refuses_unusable_images(image: Image.Image, expected: str | None) -> None:
    problems = _problems(_png(image))
    assert problems, "the gate let an unusable image through"
    if expected is not None:
        assert expected in problems
    if image.size == (4, 4):
        assert "too_small" in problems


def test_the_gate_accepts_a_textured_photo() -> None:
    assert _problems(_png(_photo())) == ()
    assert _problems(solid_image_bytes(RED)) == ()


def test_nearly_uniform_is_uniform() -> None:
    rng = np.random.default_rng(0)
    beige = np.full((480, 640, 3), (230, 215, 180), dtype=np.float64)
    noisy = np.clip(beige + rng.normal(0, 2, beige.shape), 0, 255).astype(np.uint8)
    assert "uniform" in _problems(_png(Image.fromarray(noisy)))


def test_assess_quality_rejects_a_wrong_shape() -> None:
    with pytest.raises(ValueError, match="RGB array"):
        assess_quality(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="RGB array"):
        detect_modality(np.zeros((10, 10, 4), dtype=np.uint8))


@pytest.mark.parametrize(
    "data",
    [
        blank_image_bytes((230, 215, 180)),
        blank_image_bytes((200, 180, 150), size=(1, 1)),
        _png(Image.fromarray(np.random.default_rng(2).integers(0, 255, (4, 4, 3), np.uint8))),
        blank_image_bytes((255, 255, 255)),
        blank_image_bytes((0, 0, 0)),
    ],
    ids=["beige-640x480", "1x1", "4x4", "white", "black"],
)
def test_unusable_images_never_get_a_taxon_or_lookalike(
    camera_predictor: Predictor, data: bytes
) -> None:
    result = camera_predictor.predict_bytes([data])[0]
    assert not isinstance(result, ImageError)
    assert result.decision.kind == "unusable_image"
    assert result.decision.rule.startswith("image_quality:")
    assert result.decision.taxon_id is None and result.decision.label_id is None
    assert result.top == []
    assert "retake the photo" in result.decision.reason


def test_arrays_without_checks_are_checked_on_the_model_input(
    camera_predictor: Predictor,
) -> None:
    blank = np.zeros((1, 3, 224, 224), dtype=np.float32)  # mid grey, uniform
    (result,) = camera_predictor.predict_arrays(blank)
    assert result.decision.kind == "unusable_image"
    assert not check_array(blank[0], CONFIG).quality.usable


def _pseudo_colour_scan(seed: int = 0) -> Image.Image:
    """A synthetic dual-energy style scan: white field, orange and blue translucent shapes."""
    rng = np.random.default_rng(seed)
    pixels = np.full((300, 400, 3), 250, dtype=np.float64)
    pixels[60:200, 50:250] = (235, 140, 50)  # organic: orange
    pixels[120:240, 200:330] = (40, 90, 200)  # metal: blue
    pixels[100:130, 80:300] = (60, 170, 90)  # mixed: green
    pixels += rng.normal(0, 4, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_a_pseudo_colour_scan_is_outside_the_domain_of_a_camera_model(
    camera_predictor: Predictor, tmp_path: Path
) -> None:
    scan = _png(_pseudo_colour_scan())
    result = camera_predictor.predict_bytes([scan, solid_image_bytes(RED)])
    first, second = result
    assert not isinstance(first, ImageError) and not isinstance(second, ImageError)
    assert (first.decision.kind, first.decision.rule) == (
        "outside_training_domain",
        "modality:pseudo_colour",
    )
    assert first.top == [] and first.decision.taxon_id is None
    assert second.decision.kind == "taxon"  # the batch's camera photo is still answered
    xray_model = Predictor(make_tiny_bundle(tmp_path, modalities=("camera", "xray")))
    (answered,) = xray_model.predict_bytes([scan])
    assert not isinstance(answered, ImageError)
    assert answered.decision.rule != "modality:pseudo_colour"
    # A bundle that takes x-ray images is not gated: scanners set exposure and sharpness.
    (blank,) = xray_model.predict_bytes([blank_image_bytes((230, 215, 180))])
    assert not isinstance(blank, ImageError)
    assert blank.decision.kind != "unusable_image"


def test_a_16_bit_grey_image_is_a_scanner_image() -> None:
    grey = np.random.default_rng(0).integers(0, 255, (50, 60), dtype=np.uint8)
    pixels = np.repeat(grey[:, :, None], 3, axis=2)
    assert detect_modality(pixels, bit_depth=16).signature == "grey_high_bit_depth"
    assert detect_modality(pixels, bit_depth=8).modality == "camera"


@pytest.mark.shared_data
def test_all_35_real_scans_are_outside_the_camera_models_domain(
    shared_data: Path, camera_predictor: Predictor
) -> None:
    scans = sorted((shared_data / "xray-baggage").rglob("*.jpg"))
    assert len(scans) == 35
    results = camera_predictor.predict_bytes([p.read_bytes() for p in scans])  # one batch
    kinds = {p.name: r.decision.kind for p, r in zip(scans, results, strict=True)}  # type: ignore[union-attr]
    assert set(kinds.values()) == {"outside_training_domain"}, kinds
    assert all(not r.top for r in results)  # type: ignore[union-attr]


@pytest.mark.shared_data
@pytest.mark.slow
def test_the_checks_refuse_at_most_one_percent_of_real_photos(shared_data: Path) -> None:
    """The 1% budget on a deterministic sample of every camera set (the full figures:
    python -m training.image_checks, docs/model.md)."""
    refused = flagged = total = 0
    for name in ("met-ivory", "wood-trade-groups", "imagenet-sample"):
        files = sorted((shared_data / name).rglob("*.jpg"))[::8]
        for path in files:
            checks = prepare_input(path.read_bytes(), CONFIG)[1]
            refused += not checks.quality.usable
            flagged += checks.modality.looks_like_scanner
            total += 1
    assert total > 400
    assert refused / total <= 0.01
    assert flagged / total <= 0.01
