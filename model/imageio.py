"""Decode untrusted image bytes into an 8-bit RGB Pillow image, or raise a typed error.

This is the decoding half of preprocessing (``model.preprocess`` re-exports everything here and
adds resizing and normalisation). It accepts the formats officers' phones and scanners produce:
JPEG (baseline, progressive, CMYK, EXIF orientation), PNG (8/16-bit, grey, RGBA, palette), WebP,
HEIC/HEIF (through pillow-heif, registered on first use), AVIF, TIFF (8/16-bit, float), GIF and
BMP. Every other byte string ends in an :class:`ImageError` subclass with a ``code`` and a
message a user can act on; no raw Pillow, ``OSError``, ``struct.error`` or ``zlib.error`` escapes.

Colour handling (the output is always mode ``RGB``):

* grey (``1``, ``L``) is replicated into three channels;
* 16-bit and wider data (modes ``I;16``, ``I;16B``, ``I;16L``, ``I``, ``F``; 16-bit grey PNG and
  TIFF from scanners) is windowed to 8 bits, see :func:`window_to_uint8`;
* transparency (``RGBA``, ``LA``, ``PA``, palette with ``tRNS``) is composited onto white, the
  colour of the paper or light box such objects are usually photographed on;
* ``CMYK`` (print-workflow JPEGs) and other modes go through Pillow's conversion to ``RGB``;
* embedded ICC profiles are ignored, as when the backbone was trained on ImageNet.

Animated images (GIF, APNG, animated WebP) decode to their first frame; ``animated`` records it.

Damaged JPEG data: libjpeg only *warns* when compressed data is corrupt (a run of bytes zeroed
by a bad transfer) and goes on with garbage pixels, and Pillow does not pass the warning on.
With ``strict_jpeg=True`` an RGB or grey JPEG is decoded by libjpeg-turbo in strict mode through
``simplejpeg`` (an optional dependency the service installs) at the scale Pillow's draft mode
would choose: the pixels are Pillow's own (identical on every JPEG of ../shared/data tried,
tests/model/test_imageio_strict.py), and a warning raises :class:`CorruptImageError`. The JPEGs
it cannot decode so (multi-picture files, a colour space it does not convert) are decoded by
Pillow and their compressed data then checked by :func:`check_jpeg_data` (CMYK included).
``DecodedImage.strict`` says whether the data was checked (not without simplejpeg).
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 50_000_000
"""Largest pixel count (width x height, as the file declares it) decoded by default: 50 MP."""

ACCEPTED_FORMATS: tuple[str, ...] = (
    "JPEG",
    "PNG",
    "WEBP",
    "HEIF",
    "AVIF",
    "TIFF",
    "GIF",
    "BMP",
)
"""Pillow format ids handed to ``Image.open``; nothing else is parsed (e.g. never EPS).

