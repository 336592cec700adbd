"""The hostile-input corpus: requests a careless or malicious client could send the service.

Every case is generated here, in memory, from a few bytes of code (no files in the repository):
non-images posing as images, truncated and corrupt JPEGs, decompression bombs, broken multipart
bodies, wrong content types, enormous fields, path-traversal and unicode file names, invalid JSON
and non-UTF-8 bodies, out-of-range parameters, unknown country codes and SQL-like strings.

:func:`refused_cases` are the cases the service must refuse with a 4xx
``application/problem+json`` answer while storing nothing; :func:`accepted_cases` are hostile-
looking requests that are legitimate (a valid photo with a path-traversal file name, SQL text in a
free-text field) and must be accepted and stored safely. :class:`StoreSnapshot` records what the
data directory holds, so a test can check that a refused request left no trace.

The multipart bodies are assembled by hand (:func:`multipart`) rather than by an HTTP client, so
that a case can send exactly the bytes it means to: no content type, a lying content type, a
non-UTF-8 file name, a boundary that does not match its header.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sqlite3
import struct
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# --- the API under test (docs/api.md) -------------------------------------------------------
IDENTIFY = "/v1/identifications"
BATCH = "/v1/identifications:batch"
IDENTIFICATION = "/v1/identifications/{id}"
FEEDBACK = "/v1/identifications/{id}/feedback"
TAXON = "/v1/taxa/{id}"
IMAGE_FIELD = "image"
BATCH_FIELD = "images"
PROBLEM_MEDIA_TYPE = "application/problem+json"

#: Limits the hostile-input server runs with (env of ``running_service``), kept small so that the
#: "too big" cases stay cheap to send.
MAX_UPLOAD_BYTES = 1024 * 1024
MAX_BATCH_IMAGES = 4
MAX_PIXELS = 20_000_000
SERVER_ENV = {
    "CITES_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
    "CITES_MAX_BATCH_IMAGES": str(MAX_BATCH_IMAGES),
    "CITES_MAX_PIXELS": str(MAX_PIXELS),
}

BOUNDARY = "hostile-boundary-7d1f0c"
SQL_LIKE = "x'); DROP TABLE identifications; --"

# A part of a multipart body: (field name, file name or None, content type or None, payload).
Part = tuple[str, str | bytes | None, str | None, bytes]


@dataclass(frozen=True)
class HostileCase:
    """One request of the corpus and the statuses that are a correct answer to it."""

    name: str
    method: str
    path: str
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    expect: frozenset[int] = frozenset({422})
    why: str = ""
    problem: str | None = None  # the problem type slug expected (docs/api.md), when it is fixed

    def url_path(self, identification_id: str) -> str:
        """The request path with ``{id}`` filled in."""
        return self.path.replace("{id}", identification_id)


# --- bytes -----------------------------------------------------------------------------------


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (96, 64), seed: int = 0) -> bytes:
    """A small valid image with random texture, different for every ``seed`` (so that JPEG has
    real entropy-coded data and no two seeds share a content address)."""
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def jpeg_corrupt_entropy() -> bytes:
    """A JPEG whose entropy-coded scan is sprinkled with 0xFF bytes (invalid markers)."""
    data = bytearray(image_bytes("JPEG", (160, 120)))
    start = data.index(b"\xff\xda") + 20
    for i in range(start, len(data) - 2, 7):
        data[i] = 0xFF
    return bytes(data)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG header declaring ``width`` x ``height`` with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def png_real_bomb(side: int = 6000) -> bytes:
    """A real grayscale PNG of ``side`` x ``side`` zeros: tiny on the wire, huge once decoded."""
    row = b"\x00" + b"\x00" * side
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def tiff_declaring(width: int, height: int) -> bytes:
    """A little-endian baseline TIFF declaring ``width`` x ``height`` 8-bit gray, one tiny strip."""
    entries = [
        (256, 4, 1, width),  # ImageWidth, LONG
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample, SHORT
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: BlackIsZero
        (273, 4, 1, 0),  # StripOffsets (patched below)
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 16),  # StripByteCounts
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    strip_offset = 8 + ifd_size
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        if tag == 273:
            value = strip_offset
        packed = struct.pack("<H", value) + b"\x00\x00" if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    out += struct.pack("<I", 0) + b"\x00" * 16
    return bytes(out)


def gif_declaring(width: int, height: int) -> bytes:
    """A GIF whose screen and single frame declare ``width`` x ``height``."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00" * 6
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    lzw = b"\x02\x02\x44\x01\x00"  # min code size 2, one sub-block, terminator
    return header + frame + lzw + b"\x3b"


