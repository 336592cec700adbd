"""Location privacy: remove where a photo was taken from the bytes before they are stored.

A photo can say where it was taken in several places: the EXIF GPS directory (in JPEG, in
every frame of a multi-picture MPO and in EXIF thumbnails; in PNG ``eXIf``, WebP ``EXIF``, HEIC
``Exif`` items and every page of a TIFF), XMP properties (``exif:GPSLatitude``,
``photoshop:City``, ``Iptc4xmpExt:LocationShown``, a drone's ``GpsLatitude``...) and IPTC-IIM
location datasets (city, sub-location, province, country, country code, content location).

Every removal is done **in place, at the same length**: GPS directories are unlinked and
zeroed, location properties are overwritten with spaces, IPTC location values with spaces.
No offset, length or pixel byte of the file changes (PNG chunk CRCs are recomputed), so the
stored image decodes exactly as uploaded and containers with internal offsets (MPO frame
tables, HEIC ``iloc``, TIFF strips) stay valid.

After the edit the result is read back (every frame's EXIF and XMP); if any location is
still there the upload is refused with :class:`LocationStripError` rather than stored.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import zlib
from dataclasses import dataclass
from typing import ClassVar

from PIL import Image, ImageSequence, UnidentifiedImageError

from model.imageio import UnsupportedImageError

logger = logging.getLogger(__name__)

GPS_IFD_TAG = 0x8825
IPTC_TIFF_TAG = 33723

EXIF_GPS = "exif_gps"
XMP_LOCATION = "xmp_location"
IPTC_LOCATION = "iptc_location"

_TIFF_HEADERS = (b"II*\x00", b"MM\x00*")
_EXIF_HEADER = re.compile(rb"Exif\x00\x00(?:II\*\x00|MM\x00\*)")
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_MAX_IFDS_PER_TIFF = 64
_MAX_STRUCTURES = 256
"""EXIF blocks, XMP packets or IPTC blocks in one file; more is refused, not half-cleaned."""

_LOCATION_NAME = (
    rb"(?:[Gg][Pp][Ss]\w*|\w*(?:[Ll]atitude|[Ll]ongitude|[Aa]ltitude)\w*|City|State"
    rb"|Country|CountryCode|CountryName|ProvinceState|Sublocation|Location|LocationCreated"
    rb"|LocationShown|LocationName|LocationId|WorldRegion)"
)
_XMP_ELEMENT = re.compile(
    rb"<([\w.-]+:" + _LOCATION_NAME + rb")\b[^<>]*?(?:/>|>.*?</\1\s*>)", re.DOTALL
)
_XMP_ATTRIBUTE = re.compile(rb"\s[\w.-]+:" + _LOCATION_NAME + rb"""\s*=\s*(?:"[^"]*"|'[^']*')""")
_XMP_PACKET = re.compile(rb"<x:xmpmeta\b.*?</x:xmpmeta\s*>", re.DOTALL)
_XMP_EXTENSION = b"http://ns.adobe.com/xmp/extension/\x00"
_IPTC_LOCATION_DATASETS = frozenset({26, 27, 90, 92, 95, 100, 101})
"""IPTC-IIM record 2: content location code/name, city, sub-location, province/state,
country code, country name."""


class LocationStripError(UnsupportedImageError):
    """The file's location data could not be removed with certainty (it is not stored: 422)."""

    code: ClassVar[str] = "location_unremovable"


@dataclass(frozen=True)
class Stripped:
    """The cleaned bytes and what was removed (kinds: ``exif_gps``, ``xmp_location``,
    ``iptc_location``), in that order."""

    data: bytes
    removed: tuple[str, ...]


