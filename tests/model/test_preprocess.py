"""Preprocessing: every accepted format, 16-bit windowing, typed errors, resize/crop, draft mode."""

from __future__ import annotations

import io
import json
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from model.imageio import _histogram_percentiles
from model.preprocess import (
    DEFAULT_MAX_PIXELS,
    CorruptImageError,
    DecodedImage,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    PreprocessConfig,
    UnsupportedImageError,
    array_to_pixels,
    decode_image,
    image_to_array,
    image_to_pixels,
    pixels_to_array,
    preprocess_bytes,
    window_to_uint8,
)
from tests import images


def _pixels(decoded: DecodedImage) -> np.ndarray:
    assert decoded.image.mode == "RGB"
    return np.asarray(decoded.image).astype(np.int16)


def _close(pixel: np.ndarray, colour: tuple[int, int, int], tolerance: int = 12) -> bool:
    return bool(np.abs(pixel - np.asarray(colour)).max() <= tolerance)


# --- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt", "mode"),
    [
        ("jpeg_rgb", "JPEG", "RGB"),
        ("jpeg_cmyk", "JPEG", "CMYK"),
        ("jpeg_progressive", "JPEG", "RGB"),
        ("webp", "WEBP", "RGB"),
        ("heic", "HEIF", "RGB"),
        ("bmp", "BMP", "RGB"),
    ],
)
def test_colour_formats_keep_left_red_right_blue(name: str, fmt: str, mode: str) -> None:
    decoded = decode_image(images.ALL_VALID[name]())
    pixels = _pixels(decoded)
    assert (decoded.format, decoded.mode, decoded.bit_depth) == (fmt, mode, 8)
    assert decoded.image.size == decoded.original_size == (images.WIDTH, images.HEIGHT)
    assert not decoded.reduced_scale
    assert _close(pixels[10, 5], images.RED)
    assert _close(pixels[10, -5], images.BLUE)


def test_exif_orientation_6_is_applied() -> None:
    decoded = decode_image(images.jpeg_exif_orientation(6))
    pixels = _pixels(decoded)
    assert decoded.original_size == (64, 48)
    assert decoded.image.size == (48, 64)  # shown rotated 90 degrees clockwise
    assert _close(pixels[5, 24], images.RED)  # the stored left half is now on top
    assert _close(pixels[-5, 24], images.BLUE)


def test_heic_orientation_is_applied_once() -> None:
    decoded = decode_image(images.heic(orientation=6))
    pixels = _pixels(decoded)
    assert decoded.image.size == (48, 64)
    assert _close(pixels[5, 24], images.RED)
    assert _close(pixels[-5, 24], images.BLUE)


@pytest.mark.parametrize(
    ("name", "fill"), [("png_rgba", "alpha"), ("png_palette_transparent", "P")]
)
def test_transparency_is_composited_on_white(name: str, fill: str) -> None:
    decoded = decode_image(images.ALL_VALID[name]())
    pixels = _pixels(decoded)
    assert decoded.format == "PNG"
    assert _close(pixels[10, 5], images.RED, 0)
    assert _close(pixels[10, -5], images.WHITE, 0)


def test_partial_alpha_blends_with_white() -> None:
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 128))
    pixels = _pixels(decode_image(images.encode(image, "PNG")))
    # 128/255 of red over white: green and blue keep (1 - 128/255) of 255
    assert _close(pixels[0, 0], (255, 127, 127), 1)


@pytest.mark.parametrize("name", ["jpeg_grey", "tiff_grey8"])
def test_8bit_grey_is_replicated_into_rgb(name: str) -> None:
    decoded = decode_image(images.ALL_VALID[name]())
    pixels = _pixels(decoded)
    assert decoded.mode == "L" and decoded.bit_depth == 8
    assert np.array_equal(pixels[..., 0], pixels[..., 1])
    assert np.array_equal(pixels[..., 0], pixels[..., 2])
    ramp = np.linspace(0, 255, images.WIDTH)
    assert np.abs(pixels[20, :, 0] - ramp).max() <= 4


def test_animated_gif_uses_first_frame() -> None:
    decoded = decode_image(images.gif_animated())
    assert decoded.animated and decoded.format == "GIF"
    assert (np.asarray(decoded.image) == np.asarray(images.RED, dtype=np.uint8)).all()


# --- 16-bit windowing ------------------------------------------------------------------------