def webp_declaring(width: int, height: int) -> bytes:
    """A WebP (VP8X) header declaring a ``width`` x ``height`` canvas, with no image data."""
    vp8x = (
        b"VP8X"
        + struct.pack("<I", 10)
        + b"\x00" * 4
        + (width - 1).to_bytes(3, "little")
        + (height - 1).to_bytes(3, "little")
    )
    body = b"WEBP" + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


def png_text_bomb(megabytes: int = 8) -> bytes:
    """A valid 8x8 PNG with a zTXt chunk that inflates to ``megabytes`` MB."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    png = buf.getvalue()
    payload = b"Comment\x00\x00" + zlib.compress(b"A" * (megabytes * 1024 * 1024), 9)
    at = png.index(b"IDAT") - 4
    return png[:at] + _png_chunk(b"zTXt", payload) + png[at:]


def animated_gif(frames: int = 4) -> bytes:
    """A small animated GIF (different colour per frame)."""
    images = [Image.new("RGB", (48, 48), (60 * i % 256, 40, 200 - 30 * i)) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=80, loop=0)
    return buf.getvalue()


def jpeg_with_exif(exif_payload: bytes) -> bytes:
    """A valid JPEG with ``exif_payload`` spliced in as its APP1 segment."""
    data = image_bytes("JPEG")
    app1 = b"\xff\xe1" + struct.pack(">H", len(exif_payload) + 2) + exif_payload
    return data[:2] + app1 + data[2:]


def exif_orientation(value: int) -> bytes:
    """An Exif APP1 payload with one Orientation entry of ``value`` (valid range is 1-8)."""
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, value, 0) + struct.pack(">I", 0)
    return b"Exif\x00\x00" + tiff


def exif_garbage() -> bytes:
    """An Exif APP1 payload whose IFD points far outside the segment and loops onto itself."""
    tiff = b"II*\x00" + struct.pack("<I", 0x7FFFFFF0) + b"\xff" * 32
    return b"Exif\x00\x00" + tiff


def zip_bytes() -> bytes:
    """A ZIP archive (holding a JPEG, to make it tempting)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("photo.jpg", image_bytes("JPEG"))
    return buf.getvalue()


PDF_BYTES = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)
SVG_BYTES = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b"<script>alert(1)</script></svg>"
)
HTML_BYTES = b"<!doctype html><html><body><script>alert(1)</script><img src=x></body></html>"
TEXT_BYTES = b"This is not an image, it is a shipping note.\n" * 20


def multipart(parts: Iterable[Part], boundary: str = BOUNDARY) -> tuple[bytes, str]:
    """Assemble a multipart/form-data body; returns (body, Content-Type header value)."""
    out = bytearray()
    for name, filename, content_type, payload in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'Content-Disposition: form-data; name="{name}"'.encode()
        if filename is not None:
            raw = filename if isinstance(filename, bytes) else filename.encode("utf-8")
            disposition += b'; filename="' + raw + b'"'
        out += disposition + b"\r\n"
        if content_type is not None:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + payload + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def _upload(
    name: str,
    payload: bytes,
    *,
    filename: str | bytes | None = "photo.jpg",
    content_type: str | None = "image/jpeg",
    fields: Mapping[str, str | bytes] | None = None,
    expect: Iterable[int] = (422,),
    why: str = "",
    path: str = IDENTIFY,
    field_name: str = IMAGE_FIELD,
) -> HostileCase:
    parts: list[Part] = [(field_name, filename, content_type, payload)]
    for key, value in (fields or {}).items():
        parts.append((key, None, None, value if isinstance(value, bytes) else value.encode()))
    body, ctype = multipart(parts)
    return HostileCase(
        name, "POST", path, body, {"Content-Type": ctype}, expect=frozenset(expect), why=why
    )