Multi-picture JPEGs open through the JPEG parser (Pillow then names them ``MPO``); ``HEIF`` is
available once pillow-heif is registered, ``AVIF`` where Pillow was built with it."""

ACCEPTED_FORMATS_TEXT = "JPEG, PNG, WebP, HEIC/HEIF, AVIF, TIFF, GIF, BMP or DICOM/DICOS"

_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_TRANSPARENT_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_BIT_DEPTH = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"mif2")

WINDOW_PERCENTILES = (0.5, 99.5)
"""Lower and upper percentile of the 16-bit window (see :func:`window_to_uint8`)."""

_OPEN_LOCK = threading.Lock()
_STRICT_LOCK = threading.Lock()
_strict_decodes = 0  # decodes in progress that need truncation refused (see _load_strictly)
_saved_truncated_flag = False
_HEIF_LOCK = threading.Lock()
_heif_registered = False


class ImageError(ValueError):
    """An upload that cannot be used as an image; ``code`` names the reason for machines."""

    code: ClassVar[str] = "image_error"


class EmptyImageError(ImageError):
    """No bytes at all were given."""

    code: ClassVar[str] = "empty"


class UnsupportedImageError(ImageError):
    """The bytes are not an image in one of the accepted formats."""

    code: ClassVar[str] = "unsupported"


class CorruptImageError(ImageError):
    """The bytes start like an accepted image but are truncated or damaged."""

    code: ClassVar[str] = "corrupt"


class ImageTooLargeError(ImageError):
    """The image declares more pixels than the limit allows."""

    code: ClassVar[str] = "too_large"

    def __init__(self, message: str, *, size: tuple[int, int] | None, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """A decoded image and what the file said about itself.

    ``image`` is 8-bit ``RGB`` with EXIF orientation applied. ``original_size`` is (width,
    height) as the file declares it, before orientation and before any reduced-scale decoding;
    ``mode`` is the file's Pillow mode (``CMYK``, ``I;16``...), ``bit_depth`` the bits per
    sample of that mode. ``reduced_scale`` is true when a JPEG was decoded at 1/2, 1/4 or 1/8
    scale (draft mode). ``animated`` is true when only the first of several frames was used.
    ``modality`` is ``"xray"`` when the file itself says it comes from a scanner (DICOM/DICOS,
    16-bit or wider grey, a dual-energy pair), else ``None`` (no evidence either way; pixels
    may still tell, see ``model.modality``); ``modality_evidence`` says what told.
    """

    image: Image.Image
    format: str
    original_size: tuple[int, int]
    mode: str
    bit_depth: int
    reduced_scale: bool
    animated: bool = False
    modality: str | None = None
    modality_evidence: str | None = None
    strict: bool = False
    """True when the JPEG's compressed data was checked in strict mode (module docstring)."""


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    target_shorter: int | None = None,
    strict_jpeg: bool = False,
) -> DecodedImage:
    """Decode image bytes into an 8-bit RGB image, refusing unusable input with a typed error.

    The pixel count declared in the header is checked against ``max_pixels`` before any pixel
    is decoded. When ``target_shorter`` is given and the file is a JPEG at least twice that size
    on its shorter side, libjpeg decodes it at 1/2, 1/4 or 1/8 scale (Pillow's draft mode),
    never below ``target_shorter`` on either side; the later resize then has less to do.
    ``strict_jpeg``: refuse a JPEG whose compressed data libjpeg reports as corrupt (see the
    module docstring; ``strict`` in the result says whether the check was made).

    Raises:
        EmptyImageError: ``data`` is empty.
        UnsupportedImageError: not an image in an accepted format.
        CorruptImageError: truncated or damaged (also when Pillow's ``LOAD_TRUNCATED_IMAGES``
            is set elsewhere in the process: truncation is never padded silently here).
        ImageTooLargeError: more than ``max_pixels`` pixels.
    """
    if not data:
        raise EmptyImageError("The image is empty (0 bytes): upload the image file itself.")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    signature = sniff_format(data)
    if signature == "HEIF":
        _register_heif()
    try:
        if signature == "DICOM":
            from model.scanner import decode_dicom

            return decode_dicom(data, max_pixels=max_pixels)
        return _decode(data, signature, max_pixels, target_shorter, strict_jpeg)
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageTooLargeError(
            "There is not enough memory to decode this image: send a smaller one.",
            size=None,
            limit=max_pixels,
        ) from exc
    except Exception as exc:  # any decoder failure on untrusted bytes is a damaged file
        logger.debug("decoding failed: %r", exc)
        kind = signature or "image"
        raise CorruptImageError(
            f"The {kind} file is truncated or damaged and cannot be decoded ({exc}); "
            "send the original file again or export it anew."
        ) from exc


def sniff_format(data: bytes) -> str | None:
    """Name the accepted format whose signature ``data`` starts with, or ``None``."""
    head = data[:32]
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "DICOM"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in _HEIF_BRANDS:
            return "HEIF"
    return None