def _expected_window(values: np.ndarray) -> np.ndarray:
    low, high = np.percentile(values.astype(np.float64), [0.5, 99.5])
    return np.clip(np.rint((values - low) * 255.0 / (high - low)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("make", "mode"),
    [
        (images.png_grey16, "I;16"),
        (images.tiff_grey16, "I;16"),
        (lambda: images.tiff_grey16(big_endian=True), "I;16B"),
        (images.tiff_float32, "F"),
    ],
)
def test_16bit_and_float_grey_are_windowed_by_percentiles(make: object, mode: str) -> None:
    assert callable(make)
    decoded = decode_image(make())
    pixels = np.asarray(decoded.image)
    assert decoded.mode == mode
    assert decoded.bit_depth == (32 if mode == "F" else 16)
    expected = _expected_window(images.grey16_array().astype(np.float64))
    assert np.array_equal(pixels[..., 0], expected)
    assert np.array_equal(pixels[..., 1], expected) and np.array_equal(pixels[..., 2], expected)
    # the narrow 1000..3000 band now spans (almost) the whole 8-bit range
    assert np.percentile(pixels[..., 0], 1) < 10 and np.percentile(pixels[..., 0], 99) > 245


def test_window_maps_percentiles_to_0_and_255() -> None:
    values = np.arange(10_000, dtype=np.uint16).reshape(100, 100)
    low, high = 0.005 * 9999, 0.995 * 9999  # numpy's linear percentiles of 0..9999, by hand
    out = window_to_uint8(values).reshape(-1)
    assert out.dtype == np.uint8
    assert (out[: int(low) + 1] == 0).all() and (out[int(high) + 1 :] == 255).all()
    assert out[int(high) - 30] < 255 and (np.diff(out.astype(np.int16)) >= 0).all()
    expected = np.clip(np.rint((np.arange(10_000) - low) * 255 / (high - low)), 0, 255)
    assert np.array_equal(out, expected.astype(np.uint8))


def test_flat_16bit_image_uses_nominal_range() -> None:
    out = window_to_uint8(np.full((4, 4), 32896, dtype=np.uint16))
    assert (out == 128).all()


def test_window_ignores_non_finite_floats() -> None:
    values = np.linspace(0.0, 1.0, 400, dtype=np.float32).reshape(20, 20)
    values[0, 0] = np.nan
    values[0, 1] = np.inf
    out = window_to_uint8(values)
    assert out.dtype == np.uint8 and out[0, 0] == 0 and out[0, 1] == 0 and out[-1, -1] == 255


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_histogram_percentiles_equal_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 4096, size=rng.integers(1, 5000)).astype(np.uint16)
    expected = np.percentile(values.astype(np.float64), [0.5, 99.5])
    counts = np.bincount(values, minlength=65536)
    assert np.allclose(_histogram_percentiles(counts, (0.5, 99.5)), expected, atol=1e-9)


# --- errors ----------------------------------------------------------------------------------


def test_empty_bytes() -> None:
    with pytest.raises(EmptyImageError) as info:
        decode_image(images.empty())
    assert info.value.code == "empty" and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "data",
    [
        images.text(),
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",  # never run Ghostscript
        b"\x00" * 100,
        b"PK\x03\x04" + b"\x00" * 40,
    ],
)
def test_non_images_are_unsupported_and_name_the_formats(data: bytes) -> None:
    with pytest.raises(UnsupportedImageError) as info:
        decode_image(data)
    assert info.value.code == "unsupported"
    assert "JPEG" in str(info.value) and "HEIC" in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        images.truncated_jpeg(),
        images.truncated_png(),
        b"\xff\xd8\xff\xe0" + b"\x00" * 30,  # JPEG signature, damaged header
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 30,
        images.damaged_png(),
    ],
)
def test_truncated_and_damaged_images_are_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptImageError) as info:
        decode_image(data)
    assert info.value.code == "corrupt"
    assert "send the original file again" in str(info.value)


def test_truncation_is_not_hidden_by_load_truncated_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(CorruptImageError):
        decode_image(images.truncated_jpeg())
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever set it


def test_declared_bomb_is_refused_before_decoding_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLargeError) as info:
            decode_image(images.png_declaring(100_000, 100_000))
    error = info.value
    assert error.code == "too_large"
    assert error.size == (100_000, 100_000) and error.limit == DEFAULT_MAX_PIXELS
    assert "10,000,000,000" in str(error) and "50,000,000" in str(error)


def test_size_between_pil_limit_and_ours_raises_no_bomb_warning() -> None:
    # 9000x9000 = 81 MP is above Pillow's own warning level; a caller may allow it.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CorruptImageError):  # allowed size, but the pixel data is fake
            decode_image(images.png_declaring(9000, 9000), max_pixels=100_000_000)


def test_max_pixels_applies_to_ordinary_images() -> None:
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(images.jpeg_rgb(), max_pixels=1000)
    assert info.value.size == (64, 48) and "64x48" in str(info.value)


