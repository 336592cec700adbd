"""Location privacy: GPS and other location data leave every frame of every accepted format
(JPEG, MPO, PNG, WebP, HEIC, TIFF), from EXIF, XMP and IPTC; pixels stay byte-identical; what
was removed is reported truthfully."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageSequence

from service.imagestore import prepare_image
from service.privacy import (
    EXIF_GPS,
    GPS_IFD_TAG,
    IPTC_LOCATION,
    XMP_LOCATION,
    location_left,
    strip_location,
    xmp_has_location,
)

XMP = (
    b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-'
    b'syntax-ns#"><rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" xmlns:photoshop='
    b'"http://ns.adobe.com/photoshop/1.0/" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
    b'exif:GPSLatitude="51,30.123N" photoshop:City="Antwerp" xmp:CreatorTool="TestCam">'
    b"<exif:GPSLongitude>4,24.5E</exif:GPSLongitude>"
    b"</rdf:Description></rdf:RDF></x:xmpmeta>"
    b'<?xpacket end="w"?>'
)
CLEAN_XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description xmp:CreatorTool="TestCam"/>'
    b"</rdf:RDF></x:xmpmeta>"
)


def gps_exif() -> Image.Exif:
    """EXIF with a camera make and a GPS position."""
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif.get_ifd(GPS_IFD_TAG).update({1: "N", 2: (51.0, 30.0, 7.0), 3: "E", 4: (4.0, 24.0, 5.0)})
    return exif


def picture(seed: int = 0, size: tuple[int, int] = (48, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def encode(fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    picture().save(out, fmt, **kwargs)
    return out.getvalue()


def frames(data: bytes) -> list[np.ndarray]:
    with Image.open(io.BytesIO(data)) as image:
        return [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(image)]


def assert_clean_and_same_pixels(before: bytes, after: bytes) -> None:
    assert location_left(after) == []
    assert b"GPSLatitude" not in after and b"Antwerp" not in after
    old, new = frames(before), frames(after)
    assert len(old) == len(new)
    for a, b in zip(old, new, strict=True):
        assert np.array_equal(a, b)


def test_jpeg_exif_and_xmp_location_removed_other_metadata_kept() -> None:
    data = encode("JPEG", exif=gps_exif(), xmp=XMP)
    assert location_left(data) == [EXIF_GPS, XMP_LOCATION]
    result = strip_location(data, "JPEG")
    assert result.removed == (EXIF_GPS, XMP_LOCATION)
    assert len(result.data) == len(data)  # edited in place
    assert_clean_and_same_pixels(data, result.data)
    exif = Image.open(io.BytesIO(result.data)).getexif()
    assert GPS_IFD_TAG not in exif and exif[0x010F] == "TestCam"
    assert b'xmp:CreatorTool="TestCam"' in result.data  # non-location XMP kept


def test_mpo_every_frame_loses_its_gps() -> None:
    first, second = picture(1), picture(2)
    out = io.BytesIO()
    first.save(out, "MPO", save_all=True, append_images=[second], exif=gps_exif())
    data = out.getvalue()
    with Image.open(io.BytesIO(data)) as mpo:
        assert mpo.format == "MPO" and mpo.n_frames == 2
        mpo.seek(1)
        assert mpo.getexif().get_ifd(GPS_IFD_TAG)  # the second frame has a position too
    prepared = prepare_image(data, keep_gps=False)
    assert prepared.gps_removed and prepared.location_removed == (EXIF_GPS,)
    with Image.open(io.BytesIO(prepared.data)) as mpo:
        assert mpo.n_frames == 2  # the frame table still points at both frames
        for frame in ImageSequence.Iterator(mpo):
            assert not frame.getexif().get_ifd(GPS_IFD_TAG)
    assert_clean_and_same_pixels(data, prepared.data)


def test_exif_thumbnail_inside_a_jpeg_is_cleaned_too() -> None:
    thumb = encode("JPEG", exif=gps_exif())
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    segment_payload = b"Exif\x00\x00" + exif.tobytes()
    # a second APP1 that embeds a complete JPEG (as an EXIF thumbnail would)
    nested = b"\xff\xe1" + struct.pack(">H", len(thumb) + 2) + thumb
    main = encode("JPEG", exif=segment_payload[6:])
    data = main[:2] + nested + main[2:]
    result = strip_location(data, "JPEG")
    assert result.removed == (EXIF_GPS,)
    inner = result.data[6 : 6 + len(thumb)]
    assert not Image.open(io.BytesIO(inner)).getexif().get_ifd(GPS_IFD_TAG)


def test_png_exif_and_xmp_in_every_chunk_kind() -> None:
    # eXIf chunk + uncompressed iTXt XMP
    plain = encode("PNG", exif=gps_exif().tobytes(), pnginfo=_xmp_info(XMP, compressed=False))
    # compressed iTXt XMP only (the finding: GPS only in XMP was stored unchanged)
    packed = encode("PNG", pnginfo=_xmp_info(XMP, compressed=True))
    for data, expected in ((plain, (EXIF_GPS, XMP_LOCATION)), (packed, (XMP_LOCATION,))):
        result = strip_location(data, "PNG")
        assert result.removed == expected
        assert_clean_and_same_pixels(data, result.data)
        xmp = Image.open(io.BytesIO(result.data)).info.get("XML:com.adobe.xmp", "")
        assert not xmp_has_location(xmp)


def test_png_imagemagick_raw_profile_is_cleaned() -> None:
    from PIL import PngImagePlugin

    tiff = gps_exif().tobytes()
    hexed = tiff.hex()
    lines = "\n".join(hexed[i : i + 72] for i in range(0, len(hexed), 72))
    text = f"\nexif\n{len(tiff):8d}\n{lines}\n"
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", text, zip=True)
    data = encode("PNG", pnginfo=info)
    result = strip_location(data, "PNG")
    assert result.removed == (EXIF_GPS,)
    profile = Image.open(io.BytesIO(result.data)).info["Raw profile type exif"]
    cleaned = bytes.fromhex("".join(profile.split("\n", 3)[3].split()))
    exif = Image.Exif()
    exif.load(cleaned)
    assert GPS_IFD_TAG not in exif and exif[0x010F] == "TestCam"


def test_webp_exif_and_xmp() -> None:
    data = encode("WEBP", lossless=True, exif=gps_exif().tobytes(), xmp=XMP)
    assert location_left(data) == [EXIF_GPS, XMP_LOCATION]
    result = strip_location(data, "WEBP")
    assert result.removed == (EXIF_GPS, XMP_LOCATION)
    assert_clean_and_same_pixels(data, result.data)


def test_webp_with_gps_only_in_xmp() -> None:
    data = encode("WEBP", lossless=True, xmp=XMP)
    prepared = prepare_image(data, keep_gps=False)
    assert prepared.location_removed == (XMP_LOCATION,) and prepared.mime == "image/webp"
    assert_clean_and_same_pixels(data, prepared.data)


def test_tiff_every_page_and_xmp_tag() -> None:
    first, second = picture(3), picture(4)
    out = io.BytesIO()
    first.save(
        out,
        "TIFF",
        save_all=True,
        append_images=[second],
        tiffinfo={GPS_IFD_TAG: gps_exif().get_ifd(GPS_IFD_TAG), 700: XMP, 0x010F: "TestCam"},
    )
    data = out.getvalue()
    with Image.open(io.BytesIO(data)) as tiff:
        tiff.seek(1)
        assert tiff.getexif().get_ifd(GPS_IFD_TAG)  # both pages carry a position
    assert EXIF_GPS in location_left(data)
    result = strip_location(data, "TIFF")
    assert EXIF_GPS in result.removed and XMP_LOCATION in result.removed
    assert_clean_and_same_pixels(data, result.data)


def test_heic_exif_and_xmp() -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    data = encode("HEIF", quality=90, exif=gps_exif().tobytes(), xmp=XMP)
    assert Image.open(io.BytesIO(data)).format == "HEIF"
    assert location_left(data) == [EXIF_GPS, XMP_LOCATION]
    prepared = prepare_image(data, keep_gps=False)
    assert prepared.location_removed == (EXIF_GPS, XMP_LOCATION)
    assert prepared.mime == "image/heic" and len(prepared.data) == len(data)
    assert_clean_and_same_pixels(data, prepared.data)


def test_iptc_location_in_jpeg_app13() -> None:
    iim = b"".join(
        b"\x1c\x02" + bytes([dataset]) + struct.pack(">H", len(value)) + value
        for dataset, value in ((90, b"Antwerp"), (101, b"Belgium"), (120, b"ivory tusk"))
    )
    resource = b"8BIM\x04\x04\x00\x00" + struct.pack(">I", len(iim)) + iim
    payload = b"Photoshop 3.0\x00" + resource
    jpeg = encode("JPEG")
    data = jpeg[:2] + b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]
    result = strip_location(data, "JPEG")
    assert result.removed == (IPTC_LOCATION,)
    assert b"Antwerp" not in result.data and b"Belgium" not in result.data
    assert b"ivory tusk" in result.data  # the caption is not a location


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode("JPEG", exif=Image.Exif().tobytes(), xmp=CLEAN_XMP),
        lambda: encode("PNG"),
        lambda: encode("WEBP", lossless=True),
        lambda: encode("TIFF"),
    ],
    ids=["jpeg", "png", "webp", "tiff"],
)
def test_nothing_to_remove_means_unchanged_and_reported_so(make: Callable[[], bytes]) -> None:
    data = make()
    prepared = prepare_image(data, keep_gps=False)
    assert prepared.data == data
    assert prepared.location_removed == () and prepared.gps_removed is False


def test_kept_when_configured() -> None:
    data = encode("WEBP", lossless=True, xmp=XMP)
    prepared = prepare_image(data, keep_gps=True)
    assert prepared.data == data and prepared.location_removed == ()


def _xmp_info(xmp: bytes, *, compressed: bool) -> object:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode(), zip=compressed)
    return info


def test_damaged_compressed_xmp_is_refused_not_stored() -> None:
    from service.privacy import LocationStripError

    chunk_data = b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + b"not zlib at all"
    chunk = struct.pack(">I", len(chunk_data)) + b"iTXt" + chunk_data
    chunk += struct.pack(">I", zlib.crc32(b"iTXt" + chunk_data) & 0xFFFFFFFF)
    png = encode("PNG")
    data = png[:33] + chunk + png[33:]
    with pytest.raises(LocationStripError):
        strip_location(data, "PNG")