def strip_location(data: bytes, image_format: str) -> Stripped:
    """Remove every location record from ``data`` (a ``image_format`` file as Pillow names it:
    JPEG, MPO, PNG, WEBP, HEIF, AVIF, TIFF...); raises :class:`LocationStripError` when the
    result would still carry one."""
    buf = bytearray(data)
    removed: set[str] = set()
    if image_format == "TIFF":
        if _blank_tiff(buf, 0, len(buf)):
            removed.add(EXIF_GPS)
    elif image_format == "PNG":
        cleaned, removed = _strip_png(data)
        buf = bytearray(cleaned)
    elif image_format == "WEBP":
        removed |= _strip_riff_exif(buf)
    if _blank_exif_blocks(buf):
        removed.add(EXIF_GPS)
    if _blank_xmp(buf):
        removed.add(XMP_LOCATION)
    if _blank_iptc_blocks(buf):
        removed.add(IPTC_LOCATION)
    if image_format == "PNG" and removed:
        _fix_png_crcs(buf)
    out = bytes(buf)
    left = location_left(out)
    if left:
        raise LocationStripError(
            "the image's location data (" + ", ".join(left) + ") could not be removed; "
            "send the photo without location metadata"
        )
    order = (EXIF_GPS, XMP_LOCATION, IPTC_LOCATION)
    return Stripped(out, tuple(kind for kind in order if kind in removed))


# ---- TIFF / EXIF ----------------------------------------------------------------------------


def _blank_exif_blocks(buf: bytearray) -> bool:
    """Every ``Exif\\0\\0`` + TIFF block anywhere in the file: JPEG APP1 segments of every
    frame and thumbnail, HEIC ``Exif`` items, WebP/PNG chunks that carry the header."""
    changed = False
    for count, match in enumerate(_EXIF_HEADER.finditer(buf)):
        if count >= _MAX_STRUCTURES:
            raise LocationStripError("too many EXIF blocks in one image")
        changed |= _blank_tiff(buf, match.start() + 6, len(buf))
    return changed


def _blank_tiff(buf: bytearray, base: int, limit: int) -> bool:
    """Unlink and zero the GPS directory of every IFD in the chain of the TIFF structure at
    ``base``, and blank IPTC location datasets of a TIFF file's IPTC tag; True if any."""
    header = bytes(buf[base : base + 4])
    if header not in _TIFF_HEADERS:
        return False
    endian = "<" if header == b"II*\x00" else ">"
    changed = False
    seen: set[int] = set()
    offset = _u32(buf, base + 4, endian)
    while offset and offset not in seen and len(seen) < _MAX_IFDS_PER_TIFF:
        seen.add(offset)
        start = base + offset
        if start + 2 > limit:
            break
        count = _u16(buf, start, endian)
        end = start + 2 + 12 * count
        if end + 4 > limit:
            break
        iptc_index = _find_entry(buf, start, count, IPTC_TIFF_TAG, endian)
        if iptc_index is not None:
            value_start, size = _value_span(buf, base, start + 2 + 12 * iptc_index, endian)
            if value_start + size <= limit:
                changed |= _blank_iim(buf, value_start, value_start + size)
        gps_index = _find_entry(buf, start, count, GPS_IFD_TAG, endian)
        if gps_index is not None:
            gps_offset = _u32(buf, start + 2 + 12 * gps_index + 8, endian)
            _zero_ifd(buf, base, base + gps_offset, limit, endian)
            _remove_entry(buf, start, count, gps_index, endian)
            changed = True
            count -= 1
        offset = _u32(buf, start + 2 + 12 * count, endian)
    return changed


def _find_entry(buf: bytearray, start: int, count: int, tag: int, endian: str) -> int | None:
    needle = struct.pack(endian + "H", tag)
    region = bytes(buf[start + 2 : start + 2 + 12 * count])
    pos = region.find(needle)
    while pos != -1:
        if pos % 12 == 0:
            return pos // 12
        pos = region.find(needle, pos + 1)
    return None


def _value_span(buf: bytearray, base: int, entry: int, endian: str) -> tuple[int, int]:
    kind = _u16(buf, entry + 2, endian)
    size = _TYPE_SIZES.get(kind, 1) * _u32(buf, entry + 4, endian)
    if size <= 4:
        return entry + 8, size
    return base + _u32(buf, entry + 8, endian), size