def window_to_uint8(array: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    """Window high-bit-depth grey data (16-bit, 32-bit int or float) to 8 bits.

    Scanners and x-ray systems write 16-bit samples but use a narrow band of that range (a
    12-bit detector, or an exposure that never nears saturation); scaling the full 0..65535
    range to 8 bits would leave an almost black, flat image. The window runs from the 0.5th to
    the 99.5th percentile of the image's samples (numpy's default, linear interpolation), so
    the darkest and brightest 0.5 % (dead pixels, the unattenuated beam, labels burnt in) clip
    to 0 and 255 and the rest maps linearly: ``round(255 * (v - p0.5) / (p99.5 - p0.5))``.
    A flat image (both percentiles equal) has no contrast to stretch and is scaled by the
    nominal 16-bit range instead (``v * 255 / 65535``, clipped). Non-finite values count as 0.
    Unsigned 8/16-bit data goes through a histogram and a lookup table (a few ms for 4 MP).
    """
    values = np.asarray(array)
    if values.dtype.kind == "u" and values.dtype.itemsize <= 2:
        levels = 1 << (8 * values.dtype.itemsize)
        counts = np.bincount(values.reshape(-1), minlength=levels)
        low, high = _histogram_percentiles(counts, WINDOW_PERCENTILES)
        table = _window(np.arange(levels, dtype=np.float64), low, high)
        result: npt.NDArray[np.uint8] = table[values]
        return result
    floats = values.astype(np.float64)
    if values.dtype.kind == "f":
        floats = np.nan_to_num(floats, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(v) for v in np.percentile(floats, WINDOW_PERCENTILES))
    return _window(floats, low, high)


def _window(values: npt.NDArray[np.float64], low: float, high: float) -> npt.NDArray[np.uint8]:
    scaled = (values - low) * (255.0 / (high - low)) if high > low else values * (255.0 / 65535.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _histogram_percentiles(
    counts: npt.NDArray[np.intp], qs: tuple[float, ...]
) -> tuple[float, float]:
    """Percentiles of the samples a histogram counts, exactly as ``np.percentile`` computes
    them on the samples themselves (linear interpolation between order statistics)."""
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1])
    result = []
    for q in qs:
        position = q / 100.0 * (total - 1)
        below = int(np.floor(position))
        above = min(below + 1, total - 1)
        low_value = float(np.searchsorted(cumulative, below, side="right"))
        high_value = float(np.searchsorted(cumulative, above, side="right"))
        result.append(low_value + (position - below) * (high_value - low_value))
    return result[0], result[1]


def _register_heif() -> None:
    """Register pillow-heif's opener with Pillow, once, on the first HEIF upload."""
    global _heif_registered
    if _heif_registered:
        return
    with _HEIF_LOCK:
        if _heif_registered:
            return
        import pillow_heif  # imported lazily: only HEIF uploads pay for it

        pillow_heif.register_heif_opener()
        _heif_registered = True
        logger.debug("registered pillow-heif %s", pillow_heif.__version__)


def _available_formats() -> tuple[str, ...]:
    """The accepted formats this Pillow can open now (``Image.open`` fails on unknown ids)."""
    Image.init()
    return tuple(fmt for fmt in ACCEPTED_FORMATS if fmt in Image.OPEN)