def _json(
    name: str, path: str, body: bytes, *, expect: Iterable[int] = (422,), why: str = ""
) -> HostileCase:
    headers = {"Content-Type": "application/json"}
    return HostileCase(name, "POST", path, body, headers, expect=frozenset(expect), why=why)


def _get(
    name: str,
    path: str,
    params: Mapping[str, str] | None = None,
    *,
    expect: Iterable[int] = (422,),
    why: str = "",
) -> HostileCase:
    return HostileCase(
        name, "GET", path, params=dict(params or {}), expect=frozenset(expect), why=why
    )


# --- the corpus ------------------------------------------------------------------------------

BAD_BODY = (400, 415, 422)  # a malformed or wrongly typed body: any of these is a fair answer
TOO_BIG = (413,)


def refused_cases() -> list[HostileCase]:
    """Every request the service must refuse with a 4xx problem and no stored trace."""
    ok_jpeg = image_bytes("JPEG")
    cases = [
        # not images, or not whole images
        _upload("zero_bytes", b"", why="empty upload"),
        _upload("text_as_jpeg", TEXT_BYTES, why="plain text named photo.jpg"),
        _upload("html_as_png", HTML_BYTES, filename="x.png", content_type="image/png"),
        _upload("pdf_as_jpeg", PDF_BYTES),
        _upload("svg_as_png", SVG_BYTES, filename="x.png", content_type="image/svg+xml"),
        _upload("zip_as_jpeg", zip_bytes(), why="a ZIP holding a JPEG is still not an image"),
        _upload("truncated_jpeg", ok_jpeg[: len(ok_jpeg) // 2]),
        _upload("jpeg_header_only", ok_jpeg[:200]),
        _upload("jpeg_corrupt_entropy", jpeg_corrupt_entropy()),
        _upload("png_bad_crc", png_declaring(64, 64)[:-20] + b"\x00" * 20),
        # decompression bombs: refused from the header, before any pixel is decoded
        _upload("png_bomb_header", png_declaring(100_000, 100_000), expect=TOO_BIG),
        _upload("png_bomb_real", png_real_bomb(6000), filename="b.png", expect=TOO_BIG),
        _upload("tiff_bomb", tiff_declaring(100_000, 100_000), filename="s.tif", expect=TOO_BIG),
        _upload("webp_bomb", webp_declaring(16_383, 16_383), filename="w.webp", expect=TOO_BIG),
        _upload("png_text_chunk_bomb", png_text_bomb(), filename="t.png"),
        _upload("gif_bomb", gif_declaring(65_535, 65_535), filename="a.gif", expect=TOO_BIG),
        # transport: wrong or missing content types, broken multipart
        HostileCase(
            "no_content_type_header",
            "POST",
            IDENTIFY,
            multipart([_part(ok_jpeg)])[0],
            {},
            expect=frozenset(BAD_BODY),
        ),
        HostileCase(
            "raw_jpeg_body",
            "POST",
            IDENTIFY,
            ok_jpeg,
            {"Content-Type": "image/jpeg"},
            expect=frozenset(BAD_BODY),
            why="the API takes multipart, not a raw body",
        ),
        _json("json_body_to_identify", IDENTIFY, b'{"image": "aGVsbG8="}', expect=BAD_BODY),
        HostileCase(
            "boundary_mismatch",
            "POST",
            IDENTIFY,
            multipart([_part(ok_jpeg)], "other")[0],
            {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            expect=frozenset(BAD_BODY),
        ),
        HostileCase(
            "multipart_without_boundary",
            "POST",
            IDENTIFY,
            multipart([_part(ok_jpeg)])[0],
            {"Content-Type": "multipart/form-data"},
            expect=frozenset(BAD_BODY),
        ),
        _upload("wrong_field_name", ok_jpeg, field_name="file", why="the field is 'image'"),
        _upload("image_as_text_field", ok_jpeg, filename=None, content_type=None),
        # enormous fields
        _upload("oversized_upload", _padded_jpeg(MAX_UPLOAD_BYTES + 4096), expect=TOO_BIG),
        _upload(
            "enormous_text_field",
            ok_jpeg,
            fields={"case_ref": "A" * (2 * MAX_UPLOAD_BYTES)},
            expect=(413, 422),
        ),
        HostileCase(
            "ten_thousand_fields",
            "POST",
            IDENTIFY,
            *_many_fields(ok_jpeg, 10_000),
            expect=frozenset((400, 413, 422)),
        ),
        # hostile file names on content that is not an image (a valid image with such a name is
        # accepted and stored by content hash: see accepted_cases)
        _upload("path_traversal_name", TEXT_BYTES, filename="../../../../../tmp/cites-pwned.jpg"),
        _upload("absolute_path_name", TEXT_BYTES, filename="/etc/cron.d/cites-pwned"),
        _upload("unicode_name", TEXT_BYTES, filename="\u202egpj.exe\u0000\U0001f418.jpg"),
        _upload("non_utf8_name", TEXT_BYTES, filename=b"\xff\xfe\xc0\xaf.jpg"),
        # parameters out of range or unknown
        _upload("top_k_zero", ok_jpeg, fields={"top_k": "0"}),
        _upload("top_k_negative", ok_jpeg, fields={"top_k": "-3"}),
        _upload("top_k_huge", ok_jpeg, fields={"top_k": "1000000000000"}),
        _upload("top_k_not_a_number", ok_jpeg, fields={"top_k": "five"}),
        _upload("unknown_country", ok_jpeg, fields={"origin_country": "ZZ"}),
        _upload("country_three_letters", ok_jpeg, fields={"origin_country": "KEN"}),
        _upload("country_sql", ok_jpeg, fields={"origin_country": "KE' OR '1'='1"}),
        _upload("unknown_modality", ok_jpeg, fields={"modality": "ultrasound"}),
        # batches
        _batch("batch_too_many", [ok_jpeg] * (MAX_BATCH_IMAGES + 1), expect=TOO_BIG),
        _batch("batch_empty", []),
        # JSON bodies (feedback)
        _json("feedback_invalid_json", FEEDBACK, b'{"verdict": "confirm",', expect=BAD_BODY),
        _json("feedback_non_utf8", FEEDBACK, b'{"verdict": "\xff\xfe"}', expect=BAD_BODY),
        _json("feedback_array", FEEDBACK, b'["confirm"]'),
        _json("feedback_deep_nesting", FEEDBACK, b"[" * 30_000 + b"]" * 30_000, expect=BAD_BODY),
        _json("feedback_unknown_verdict", FEEDBACK, _dumps({"verdict": "maybe"})),
        _json("feedback_sql_label", FEEDBACK, _dumps({"verdict": "correct", "label": SQL_LIKE})),
        _json("feedback_sql_taxon", FEEDBACK, _dumps({"verdict": "correct", "taxon_id": SQL_LIKE})),
        _json(
            "feedback_enormous_note",
            FEEDBACK,
            _dumps({"verdict": "confirm", "note": "n" * (2 * MAX_UPLOAD_BYTES)}),
            expect=(413, 422),
        ),
        HostileCase(
            "feedback_unknown_id",
            "POST",
            FEEDBACK.replace("{id}", "no-such-identification"),
            _dumps({"verdict": "confirm"}),
            {"Content-Type": "application/json"},
            expect=frozenset({404}),
        ),
        # look-ups with hostile identifiers and query strings
        _get(
            "identification_sql_id", IDENTIFICATION.replace("{id}", "1' OR '1'='1"), expect=(404,)
        ),
        _get("taxon_sql_id", TAXON.replace("{id}", "x'; DROP TABLE api_keys; --"), expect=(404,)),
        _get("list_negative_limit", "/v1/identifications", {"limit": "-1"}),
        _get("list_bad_since", "/v1/identifications", {"since": "yesterday'--"}),
    ]
    cases = [dataclasses.replace(case, problem=PROBLEM_TYPES.get(case.name)) for case in cases]
    names = [case.name for case in cases]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise ValueError(f"duplicate hostile case names: {sorted(duplicates)}")
    return cases


_UNSUPPORTED = ("text_as_jpeg", "html_as_png", "pdf_as_jpeg", "svg_as_png", "zip_as_jpeg")
_CORRUPT = ("truncated_jpeg", "jpeg_header_only", "jpeg_corrupt_entropy", "png_bad_crc")
_BOMBS = ("png_bomb_header", "png_bomb_real", "tiff_bomb", "webp_bomb", "gif_bomb")
_NAMES = ("path_traversal_name", "absolute_path_name", "unicode_name", "non_utf8_name")
_FIELDS = ("top_k_zero", "top_k_negative", "top_k_huge", "top_k_not_a_number", "unknown_modality")
_COUNTRIES = ("unknown_country", "country_three_letters", "country_sql")

#: The problem type (slug of ``type``) each case must get, where the answer is not a matter of
#: which layer notices first.
PROBLEM_TYPES: dict[str, str] = {
    "zero_bytes": "empty-image",
    **dict.fromkeys(_UNSUPPORTED + _NAMES, "unsupported-image"),
    **dict.fromkeys((*_CORRUPT, "png_text_chunk_bomb"), "corrupt-image"),
    **dict.fromkeys(_BOMBS, "too-many-pixels"),
    **dict.fromkeys(_FIELDS + _COUNTRIES, "validation-error"),
    "oversized_upload": "image-too-large",
    "batch_too_many": "batch-too-large",
    "feedback_sql_label": "unknown-label",
    "feedback_sql_taxon": "unknown-label",
    "feedback_unknown_verdict": "validation-error",
    "feedback_enormous_note": "body-too-large",
    "feedback_unknown_id": "not-found",
    "identification_sql_id": "not-found",
    "taxon_sql_id": "not-found",
}


@dataclass(frozen=True)
class AcceptedCase:
    """A hostile-looking request that is legitimate: the service must answer 2xx, safely."""

    name: str
    case: HostileCase
    stored_text: Mapping[str, str] = field(default_factory=dict)


def accepted_cases() -> list[AcceptedCase]:
    """Requests that look hostile but are legitimate and must be stored verbatim and safely."""
    return [
        AcceptedCase(
            "valid_image_path_traversal_name",
            _upload("t", image_bytes(seed=11), filename="../../../../../tmp/cites-pwned.jpg"),
        ),
        AcceptedCase(
            "valid_image_unicode_name",
            _upload("u", image_bytes(seed=12), filename="\u202e\U0001f418 \u00e9l\u00e9phant.jpg"),
        ),
        AcceptedCase(
            "sql_in_case_ref",
            _upload("s", image_bytes(seed=13), fields={"case_ref": SQL_LIKE}),
            stored_text={"case_ref": SQL_LIKE},
        ),
        AcceptedCase(
            "animated_gif_first_frame",
            _upload("g", animated_gif(), filename="a.gif", content_type="image/gif"),
        ),
        AcceptedCase(
            "exif_orientation_out_of_range",
            _upload("o", jpeg_with_exif(exif_orientation(9))),
        ),
        AcceptedCase("exif_garbage_ifd", _upload("e", jpeg_with_exif(exif_garbage()))),
        AcceptedCase(  # multipart text is read as UTF-8, else as Latin-1 (Starlette): no loss
            "non_utf8_text_field_read_as_latin1",
            _upload("l", image_bytes(seed=15), fields={"case_ref": "Caf\u00e9".encode("latin-1")}),
            stored_text={"case_ref": "Caf\u00e9"},
        ),
        AcceptedCase(
            "wrong_declared_type_valid_png",
            _upload("w", image_bytes("PNG", seed=14), filename="x.txt", content_type="text/plain"),
        ),
    ]


def _part(payload: bytes) -> Part:
    return (IMAGE_FIELD, "photo.jpg", "image/jpeg", payload)


def _dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _padded_jpeg(total: int) -> bytes:
    """A valid JPEG of at least ``total`` bytes (padding in a comment-like APP15 segments)."""
    data = image_bytes("JPEG")
    pad = bytearray()
    while len(data) + len(pad) < total:
        pad += b"\xff\xef" + struct.pack(">H", 65535) + b"\x00" * 65533
    return data[:2] + bytes(pad) + data[2:]


def _many_fields(jpeg: bytes, count: int) -> tuple[bytes, dict[str, str]]:
    parts: list[Part] = [_part(jpeg)]
    parts += [(f"f{i}", None, None, b"x") for i in range(count)]
    body, ctype = multipart(parts)
    return body, {"Content-Type": ctype}


def _batch(name: str, images: Sequence[bytes], *, expect: Iterable[int] = (422,)) -> HostileCase:
    parts: list[Part] = [
        (BATCH_FIELD, f"scan-{i}.jpg", "image/jpeg", payload) for i, payload in enumerate(images)
    ]
    if not parts:
        parts = [("case_ref", None, None, b"empty batch")]
    body, ctype = multipart(parts)
    return HostileCase(name, "POST", BATCH, body, {"Content-Type": ctype}, expect=frozenset(expect))


# --- what is stored --------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreSnapshot:
    """Row counts of every table (but the API keys) and the files under the data directory."""

    rows: Mapping[str, int]
    files: frozenset[str]

    @classmethod
    def take(cls, data_dir: Path) -> StoreSnapshot:
        """Read the SQLite database under ``data_dir`` (read-only) and list every file."""
        rows: dict[str, int] = {}
        for db in sorted(data_dir.glob("*.sqlite3")) + sorted(data_dir.glob("*.db")):
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
                tables = [
                    r[0]
                    for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                    if r[0] not in {"api_keys", "alembic_version"} and not r[0].startswith("sqlite")
                ]
                for table in tables:
                    (count,) = conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()
                    rows[f"{db.name}:{table}"] = int(count)
        files = frozenset(
            str(p.relative_to(data_dir))
            for p in data_dir.rglob("*")
            if p.is_file() and not _is_database_file(p)
        )
        return cls(rows, files)

    def difference(self, later: StoreSnapshot) -> list[str]:
        """What changed between this snapshot and ``later`` (empty when nothing did)."""
        changes = [
            f"{table}: {self.rows.get(table, 0)} -> {later.rows.get(table, 0)} rows"
            for table in sorted(set(self.rows) | set(later.rows))
            if self.rows.get(table, 0) != later.rows.get(table, 0)
        ]
        changes += [f"new file {name}" for name in sorted(later.files - self.files)]
        return changes


def _is_database_file(path: Path) -> bool:
    name = path.name
    suffixes = (".sqlite3", ".sqlite3-wal", ".sqlite3-shm", ".sqlite3-journal", ".db", ".log")
    return name.endswith(suffixes)
