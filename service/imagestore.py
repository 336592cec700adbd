"""Content-addressed image store: ``<root>/ab/cd/<sha256>.<ext>``, written atomically.

Photos can carry the GPS position where they were taken; unless told to keep it, the store
removes it before writing. JPEGs are edited at the byte level (the EXIF segment is rewritten
without its GPS directory and XMP packets are dropped), so the compressed pixels stay exactly as
uploaded. Other formats that carry GPS are re-encoded losslessly as PNG. The address is the
SHA-256 of the bytes actually stored, so the same upload always lands in the same file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

GPS_IFD_TAG = 0x8825
_MIME = {
    "JPEG": ("image/jpeg", "jpg"),
    "MPO": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
    "HEIF": ("image/heic", "heic"),
    "AVIF": ("image/avif", "avif"),
    "TIFF": ("image/tiff", "tif"),
    "GIF": ("image/gif", "gif"),
    "BMP": ("image/bmp", "bmp"),
}


@dataclass(frozen=True)
class PreparedImage:
    """Bytes ready to store, with what the store records about them."""

    data: bytes
    sha256: str
    mime: str
    ext: str
    width: int
    height: int
    gps_removed: bool


def _open(data: bytes) -> Image.Image:
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
    except ImportError:  # HEIC support is optional
        pass
    return Image.open(io.BytesIO(data))


def prepare_image(data: bytes, *, keep_gps: bool) -> PreparedImage:
    """Identify ``data`` and (unless ``keep_gps``) remove GPS metadata; the image must already
    have been decoded successfully by the caller (this reads headers only)."""
    try:
        with _open(data) as image:
            fmt = image.format or ""
            width, height = image.size
            exif = image.getexif()
            has_gps = GPS_IFD_TAG in exif
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read the image headers: {exc}") from exc
    mime, ext = _MIME.get(fmt, ("application/octet-stream", "bin"))
    removed = False
    if not keep_gps:
        if fmt in ("JPEG", "MPO"):
            new = strip_jpeg_gps(data)
            removed = new != data
            data = new
        elif has_gps:
            data = _reencode_png_without_gps(data)
            mime, ext, removed = "image/png", "png", True
    return PreparedImage(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        mime=mime,
        ext=ext,
        width=width,
        height=height,
        gps_removed=removed,
    )


def _segments(data: bytes) -> list[tuple[int, int, int]] | None:
    """(marker, start, end) of each JPEG segment before the scan data, or None if malformed."""
    if data[:2] != b"\xff\xd8":
        return None
    out: list[tuple[int, int, int]] = []
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA or 0xD0 <= marker <= 0xD9:  # start of scan: pixels follow
            return out
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if length < 2 or end > len(data):
            return None
        out.append((marker, pos, end))
        pos = end
    return None


def jpeg_segments_readable(data: bytes) -> bool:
    """True when ``data`` is a JPEG whose segments before the scan parse, so that
    :func:`strip_jpeg_gps` works on bytes alone (no decode or re-encode)."""
    return _segments(data) is not None


def strip_jpeg_gps(data: bytes) -> bytes:
    """Remove the GPS IFD from a JPEG's EXIF and drop XMP packets; pixels are untouched."""
    segments = _segments(data)
    if segments is None:
        logger.debug("JPEG segments unreadable; re-encoding without metadata")
        return _reencode_jpeg_without_gps(data)
    parts: list[bytes] = []
    last = 0
    changed = False
    for marker, start, end in segments:
        payload = data[start + 4 : end]
        replacement: bytes | None = None
        if marker == 0xE1 and payload.startswith(b"Exif\x00\x00"):
            replacement = _exif_without_gps(payload)
        elif marker == 0xE1 and payload.startswith(b"http://ns.adobe.com/"):
            replacement = b""  # XMP may repeat the position (exif:GPSLatitude)
        if replacement is None:
            continue
        changed = True
        parts.append(data[last:start])
        if replacement:
            parts.append(b"\xff\xe1" + (len(replacement) + 2).to_bytes(2, "big") + replacement)
        last = end
    if not changed:
        return data
    parts.append(data[last:])
    return b"".join(parts)


def _exif_without_gps(payload: bytes) -> bytes | None:
    """The EXIF APP1 payload without its GPS IFD; None when there is nothing to remove."""
    exif = Image.Exif()
    try:
        exif.load(payload)
    except (ValueError, OSError, SyntaxError):
        return b""  # unreadable EXIF: drop it whole rather than risk keeping a position
    if GPS_IFD_TAG not in exif:
        return None
    del exif[GPS_IFD_TAG]
    new = exif.tobytes()
    if len(new) + 2 > 0xFFFF:
        return b""
    return new


def _reencode_jpeg_without_gps(data: bytes) -> bytes:
    with _open(data) as image:
        exif = image.getexif()
        exif.pop(GPS_IFD_TAG, None)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality="keep", exif=exif.tobytes())
        return out.getvalue()


def _reencode_png_without_gps(data: bytes) -> bytes:
    with _open(data) as image:
        image.load()
        exif = image.getexif()
        exif.pop(GPS_IFD_TAG, None)
        out = io.BytesIO()
        frame = image if image.mode in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA") else None
        (frame or image.convert("RGBA")).save(out, format="PNG", exif=exif.tobytes())
        return out.getvalue()


class ImageStore:
    """Writes and reads images under a root folder, addressed by sha256."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def relative_path(self, sha256: str, ext: str) -> str:
        """``ab/cd/<sha256>.<ext>``, the path recorded in the database."""
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}.{ext}"

    def path_of(self, relative: str) -> Path:
        """The absolute path of a stored relative path (refusing paths that leave the root)."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"stored path {relative!r} leaves the image store")
        return path

    def put(self, image: PreparedImage) -> str:
        """Store ``image`` durably (temp file, fsync, rename) unless already there; returns
        its relative path."""
        relative = self.relative_path(image.sha256, image.ext)
        target = self.root / relative
        if target.exists() and target.stat().st_size == len(image.data):
            return relative
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=f".{image.ext}")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(image.data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        return relative

    def read(self, relative: str) -> bytes:
        """The bytes of a stored image."""
        return self.path_of(relative).read_bytes()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