def test_all_errors_are_value_errors_with_codes() -> None:
    codes = {
        cls.code
        for cls in (EmptyImageError, UnsupportedImageError, CorruptImageError, ImageTooLargeError)
    }
    assert codes == {"empty", "unsupported", "corrupt", "too_large"}
    assert issubclass(ImageError, ValueError)


def _mutations() -> st.SearchStrategy[bytes]:
    valid = [images.jpeg_rgb(), images.png_rgba(), images.webp(), images.tiff_grey16()]
    valid += [images.gif_animated(), images.jpeg_progressive(), images.bmp()]

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(valid)))
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] = draw(st.integers(0, 255))
        if draw(st.booleans()):
            data = data[: draw(st.integers(0, len(data)))]
        return bytes(data)

    return st.one_of(st.binary(max_size=2048), mutate())


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=_mutations())
def test_random_and_mutated_bytes_only_raise_image_errors(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow may warn about damaged metadata; fine
        try:
            decoded = decode_image(data, max_pixels=4_000_000, target_shorter=32)
        except ImageError as exc:
            assert exc.code in {"empty", "unsupported", "corrupt", "too_large"}
            return
    assert decoded.image.mode == "RGB" and min(decoded.image.size) >= 1


# --- configuration ---------------------------------------------------------------------------


def test_default_config_is_the_backbone_original() -> None:
    config = PreprocessConfig()
    assert config.to_dict() == {
        "input_size": 224,
        "resize_shorter": 256,
        "interpolation": "bicubic",
        "crop": "center",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }


def test_config_round_trips_through_json() -> None:
    config = PreprocessConfig(
        input_size=192,
        resize_shorter=219,
        interpolation="bilinear",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    again = PreprocessConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and isinstance(again.mean, tuple)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"input_size": 0}, "input_size"),
        ({"input_size": "224"}, "input_size"),
        ({"resize_shorter": True}, "resize_shorter"),
        ({"interpolation": "cubic"}, "interpolation"),
        ({"crop": "random"}, "crop"),
        ({"mean": [0.5, 0.5]}, "mean"),
        ({"std": [0.5, 0.0, 0.5]}, "std"),
        ({"std": "0.5"}, "std"),
        ({"colour": "rgb"}, "colour"),
        ({"resize_shorter": 200}, "resize_shorter"),
    ],
)
def test_from_dict_names_the_bad_key(change: dict[str, object], key: str) -> None:
    data = {**PreprocessConfig().to_dict(), **change}
    with pytest.raises(ValueError, match=key):
        PreprocessConfig.from_dict(data)


def test_from_dict_names_a_missing_key() -> None:
    data = PreprocessConfig().to_dict()
    del data["std"]
    with pytest.raises(ValueError, match="'std' is missing"):
        PreprocessConfig.from_dict(data)


# --- resize, crop, normalise -----------------------------------------------------------------


@pytest.mark.parametrize("size", [(300, 200), (199, 301), (256, 256), (1000, 257)])
def test_image_to_array_matches_a_manual_computation(size: tuple[int, int]) -> None:
    image = images.noise_image(*size, seed=size[0])
    width, height = size
    scale = 256 / min(width, height)
    new = (256, int(256 * height / width)) if width <= height else (int(256 * width / height), 256)
    assert abs(new[0] - width * scale) < 1 and abs(new[1] - height * scale) < 1
    resized = np.asarray(image.resize(new, Image.Resampling.BICUBIC), dtype=np.float64)
    top, left = round((new[1] - 224) / 2), round((new[0] - 224) / 2)
    crop = resized[top : top + 224, left : left + 224] / 255.0
    expected = ((crop - 0.5) / 0.5).transpose(2, 0, 1)
    array = image_to_array(image, PreprocessConfig())
    assert array.shape == (3, 224, 224) and array.dtype == np.float32
    assert array.flags["C_CONTIGUOUS"]
    assert np.abs(array - expected).max() < 1e-6


@pytest.mark.train  # imports torch: not part of the edit-test loop
@pytest.mark.parametrize("size", [(300, 200), (199, 301)])
def test_image_to_array_matches_torchvision(size: tuple[int, int]) -> None:
    transforms = pytest.importorskip("torchvision.transforms", reason="needs the train extra")
    image = images.noise_image(*size, seed=7)
    pipeline = transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )
    expected = pipeline(image).numpy()
    assert np.abs(image_to_array(image, PreprocessConfig()) - expected).max() < 1e-5


