"""Scanner inputs: DICOS/DICOM (pydicom), 16-bit and multi-sample TIFF, pseudo-colour scans."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from model.imageio import (
    CorruptImageError,
    UnsupportedImageError,
    decode_image,
    sniff_format,
)
from model.preprocess import PreprocessConfig, preprocess_bytes
from model.scanner import MIN_PROJECTION_FRAMES, NoPixelDataError, apply_window
from tests.scanner_files import (
    CT_SOP_CLASS,
    DICOS_CT_SLICE,
    DICOS_DX_JPEG_LOSSLESS,
    DICOS_DX_PALETTE,
    DICOS_DX_UNCOMPRESSED,
    DICOS_TDR,
    dicom_bytes,
    ramp_uint16,
    tiff_bytes,
)

pytest.importorskip("pydicom", reason="the scanner extra (pydicom) is not installed")


@pytest.mark.parametrize(
    ("path", "mode"),
    [
        (DICOS_DX_JPEG_LOSSLESS, "MONOCHROME2"),
        (DICOS_DX_UNCOMPRESSED, "MONOCHROME2"),
        (DICOS_DX_PALETTE, "PALETTE COLOR"),
    ],
)
def test_dicos_dx_files_decode_as_xray(path: Path, mode: str) -> None:
    data = path.read_bytes()
    assert sniff_format(data) == "DICOM"
    decoded = decode_image(data)
    assert decoded.format == "DICOS"
    assert decoded.modality == "xray"
    assert decoded.mode == mode
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (256, 128)
    pixels = np.asarray(decoded.image)
    assert pixels.std() > 5, "the windowed image must keep contrast"
    assert preprocess_bytes(data, PreprocessConfig()).shape == (3, 224, 224)


def test_jpeg_lossless_dx_uses_its_window() -> None:
    """The presentation file carries WindowCenter 1234 / WidthWidth 500: values below 984.5
    are black and above 1483.5 white; the rest follows the DICOM linear function."""
    import pydicom

    dataset = pydicom.dcmread(DICOS_DX_JPEG_LOSSLESS)
    expected = apply_window(dataset.pixel_array.astype(np.float64), 1234.0, 500.0)
    decoded = np.asarray(decode_image(DICOS_DX_JPEG_LOSSLESS.read_bytes()).image)[..., 0]
    assert np.array_equal(decoded, expected)


def test_palette_colour_dx_is_coloured() -> None:
    """The SDK's palette is magenta-like: red = blue = 2 x green (16-bit entries / 257)."""
    pixels = np.asarray(decode_image(DICOS_DX_PALETTE.read_bytes()).image).astype(int)
    assert np.abs(pixels[..., 0] - pixels[..., 1]).max() > 20, "a palette image must not be grey"
    bright = pixels[..., 0] > 60
    assert np.all(np.abs(pixels[..., 0][bright] - 2 * pixels[..., 1][bright]) <= 2)


def test_dicos_ct_volume_is_answered_from_its_projection() -> None:
    decoded = decode_image(DICOS_CT_SLICE.read_bytes())
    assert decoded.modality == "xray"
    assert decoded.modality_evidence is not None
    assert "projection of 40 slices" in decoded.modality_evidence
    assert decoded.image.size == (10, 40)  # columns x slices


def test_threat_detection_report_has_no_pixels() -> None:
    with pytest.raises(NoPixelDataError, match="Threat Detection Report") as caught:
        decode_image(DICOS_TDR.read_bytes())
    assert caught.value.code == "no_pixels"


def test_rescale_then_window_then_monochrome1_inverted() -> None:
    stored = ramp_uint16(64, 8, 0, 630)  # rescaled: 2 * v - 100 -> -100 .. 1160
    window = (530.0, 1001.0)  # 30 .. 1030 in rescaled units
    mono2 = dicom_bytes(stored, slope=2, intercept=-100, window=window)
    mono1 = dicom_bytes(stored, photometric="MONOCHROME1", slope=2, intercept=-100, window=window)
    grey2 = np.asarray(decode_image(mono2).image)[..., 0]
    grey1 = np.asarray(decode_image(mono1).image)[..., 0]
    expected = apply_window(stored.astype(np.float64) * 2 - 100, *window)
    assert np.array_equal(grey2, expected)
    assert np.array_equal(grey1, 255 - expected)
    assert grey2[0, 0] == 0 and grey2[0, -1] == 255  # clipped at both ends
    assert decode_image(mono2).format == "DICOM"


