"""Content-addressed image store: ``<root>/ab/cd/<sha256>.<ext>``, written atomically.

Photos can carry the position where they were taken; unless told to keep it, the store removes
it before writing (``service.privacy``: EXIF GPS, XMP and IPTC location, every frame, edited in
place so the pixels stay exactly as uploaded). The address is the SHA-256 of the bytes actually
stored, so the same upload always lands in the same file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Protocol

from PIL import Image, UnidentifiedImageError

from service.privacy import strip_location

logger = logging.getLogger(__name__)

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


class StoredBytesSource(Protocol):
    """Where the bytes of an image stored exactly as uploaded come from (the upload's spool
    file, :class:`service.uploads.Upload`)."""

    size: int

    def copy_to(self, handle: BinaryIO) -> None:
        """Write every byte to ``handle``."""


@dataclass(frozen=True)
class PreparedImage:
    """Bytes ready to store, with what the store records about them.

    The bytes are ``data``, or, when the image is stored exactly as uploaded and the upload
    stayed in its spool file, ``source`` (``data`` is then empty): a large photo is copied from
    the spool file to the store and never held in the server's memory."""

    data: bytes
    sha256: str
    mime: str
    ext: str
    width: int
    height: int
    size: int
    """The number of bytes stored."""
    location_removed: tuple[str, ...] = ()
    """What :func:`service.privacy.strip_location` removed (empty when nothing was there)."""
    source: StoredBytesSource | None = field(default=None, compare=False, repr=False)

    @property
    def gps_removed(self) -> bool:
        """True when location metadata was found and removed."""
        return bool(self.location_removed)

    def from_source(self, source: StoredBytesSource) -> PreparedImage:
        """The same image with its bytes read from ``source`` instead of ``data``."""
        if source.size != self.size:
            raise ValueError(f"the source has {source.size} bytes, the image {self.size}")
        return replace(self, data=b"", source=source)

    def write_to(self, handle: BinaryIO) -> None:
        """Write the bytes to store to ``handle``."""
        if self.source is not None:
            self.source.copy_to(handle)
        else:
            handle.write(self.data)


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
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read the image headers: {exc}") from exc
    mime, ext = _MIME.get(fmt, ("application/octet-stream", "bin"))
    removed: tuple[str, ...] = ()
    if not keep_gps:
        stripped = strip_location(data, fmt)  # LocationStripError (422) when it cannot
        data, removed = stripped.data, stripped.removed
    return PreparedImage(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        mime=mime,
        ext=ext,
        width=width,
        height=height,
        size=len(data),
        location_removed=removed,
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
    """True when ``data`` is a JPEG whose segments before the scan parse (its headers can be
    read and its metadata edited without decoding the pixels)."""
    return _segments(data) is not None


class ImageStore:
    """Writes and reads images under a root folder, addressed by sha256."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        private_dir(self.root)

    def unwritable_reason(self, min_free_bytes: int) -> str | None:
        """Why an image could not be stored now (the folder refuses a new file, or fewer than
        ``min_free_bytes`` are free on its disk); None when it can."""
        try:
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            return f"the image store {self.root} is not writable ({exc.strerror or exc})"
        free = shutil.disk_usage(self.root).free
        if free < min_free_bytes:
            return f"the disk of the image store has {free} bytes free (< {min_free_bytes})"
        return None

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
        if target.exists() and target.stat().st_size == image.size:
            return relative
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=f".{image.ext}")
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), 0o600)
                image.write_to(handle)
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


def private_dir(path: Path) -> None:
    """Make a folder the service created readable by its own user only (0700)."""
    try:
        path.chmod(0o700)
    except OSError as exc:  # not ours (a shared mount): leave it, but say so
        logger.warning("could not make %s private (0700): %s", path, exc)


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