def _open(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    """Parse the header only; Pillow's own bomb warning is silenced (we check the size next)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and limit < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's limit is never tighter than ours
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=_available_formats())
    except Image.DecompressionBombError as exc:
        raise _too_large(_declared_size(data), max_pixels) from exc


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """The size a bomb's header declares, read with Pillow's limit lifted for the header only.

    Only called after Pillow refused the header, so the lifted limit (a process-wide setting,
    held under the lock for the microseconds a header parse takes) costs nothing in normal use.
    """
    with _OPEN_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(io.BytesIO(data), formats=_available_formats()) as image:
                return image.size
        except Exception:  # the size is only for the message
            return None
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _too_large(size: tuple[int, int] | None, max_pixels: int) -> ImageTooLargeError:
    """The error for an image over the pixel limit, naming its size and the limit."""
    if size is None:
        described = "more pixels than"
    else:
        described = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, more than"
    return ImageTooLargeError(
        f"The image is {described} the limit of {max_pixels:,}; "
        "reduce its resolution and send it again.",
        size=size,
        limit=max_pixels,
    )


def _decode(
    data: bytes,
    signature: str | None,
    max_pixels: int,
    target_shorter: int | None,
    strict_jpeg: bool = False,
) -> DecodedImage:
    try:
        image = _open(data, max_pixels)
    except UnidentifiedImageError as exc:
        if signature == "TIFF":
            return _decode_tiff_fallback(data, max_pixels, exc)
        if signature is None:
            raise UnsupportedImageError(
                f"This is not an image in a supported format: send a {ACCEPTED_FORMATS_TEXT} file."
            ) from exc
        raise CorruptImageError(
            f"The file starts like a {signature} image but its header is damaged; "
            "send the original file again or export it anew."
        ) from exc
    with image:
        if signature == "TIFF" and image.mode in ("RGB", "RGBA") and _wide_samples(image):
            return _decode_tiff_fallback(data, max_pixels, None)  # Pillow would drop 8 bits
        try:
            return _decode_opened(image, max_pixels, target_shorter, data if strict_jpeg else None)
        except (ImageError, MemoryError):
            raise
        except Exception as exc:
            if signature == "TIFF":
                return _decode_tiff_fallback(data, max_pixels, exc)
            raise


def _wide_samples(image: ImageFile.ImageFile) -> bool:
    """True for a colour TIFF with more than 8 bits per sample (Pillow keeps the top 8 only)."""
    try:
        bits = image.tag_v2.get(258)  # type: ignore[attr-defined]
        values = bits if isinstance(bits, tuple) else (bits,)
        return any(int(v) > 8 for v in values if v is not None)
    except Exception:  # metadata only: decode as Pillow would
        return False


def _decode_tiff_fallback(
    data: bytes, max_pixels: int, pillow_error: Exception | None
) -> DecodedImage:
    """TIFFs Pillow cannot decode well (16-bit colour, 2-sample dual-energy, float16) go
    through tifffile (the optional scanner extra), see ``model.scanner``."""
    logger.debug("Pillow cannot decode this TIFF (%r); trying tifffile", pillow_error)
    from model.scanner import decode_tiff_with_tifffile

    return decode_tiff_with_tifffile(data, max_pixels=max_pixels)


def _decode_opened(
    image: ImageFile.ImageFile,
    max_pixels: int,
    target_shorter: int | None,
    strict_data: bytes | None = None,
) -> DecodedImage:
    """Decode an opened image (``strict_data``: the file's bytes, to decode a JPEG strictly)."""
    width, height = image.size
    fmt = image.format or "unknown"
    if width < 1 or height < 1:
        raise CorruptImageError(f"The {fmt} file declares an empty size ({width}x{height}).")
    if width * height > max_pixels:
        raise _too_large((width, height), max_pixels)
    mode = image.mode
    animated = bool(getattr(image, "is_animated", False))
    if animated:
        image.seek(0)
    reduced = False
    if (
        target_shorter is not None
        and target_shorter > 0
        and fmt in ("JPEG", "MPO")
        and min(width, height) >= 2 * target_shorter
    ):
        image.draft(None, (target_shorter, target_shorter))
        reduced = image.size != (width, height)
    decoded: Image.Image = image
    strict_pixels = (
        _strict_jpeg_pixels(strict_data, image, (width, height))
        if strict_data is not None and fmt == "JPEG"
        else None
    )
    if strict_pixels is None:
        _load_strictly(image)
        checked = (
            strict_data is not None and fmt in ("JPEG", "MPO") and check_jpeg_data(strict_data)
        )
    else:
        decoded = Image.fromarray(strict_pixels, image.mode)
        decoded.info = dict(image.info)  # EXIF and XMP: the orientation
        checked = True
    oriented = _apply_orientation(decoded)
    rgb = _to_rgb(oriented)
    logger.debug(
        "decoded %s %s %dx%d -> %dx%d%s",
        fmt,
        mode,
        width,
        height,
        rgb.width,
        rgb.height,
        " (reduced scale)" if reduced else "",
    )
    bit_depth = _BIT_DEPTH.get(mode, 8)
    scanner_grey = mode in _HIGH_DEPTH_MODES and mode != "F" and bit_depth >= 16
    return DecodedImage(
        image=rgb,
        format=fmt,
        original_size=(width, height),
        mode=mode,
        bit_depth=bit_depth,
        reduced_scale=reduced,
        animated=animated,
        modality="xray" if scanner_grey else None,
        modality_evidence=f"{bit_depth}-bit grey {fmt}" if scanner_grey else None,
        strict=checked,
    )


def _strict_jpeg_pixels(
    data: bytes, image: ImageFile.ImageFile, full_size: tuple[int, int]
) -> npt.NDArray[np.uint8] | None:
    """The pixels of an RGB or grey JPEG at the size Pillow's draft set (``image.size``),
    decoded by libjpeg-turbo in strict mode; None when that is not possible here (another
    colour space, no simplejpeg). Raises :class:`CorruptImageError` for damaged data."""
    if image.mode not in ("RGB", "L"):
        return None
    try:
        import simplejpeg
    except ImportError:
        return None
    width, height = image.size
    factor = max(1, round(full_size[0] / width))  # 1, 2, 4 or 8: Pillow's draft scales
    try:
        pixels = simplejpeg.decode_jpeg(
            data,
            colorspace="RGB" if image.mode == "RGB" else "GRAY",
            min_factor=factor,
            min_height=height,
            min_width=width,
            strict=True,
        )
    except ValueError as exc:
        raise _damaged_jpeg(exc) from None
    if pixels.shape[:2] != (height, width):  # a scale Pillow would not choose: let Pillow decode
        logger.warning("strict JPEG decode gave %s, expected %dx%d", pixels.shape, width, height)
        return None
    result: npt.NDArray[np.uint8] = pixels[:, :, 0] if image.mode == "L" else pixels
    return result


def check_jpeg_data(data: bytes) -> bool:
    """Decode the JPEG ``data`` in strict mode at 1/8 scale in grey, throwing the pixels away:
    raises :class:`CorruptImageError` when libjpeg reports its compressed data as corrupt (a
    warning Pillow does not pass on). False when it cannot tell: a colour space libjpeg-turbo
    does not convert to grey, or no simplejpeg."""
    try:
        import simplejpeg
    except ImportError:
        logger.warning("simplejpeg is missing: damaged JPEG data cannot be detected")
        return False
    try:
        # min_factor alone does not scale: the minimum size of 1 lets libjpeg decode at 1/8
        simplejpeg.decode_jpeg(
            data, colorspace="GRAY", min_factor=8, min_height=1, min_width=1, strict=True
        )
    except ValueError as exc:
        message = str(exc)
        if "Unsupported color conversion" in message or "colorspace" in message.lower():
            return False  # a colour question for Pillow, not damage
        raise _damaged_jpeg(exc) from None
    return True


def _damaged_jpeg(exc: ValueError) -> CorruptImageError:
    return CorruptImageError(
        f"The JPEG's compressed data is damaged ({exc}); the pixels would be partly "
        "garbage. Send the original photo again."
    )


def _load_strictly(image: ImageFile.ImageFile) -> None:
    """Decode the pixels; truncation raises even if another module allows truncated images.

    Pillow's plugins read the module-level flag ``ImageFile.LOAD_TRUNCATED_IMAGES`` while
    decoding. Every decode here counts itself in; the first one in saves the flag and turns it
    off, the last one out restores it. Decodes still run in parallel, and none of them can see
    the flag restored while it is decoding (a plain save/restore per decode let one thread's
    restore switch truncation back on in the middle of another thread's decode).
    """
    global _strict_decodes, _saved_truncated_flag
    with _STRICT_LOCK:
        if _strict_decodes == 0:
            _saved_truncated_flag = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _strict_decodes += 1
    try:
        image.load()
    finally:
        with _STRICT_LOCK:
            _strict_decodes -= 1
            if _strict_decodes == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _saved_truncated_flag


def _apply_orientation(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a damaged EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # EXIF is metadata: damaged metadata must not lose the image
        logger.warning("ignoring unreadable EXIF orientation: %s", exc)
        return image.copy()


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB (see the module docstring for the rules)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _HIGH_DEPTH_MODES:
        grey = Image.fromarray(window_to_uint8(np.asarray(image)))
        return grey.convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in _TRANSPARENT_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:  # a colour space Pillow cannot convert (e.g. some TIFF modes)
        raise UnsupportedImageError(
            f"Images in colour mode {mode} are not supported: save the image as RGB or grey "
            f"({ACCEPTED_FORMATS_TEXT}) and send it again."
        ) from exc
