"""Read what x-ray scanners send: DICOS and DICOM files, and TIFFs Pillow cannot decode.

:func:`decode_dicom` turns a DICOM or DICOS (NEMA IIC 1) file into the same
:class:`~model.imageio.DecodedImage` every other upload becomes (8-bit RGB), recording that the
image comes from an x-ray scanner (``modality="xray"``). It is called by
:func:`model.imageio.decode_image` for bytes that carry the ``DICM`` preamble; callers never
call it directly. The rules (see docs/xray.md, "Reading scanner files"):

* DX (digital x-ray, for presentation or for processing): RescaleSlope/RescaleIntercept first
  (pydicom's ``apply_modality_lut``), then the first WindowCenter/WindowWidth pair with the
  DICOM linear VOI function (PS3.3 C.11.2.1.2) or, without a window, the 0.5-99.5 percentile
  window of :func:`~model.imageio.window_to_uint8`. MONOCHROME1 (minimum shown white) is
  inverted so that every image reaches the model as MONOCHROME2. PALETTE COLOR images go
  through their palette (``apply_color_lut``) to RGB.
* CT: a volume of :data:`MIN_PROJECTION_FRAMES` slices or more is answered from its top-view
  projection: the attenuation above air (``HU + 1000``, clipped at 0) summed over the rows of
  every slice, the line integral a line-scan radiograph measures, shown dense-as-dark like the
  scans the x-ray model is trained on. Fewer slices (a single-slice file): the middle slice,
  windowed as a DX image.
* A Threat Detection Report (SOP class ...501.3, Modality ``TDR``) or any file without pixel
  data is refused with :class:`NoPixelDataError`.

pydicom (with pylibjpeg + pylibjpeg-libjpeg for JPEG Lossless) and tifffile are the optional
``scanner`` extra, imported on the first scanner file only: a model-only install without them
still reads every camera format and names the extra to install when a DICOM file arrives.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt
from PIL import Image

from model.imageio import (
    CorruptImageError,
    DecodedImage,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    window_to_uint8,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

DICOS_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.501.1": "DICOS CT Image",
    "1.2.840.10008.5.1.4.1.1.501.2.1": "DICOS Digital X-Ray Image for presentation",
    "1.2.840.10008.5.1.4.1.1.501.2.2": "DICOS Digital X-Ray Image for processing",
    "1.2.840.10008.5.1.4.1.1.501.3": "DICOS Threat Detection Report",
    "1.2.840.10008.5.1.4.1.1.501.4": "DICOS 2D AIT",
    "1.2.840.10008.5.1.4.1.1.501.5": "DICOS 3D AIT",
    "1.2.840.10008.5.1.4.1.1.501.6": "DICOS Quadrupole Resonance",
}
"""DICOS SOP class UIDs (NEMA IIC 1; ../shared/reference/xray-and-dicos.md)."""

DICOS_TDR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.501.3"
DICOS_CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.501.1"
CT_MODALITIES = frozenset({"CT"})
MIN_PROJECTION_FRAMES = 16
"""CT volumes with at least this many slices are answered from their top-view projection."""

AIR_HU = -1000.0
SCANNER_EXTRA_HINT = "pip install 'cites-vision[scanner]'"


class NoPixelDataError(ImageError):
    """A DICOS/DICOM object without an image (a Threat Detection Report, a structured report)."""

    code: ClassVar[str] = "no_pixels"


def has_dicom_preamble(data: bytes) -> bool:
    """True when ``data`` is a DICOM Part 10 file (128-byte preamble, then ``DICM``)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def decode_dicom(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Decode a DICOM/DICOS file into an 8-bit RGB :class:`DecodedImage` (``modality`` xray).

    Raises:
        NoPixelDataError: a Threat Detection Report or another object with no pixel data.
        UnsupportedImageError: pydicom is not installed, or the object is not an image this
            reader handles (e.g. a waveform).
        CorruptImageError: the file does not parse or its pixel data does not decode.
        ImageTooLargeError: rows x columns (x frames) above ``max_pixels``.
    """
    pydicom = _import_pydicom()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # leading-zero UIDs in DICOS samples, VR fixes
            dataset = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:
        raise CorruptImageError(
            f"The DICOM file is damaged and cannot be read ({exc}); send the original again."
        ) from exc
    sop_class = str(dataset.get("SOPClassUID", ""))
    modality = str(dataset.get("Modality", "")).upper()
    kind = DICOS_SOP_CLASSES.get(sop_class, f"DICOM {modality or 'object'}")
    if sop_class == DICOS_TDR_SOP_CLASS or modality == "TDR":
        raise NoPixelDataError(
            "This DICOS file is a Threat Detection Report: it holds the scanner's findings, "
            "not an image. Send the DX or CT image it refers to."
        )
    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
        raise NoPixelDataError(
            f"This {kind} file holds no pixel data: send the image file (DX or CT)."
        )
    rows = int(dataset.get("Rows", 0) or 0)
    columns = int(dataset.get("Columns", 0) or 0)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if rows < 1 or columns < 1:
        raise CorruptImageError(f"The {kind} file declares an empty size ({columns}x{rows}).")
    if rows * columns * frames > max_pixels:
        raise ImageTooLargeError(
            f"The {kind} file holds {frames} frame(s) of {columns}x{rows} = "
            f"{rows * columns * frames:,} pixels, more than the limit of {max_pixels:,}.",
            size=(columns, rows),
            limit=max_pixels,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = dataset.pixel_array
    except (ImportError, NotImplementedError, RuntimeError) as exc:
        syntax = str(getattr(dataset.file_meta, "TransferSyntaxUID", "unknown"))
        if "decod" in str(exc).lower() or "plugin" in str(exc).lower() or "handler" in str(exc):
            raise UnsupportedImageError(
                f"The pixel data of this {kind} file uses transfer syntax {syntax}, which "
                f"this installation cannot decode ({SCANNER_EXTRA_HINT} adds JPEG Lossless)."
            ) from exc
        raise CorruptImageError(
            f"The pixel data of this {kind} file does not decode ({exc})."
        ) from exc
    except Exception as exc:
        raise CorruptImageError(
            f"The pixel data of this {kind} file does not decode ({exc})."
        ) from exc
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    is_ct = sop_class == DICOS_CT_SOP_CLASS or modality in CT_MODALITIES
    if is_ct:
        grey, note = _ct_image(pixels, dataset, frames)
        rgb = Image.fromarray(grey).convert("RGB")
    elif photometric == "PALETTE COLOR":
        rgb = Image.fromarray(_palette_to_rgb(pixels if frames == 1 else pixels[0], dataset))
        note = "palette colour"
    elif photometric in ("MONOCHROME1", "MONOCHROME2"):
        image = pixels if frames == 1 else pixels[frames // 2]
        grey = _monochrome_to_uint8(image, dataset, photometric)
        rgb = Image.fromarray(grey).convert("RGB")
        note = photometric.lower()
    elif photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") and pixels.ndim >= 3:
        rgb = Image.fromarray(_colour_to_uint8(pixels if frames == 1 else pixels[0]))
        note = "colour"
    else:
        raise UnsupportedImageError(
            f"{kind} images in photometric interpretation {photometric} are not supported; "
            "send MONOCHROME1, MONOCHROME2, PALETTE COLOR or RGB."
        )
    logger.debug("decoded %s (%s) %dx%d x%d: %s", kind, sop_class, columns, rows, frames, note)
    return DecodedImage(
        image=rgb,
        format="DICOS" if sop_class in DICOS_SOP_CLASSES else "DICOM",
        original_size=(columns, rows),
        mode=photometric,
        bit_depth=int(dataset.get("BitsStored", dataset.get("BitsAllocated", 8)) or 8),
        reduced_scale=False,
        modality="xray",
        modality_evidence=f"{kind}: {note}",
    )


def _import_pydicom() -> Any:
    try:
        import pydicom
    except ImportError as exc:
        raise UnsupportedImageError(
            "DICOM and DICOS files need the scanner extra, which this installation lacks "
            f"({SCANNER_EXTRA_HINT}); send the image as PNG or TIFF instead."
        ) from exc
    return pydicom


def _modality_values(pixels: npt.NDArray[Any], dataset: Dataset) -> npt.NDArray[np.float64]:
    """Stored values through the modality LUT (RescaleSlope/Intercept, or a Modality LUT)."""
    from pydicom.pixels.processing import apply_modality_lut

    return np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)


def _first_number(value: Any) -> float | None:
    """The first of a possibly multi-valued DICOM number (WindowCenter may hold several)."""
    if value is None:
        return None
    try:
        if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
            return float(value)
        return float(value[0]) if len(value) else None
    except (TypeError, ValueError):
        return None


def apply_window(
    values: npt.NDArray[np.float64], center: float, width: float
) -> npt.NDArray[np.uint8]:
    """The DICOM linear VOI function (PS3.3 C.11.2.1.2.1) onto 0..255."""
    if width < 1:
        width = 1.0
    low = center - 0.5 - (width - 1) / 2
    high = center - 0.5 + (width - 1) / 2
    scaled = ((values - (center - 0.5)) / max(width - 1, 1e-9) + 0.5) * 255.0
    out = np.where(values <= low, 0.0, np.where(values > high, 255.0, scaled))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _monochrome_to_uint8(
    pixels: npt.NDArray[Any], dataset: Dataset, photometric: str
) -> npt.NDArray[np.uint8]:
    """Rescale, window (the file's own window, else percentiles) and invert MONOCHROME1."""
    values = _modality_values(pixels, dataset)
    center = _first_number(dataset.get("WindowCenter"))
    width = _first_number(dataset.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        grey = apply_window(values, center, width)
    elif "VOILUTSequence" in dataset:
        from pydicom.pixels.processing import apply_voi_lut

        grey = window_to_uint8(np.asarray(apply_voi_lut(values, dataset), dtype=np.float64))
    else:
        grey = window_to_uint8(values)
    if photometric == "MONOCHROME1":
        grey = np.asarray(255 - grey, dtype=np.uint8)
    return np.ascontiguousarray(grey)


def _palette_to_rgb(pixels: npt.NDArray[Any], dataset: Dataset) -> npt.NDArray[np.uint8]:
    """PALETTE COLOR through the file's red/green/blue lookup tables, scaled to 8 bits."""
    from pydicom.pixels.processing import apply_color_lut

    rgb = np.asarray(apply_color_lut(pixels, dataset))
    descriptor = dataset.get("RedPaletteColorLookupTableDescriptor")
    bits = int(descriptor[2]) if descriptor is not None and len(descriptor) == 3 else 16
    if bits > 8 or int(rgb.max(initial=0)) > 255:
        rgb = np.rint(rgb.astype(np.float64) * (255.0 / 65535.0))
    return np.ascontiguousarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _colour_to_uint8(pixels: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels)
    return np.stack([window_to_uint8(pixels[..., c]) for c in range(3)], axis=-1)


def _ct_image(
    pixels: npt.NDArray[Any], dataset: Dataset, frames: int
) -> tuple[npt.NDArray[np.uint8], str]:
    """A CT volume's top-view projection, or its middle slice when it has too few slices."""
    volume = pixels if pixels.ndim == 3 and frames > 1 else pixels.reshape(1, *pixels.shape[-2:])
    if volume.shape[0] < MIN_PROJECTION_FRAMES:
        photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        middle = volume[volume.shape[0] // 2]
        return _monochrome_to_uint8(middle, dataset, photometric), "CT slice"
    hounsfield = _modality_values(volume, dataset)
    path_integral = np.clip(hounsfield - AIR_HU, 0.0, None).sum(axis=1)  # (slices, columns)
    dense_is_dark = 255 - window_to_uint8(path_integral)
    return np.ascontiguousarray(dense_is_dark.astype(np.uint8)), (
        f"top-view projection of {volume.shape[0]} slices"
    )


def decode_tiff_with_tifffile(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Decode a TIFF that Pillow cannot (e.g. 16-bit RGB, 2-sample dual-energy, float16).

    Grey data of any depth is windowed (:func:`~model.imageio.window_to_uint8`); 3- and
    4-sample data keeps its first three channels, each windowed unless already 8-bit; a
    2-sample or 2-page grey TIFF is read as a dual-energy pair (low, high) and shown as its
    low-energy image (see docs/xray.md).
    """
    try:
        import tifffile
    except ImportError as exc:
        raise UnsupportedImageError(
            "This TIFF needs tifffile, which this installation lacks "
            f"({SCANNER_EXTRA_HINT}); save it as 8- or 16-bit grey or 8-bit RGB."
        ) from exc
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            page = tiff.pages.first
            shape = tuple(int(s) for s in page.shape)
            height, width = (shape[0], shape[1]) if len(shape) >= 2 else (1, shape[0])
            if getattr(page, "planarconfig", 1) == 2 and len(shape) == 3:
                height, width = shape[1], shape[2]
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"The TIFF is {width}x{height} = {width * height:,} pixels, more than "
                    f"the limit of {max_pixels:,}; reduce its resolution and send it again.",
                    size=(width, height),
                    limit=max_pixels,
                )
            array = np.asarray(page.asarray())
            pages = len(tiff.pages)
    except ImageError:
        raise
    except Exception as exc:
        raise CorruptImageError(
            f"The TIFF file is truncated, damaged or uses a compression this installation "
            f"cannot decode ({exc}); send it uncompressed or LZW-compressed."
        ) from exc
    if array.ndim == 3 and array.shape[0] in (2, 3, 4) and array.shape[-1] not in (2, 3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (samples, rows, columns)
    evidence = None
    modality = None
    if array.ndim == 2:
        rgb = np.stack([window_to_uint8(array)] * 3, axis=-1)
        if array.dtype.itemsize >= 2:
            modality, evidence = "xray", f"{array.dtype.itemsize * 8}-bit grey TIFF"
        if pages == 2:
            modality, evidence = "xray", "two-page TIFF (dual-energy pair)"
    elif array.ndim == 3 and array.shape[-1] == 2:
        rgb = np.stack([window_to_uint8(array[..., 0])] * 3, axis=-1)
        modality, evidence = "xray", "two-sample TIFF (dual-energy pair)"
    elif array.ndim == 3 and array.shape[-1] >= 3:
        channels = array[..., :3]
        if channels.dtype == np.uint8:
            rgb = channels
        else:
            rgb = np.stack([window_to_uint8(channels[..., c]) for c in range(3)], axis=-1)
    else:
        raise UnsupportedImageError(
            f"TIFF images of shape {array.shape} are not supported: send a 2-D grey or RGB image."
        )
    return DecodedImage(
        image=Image.fromarray(np.ascontiguousarray(rgb.astype(np.uint8))),
        format="TIFF",
        original_size=(width, height),
        mode=f"tifffile {array.dtype}x{1 if array.ndim == 2 else array.shape[-1]}",
        bit_depth=int(array.dtype.itemsize * 8),
        reduced_scale=False,
        modality=modality,
        modality_evidence=evidence,
    )