def test_dicom_without_window_uses_the_percentile_window() -> None:
    decoded = decode_image(dicom_bytes(ramp_uint16(200, 10, 1000, 3000)))
    grey = np.asarray(decoded.image)[..., 0]
    assert grey.min() == 0 and grey.max() == 255  # stretched, not 1000/65535 * 255


def test_ct_volume_projection_shows_dense_objects_dark() -> None:
    frames, rows, columns = MIN_PROJECTION_FRAMES + 4, 12, 30
    volume = np.full((frames, rows, columns), 24, dtype=np.uint16)  # air: 24 * 1 - 1024
    volume[5:15, 3:9, 10:20] = 2024  # a block of +1000 HU
    data = dicom_bytes(volume, modality="CT", sop_class=CT_SOP_CLASS, slope=1, intercept=-1024)
    decoded = decode_image(data)
    grey = np.asarray(decoded.image)[..., 0]
    assert grey.shape == (frames, columns)
    assert grey[8, 15] < 50 and grey[0, 0] > 200


def test_truncated_dicom_is_corrupt() -> None:
    data = DICOS_DX_UNCOMPRESSED.read_bytes()
    with pytest.raises(CorruptImageError):
        decode_image(data[: len(data) // 2])


def test_dicom_over_the_pixel_limit_is_refused() -> None:
    from model.imageio import ImageTooLargeError

    with pytest.raises(ImageTooLargeError):
        decode_image(DICOS_DX_UNCOMPRESSED.read_bytes(), max_pixels=1000)


def test_without_pydicom_the_message_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(UnsupportedImageError, match=r"cites-vision\[scanner\]"):
        decode_image(DICOS_DX_UNCOMPRESSED.read_bytes())


def test_sixteen_bit_grey_tiff_is_xray() -> None:
    decoded = decode_image(tiff_bytes(ramp_uint16()))
    assert decoded.modality == "xray"
    assert decoded.bit_depth == 16
    assert decoded.modality_evidence == "16-bit grey TIFF"
    grey = np.asarray(decoded.image)[..., 0]
    assert grey.min() == 0 and grey.max() == 255


def test_sixteen_bit_rgb_tiff_goes_through_tifffile() -> None:
    rgb = np.zeros((20, 30, 3), dtype=np.uint16)
    rgb[..., 0] = ramp_uint16(30, 20, 0, 60000)
    rgb[..., 2] = 40000
    decoded = decode_image(tiff_bytes(rgb, photometric="rgb"))
    assert decoded.mode == "tifffile uint16x3"  # Pillow alone would keep the top 8 bits only
    pixels = np.asarray(decoded.image)
    assert pixels.shape == (20, 30, 3)
    assert pixels[..., 0].max() == 255 and pixels[..., 0].min() == 0


def test_float16_tiff_goes_through_tifffile() -> None:
    values = (ramp_uint16(30, 20, 0, 1000) / 1000.0).astype(np.float16)
    decoded = decode_image(tiff_bytes(values))
    assert decoded.mode == "tifffile float16x1"
    grey = np.asarray(decoded.image)[..., 0]
    assert grey.min() == 0 and grey.max() == 255


def test_without_tifffile_a_tiff_pillow_cannot_read_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tiff_bytes((ramp_uint16(30, 20) / 3000.0).astype(np.float16))
    monkeypatch.setitem(sys.modules, "tifffile", None)
    with pytest.raises(UnsupportedImageError, match=r"cites-vision\[scanner\]"):
        decode_image(data)


def test_dual_energy_two_sample_tiff_is_xray() -> None:
    pair = np.stack([ramp_uint16(30, 20), ramp_uint16(30, 20, 2000, 4000)], axis=-1)
    decoded = decode_image(tiff_bytes(pair, photometric="minisblack", planarconfig="contig"))
    assert decoded.modality == "xray"
    assert decoded.modality_evidence is not None and "dual-energy" in decoded.modality_evidence


def test_camera_photo_has_no_scanner_evidence() -> None:
    from tests.images import jpeg_rgb

    decoded = decode_image(jpeg_rgb())
    assert decoded.modality is None


@pytest.mark.shared_data
def test_real_pseudo_colour_scans_decode(shared_data: Path) -> None:
    paths = sorted((shared_data / "xray-baggage").glob("*/*.jpg"))
    if len(paths) != 35:
        pytest.skip(f"expected the 35 xray-baggage scans, found {len(paths)}")
    for path in paths:
        decoded = decode_image(path.read_bytes())
        pixels = np.asarray(decoded.image).astype(int)
        assert decoded.image.mode == "RGB", path
        assert np.abs(pixels[..., 0] - pixels[..., 2]).mean() > 3, f"{path} lost its colour"