def test_pixels_then_array_is_image_to_array() -> None:
    """The model input in two steps (uint8 pixels the image checks measure, then
    normalisation) equals the one-step conversion, and undoing the normalisation gives the
    pixels back."""
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, size=(300, 410, 3), dtype=np.uint8), "RGB")
    config = PreprocessConfig(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    pixels = image_to_pixels(image, config)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    array = pixels_to_array(pixels, config)
    assert array.dtype == np.float32 and array.flags.c_contiguous
    np.testing.assert_array_equal(array, image_to_array(image, config))
    np.testing.assert_array_equal(array_to_pixels(array, config), pixels)


def test_squash_resizes_without_crop() -> None:
    image = images.halves(400, 100)
    array = image_to_array(image, PreprocessConfig(crop="squash", input_size=32))
    assert array.shape == (3, 32, 32)
    assert np.allclose(array[:, :, 0], [[1.0], [-1.0], [-1.0]])  # left column red, all rows
    assert np.allclose(array[:, :, -1], [[-1.0], [-1.0], [1.0]])


def test_preprocess_bytes_of_every_format() -> None:
    config = PreprocessConfig(input_size=32, resize_shorter=40)
    for name, make in images.ALL_VALID.items():
        array = preprocess_bytes(make(), config)
        assert array.shape == (3, 32, 32), name
        assert array.dtype == np.float32 and array.min() >= -1.0 and array.max() <= 1.0, name


# --- draft mode ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phone_jpeg() -> bytes:
    return images.large_jpeg(4032, 3024)


def test_large_jpeg_is_decoded_at_reduced_scale(phone_jpeg: bytes) -> None:
    draft = decode_image(phone_jpeg, target_shorter=256)
    assert draft.reduced_scale and draft.original_size == (4032, 3024)
    assert draft.image.size == (504, 378)  # 1/8 scale: the smallest keeping 256 px
    full = decode_image(phone_jpeg)
    assert not full.reduced_scale and full.image.size == (4032, 3024)
    config = PreprocessConfig()
    difference = np.abs(preprocess_bytes(phone_jpeg, config) - image_to_array(full.image, config))
    assert difference.mean() < 0.01  # in normalised units: under 1.3/255 on average


@pytest.mark.parametrize(
    ("size", "target", "expected"),
    [
        ((1600, 1200), 256, (400, 300)),
        ((1600, 1200), 600, (800, 600)),
        ((1600, 1200), 601, (1600, 1200)),  # less than 2x larger: decoded in full
        ((500, 400), 256, (500, 400)),
        ((1512, 2016), 224, (378, 504)),
    ],
)
def test_draft_never_goes_below_the_target(
    size: tuple[int, int], target: int, expected: tuple[int, int]
) -> None:
    data = images.encode(images.noise_image(*size), "JPEG", quality=80)
    decoded = decode_image(data, target_shorter=target)
    assert decoded.image.size == expected
    assert decoded.reduced_scale == (expected != size)
    assert min(decoded.image.size) >= target or expected == size


def test_draft_only_applies_to_jpeg() -> None:
    data = images.encode(images.noise_image(1200, 900), "PNG")
    decoded = decode_image(data, target_shorter=100)
    assert not decoded.reduced_scale and decoded.image.size == (1200, 900)


# --- real images -----------------------------------------------------------------------------


@pytest.mark.shared_data
def test_real_photos_preprocess(shared_data: Path) -> None:
    folder = shared_data
    paths = sorted((folder / "met-ivory").glob("*/*.jpg"))[:5]
    paths += sorted((folder / "xray-baggage").glob("*/*.jpg"))[:5]
    if not paths:
        pytest.skip(f"shared data not found at {folder} (set CITES_SHARED_DATA)")
    config = PreprocessConfig()
    for path in paths:
        data = path.read_bytes()
        array = preprocess_bytes(data, config)
        assert array.shape == (3, 224, 224), path
        with Image.open(io.BytesIO(data)) as image:
            reference = image_to_array(image.convert("RGB"), config)
        difference = np.abs(array - reference)
        if decode_image(data, target_shorter=config.resize_shorter).reduced_scale:
            assert difference.mean() < 0.03, path  # decoded at 1/2 scale: close, not equal
        else:
            assert difference.max() < 1e-6, path


def test_concurrent_decodes_agree_with_serial_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # the locked path too
    inputs = [make() for make in images.ALL_VALID.values() if make is not images.heic]
    inputs += [images.truncated_jpeg(), images.png_declaring(), images.text()]

    def outcome(data: bytes) -> object:
        try:
            return np.asarray(decode_image(data).image).tobytes()
        except ImageError as exc:
            return exc.code

    serial = [outcome(data) for data in inputs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            assert list(pool.map(outcome, inputs)) == serial
    assert serial[-3:] == ["corrupt", "too_large", "unsupported"]