def _zero_ifd(buf: bytearray, base: int, start: int, limit: int, endian: str) -> None:
    """Zero an IFD and the values it points to (a GPS directory has no sub-directories)."""
    if start + 2 > limit or start < base:
        return
    count = _u16(buf, start, endian)
    end = min(start + 2 + 12 * count + 4, limit)
    for index in range(count):
        entry = start + 2 + 12 * index
        if entry + 12 > limit:
            break
        value_start, size = _value_span(buf, base, entry, endian)
        if size > 4 and base <= value_start and value_start + size <= limit:
            buf[value_start : value_start + size] = bytes(size)
    buf[start:end] = bytes(end - start)


def _remove_entry(buf: bytearray, start: int, count: int, index: int, endian: str) -> None:
    """Delete entry ``index`` of the IFD at ``start``: later entries and the next-IFD pointer
    move up 12 bytes, the freed 12 bytes at the end are zeroed, the count drops by one."""
    entry = start + 2 + 12 * index
    tail_end = start + 2 + 12 * count + 4
    buf[entry : tail_end - 12] = buf[entry + 12 : tail_end]
    buf[tail_end - 12 : tail_end] = bytes(12)
    struct.pack_into(endian + "H", buf, start, count - 1)


def _u16(buf: bytearray, pos: int, endian: str) -> int:
    if pos + 2 > len(buf):
        return 0
    return int(struct.unpack_from(endian + "H", buf, pos)[0])


def _u32(buf: bytearray, pos: int, endian: str) -> int:
    if pos + 4 > len(buf):
        return 0
    return int(struct.unpack_from(endian + "I", buf, pos)[0])


# ---- XMP --------------------------------------------------------------------------------------


def _blank_xmp(buf: bytearray) -> bool:
    """Overwrite location properties with spaces in every XMP packet and extended-XMP chunk."""
    spans = [(m.start(), m.end()) for m in _XMP_PACKET.finditer(buf)]
    pos = buf.find(_XMP_EXTENSION)
    while pos != -1:
        if pos >= 4 and buf[pos - 4 : pos - 2] == b"\xff\xe1":  # a JPEG APP1 chunk
            end = pos - 2 + int.from_bytes(buf[pos - 2 : pos], "big")
            spans.append((pos + len(_XMP_EXTENSION) + 40, min(end, len(buf))))
        pos = buf.find(_XMP_EXTENSION, pos + 1)
    if len(spans) > _MAX_STRUCTURES:
        raise LocationStripError("too many XMP packets in one image")
    changed = [_blank_xmp_span(buf, start, end) for start, end in spans]  # every one of them
    return any(changed)


def _blank_xmp_span(buf: bytearray, start: int, end: int) -> bool:
    text = bytes(buf[start:end])
    cleaned = _XMP_ELEMENT.sub(lambda m: b" " * len(m.group()), text)
    cleaned = _XMP_ATTRIBUTE.sub(lambda m: b" " * len(m.group()), cleaned)
    if cleaned == text:
        return False
    buf[start:end] = cleaned
    return True


def xmp_has_location(xmp: bytes | str) -> bool:
    """True when an XMP packet names a location property."""
    raw = xmp.encode("utf-8", "replace") if isinstance(xmp, str) else xmp
    return bool(_XMP_ELEMENT.search(raw) or _XMP_ATTRIBUTE.search(raw))


# ---- IPTC-IIM ---------------------------------------------------------------------------------


def _blank_iptc_blocks(buf: bytearray) -> bool:
    """IPTC in Photoshop image resources (JPEG APP13, TIFF tag 34377): resource 0x0404."""
    changed = False
    pos = buf.find(b"8BIM\x04\x04")
    found = 0
    while pos != -1:
        found += 1
        if found > _MAX_STRUCTURES:
            raise LocationStripError("too many IPTC blocks in one image")
        name_length = buf[pos + 6] if pos + 6 < len(buf) else 0
        name_field = name_length + 1 + ((name_length + 1) % 2)
        size_at = pos + 6 + name_field
        size = _u32(buf, size_at, ">")
        start = size_at + 4
        changed |= _blank_iim(buf, start, min(start + size, len(buf)))
        pos = buf.find(b"8BIM\x04\x04", pos + 1)
    return changed


def _blank_iim(buf: bytearray, start: int, end: int) -> bool:
    """Overwrite the values of IPTC record-2 location datasets with spaces."""
    changed = False
    pos = start
    while pos + 5 <= end and buf[pos] == 0x1C:
        record, dataset = buf[pos + 1], buf[pos + 2]
        length = int.from_bytes(buf[pos + 3 : pos + 5], "big")
        if length & 0x8000:  # extended length: not used by location datasets
            return changed
        value = pos + 5
        if value + length > end:
            return changed
        if record == 2 and dataset in _IPTC_LOCATION_DATASETS and length:
            buf[value : value + length] = b" " * length
            changed = True
        pos = value + length
    return changed


# ---- containers -------------------------------------------------------------------------------


def _png_chunks(buf: bytearray) -> list[tuple[int, bytes, int, int]]:
    """(chunk start, type, data start, data end) of each PNG chunk."""
    chunks = []
    pos = 8
    while pos + 12 <= len(buf):
        length = int.from_bytes(buf[pos : pos + 4], "big")
        kind = bytes(buf[pos + 4 : pos + 8])
        data_end = pos + 8 + length
        if data_end + 4 > len(buf):
            break
        chunks.append((pos, kind, pos + 8, data_end))
        pos = data_end + 4
        if kind == b"IEND":
            break
    return chunks


_MAX_PNG_TEXT = 16 * 1024 * 1024
"""The largest decompressed text chunk read (a zlib bomb is refused, not inflated)."""


def _strip_png(data: bytes) -> tuple[bytes, set[str]]:
    """Location in a PNG's ``eXIf`` chunk, compressed XMP (``iTXt``) and ImageMagick raw
    profiles (``Raw profile type exif/xmp/iptc`` in ``zTXt``/``tEXt``, hex-encoded). Text
    chunks are rebuilt (PNG has no offsets between chunks); ``eXIf`` is edited in place."""
    buf = bytearray(data)
    removed: set[str] = set()
    parts: list[bytes] = [bytes(buf[:8])]
    last = 8
    for chunk_start, kind, data_start, data_end in _png_chunks(buf):
        if kind == b"eXIf" and _blank_tiff(buf, data_start, data_end):
            removed.add(EXIF_GPS)
        new_data: bytes | None = None
        if kind in (b"iTXt", b"zTXt", b"tEXt"):
            new_data = _clean_png_text(kind, bytes(buf[data_start:data_end]), removed)
        if new_data is None:
            parts.append(bytes(buf[chunk_start : data_end + 4]))
        else:
            crc = zlib.crc32(kind + new_data) & 0xFFFFFFFF
            size = len(new_data).to_bytes(4, "big")
            parts.append(size + kind + new_data + crc.to_bytes(4, "big"))
        last = data_end + 4
    parts.append(bytes(buf[last:]))
    return b"".join(parts), removed


def _inflate(body: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(body, _MAX_PNG_TEXT)
    except zlib.error as exc:
        raise LocationStripError(f"a compressed PNG text chunk is damaged: {exc}") from None
    if inflater.unconsumed_tail:
        raise LocationStripError("a compressed PNG text chunk is too large")
    return text


def _clean_png_text(kind: bytes, data: bytes, removed: set[str]) -> bytes | None:
    """The chunk data without location, or None when it needs no change."""
    keyword, _, rest = data.partition(b"\x00")
    if kind == b"iTXt":
        if rest[:1] != b"\x01":
            return None  # uncompressed XMP: the packet scan over the whole file sees it
        flags, body = rest[:2], rest[2:]
        language, _, body = body.partition(b"\x00")
        translated, _, body = body.partition(b"\x00")
        text = bytearray(_inflate(body))
        if not _blank_xmp_span(text, 0, len(text)):
            return None
        removed.add(XMP_LOCATION)
        head = keyword + b"\x00" + flags + language + b"\x00" + translated + b"\x00"
        return head + zlib.compress(bytes(text))
    if not keyword.lower().startswith(b"raw profile type"):
        return None
    profile = keyword[len(b"raw profile type") :].strip().lower()
    text = bytearray(_inflate(rest[1:]) if kind == b"zTXt" else rest)
    if not _clean_raw_profile(profile, text, removed):
        return None
    return keyword + b"\x00" + (b"\x00" + zlib.compress(bytes(text)) if kind == b"zTXt" else text)


def _clean_raw_profile(profile: bytes, text: bytearray, removed: set[str]) -> bool:
    """ImageMagick's raw profile: ``\\n<name>\\n<length>\\n<hex lines>``; the decoded bytes are
    cleaned at the same length and written back as hex over the same characters."""
    lines = bytes(text).split(b"\n", 3)
    if len(lines) < 4:
        return False
    hex_start = len(text) - len(lines[3])
    digits = [i for i in range(hex_start, len(text)) if chr(text[i]) in "0123456789abcdefABCDEF"]
    if len(digits) % 2:
        return False
    decoded = bytearray(
        int(bytes(text[digits[i] : digits[i] + 1] + text[digits[i + 1] : digits[i + 1] + 1]), 16)
        for i in range(0, len(digits), 2)
    )
    if profile in (b"exif", b"app1"):
        kind = EXIF_GPS
        changed = _blank_exif_blocks(decoded) or _blank_tiff(decoded, 0, len(decoded))
    elif profile == b"xmp":
        kind = XMP_LOCATION
        changed = _blank_xmp_span(decoded, 0, len(decoded))
    elif profile in (b"iptc", b"8bim"):
        kind = IPTC_LOCATION
        changed = _blank_iptc_blocks(decoded) or _blank_iim(decoded, 0, len(decoded))
    else:
        return False
    if not changed:
        return False
    encoded = decoded.hex().encode()
    for index, position in enumerate(digits):
        text[position] = encoded[index]
    removed.add(kind)
    return True


def _fix_png_crcs(buf: bytearray) -> None:
    for chunk_start, _kind, _data_start, data_end in _png_chunks(buf):
        crc = zlib.crc32(buf[chunk_start + 4 : data_end]) & 0xFFFFFFFF
        buf[data_end : data_end + 4] = crc.to_bytes(4, "big")


def _strip_riff_exif(buf: bytearray) -> set[str]:
    """WebP ``EXIF`` chunks hold a TIFF structure without the ``Exif`` header."""
    removed: set[str] = set()
    pos = 12
    while pos + 8 <= len(buf):
        kind = bytes(buf[pos : pos + 4])
        size = int.from_bytes(buf[pos + 4 : pos + 8], "little")
        start, end = pos + 8, min(pos + 8 + size, len(buf))
        if kind == b"EXIF" and _blank_tiff(buf, start, end):
            removed.add(EXIF_GPS)
        pos = end + (size & 1)
    return removed


# ---- verification -----------------------------------------------------------------------------


def _open(data: bytes) -> Image.Image:
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
    except ImportError:  # HEIC support is optional
        pass
    return Image.open(io.BytesIO(data))


def location_left(data: bytes, max_frames: int = 64) -> list[str]:
    """What location metadata a reader (Pillow, pillow-heif) still finds in ``data``, frame by
    frame: empty when there is none."""
    left: set[str] = set()
    try:
        with _open(data) as image:
            for index, frame in enumerate(ImageSequence.Iterator(image)):
                if index >= max_frames:
                    break
                if frame.getexif().get_ifd(GPS_IFD_TAG):
                    left.add(EXIF_GPS)
                xmp = frame.info.get("xmp") or frame.info.get("XML:com.adobe.xmp")
                if xmp and xmp_has_location(xmp):
                    left.add(XMP_LOCATION)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        logger.debug("location check could not read the image: %s", exc)
    return sorted(left)
