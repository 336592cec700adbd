"""Scanner files for tests: DICOM written with pydicom, 16-bit TIFFs, and the DICOS samples.

The five DICOS files in ``tests/data/dicos`` are the Stratovan DICOS SDK examples (MIT, see
``tests/data/dicos/SOURCE.txt``), copied from ``../shared/data/dicos-samples``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt

DICOS_DIR = Path(__file__).resolve().parent / "data" / "dicos"
DICOS_DX_JPEG_LOSSLESS = DICOS_DIR / "SimplePresentationDX.dcs"
DICOS_DX_UNCOMPRESSED = DICOS_DIR / "SimpleProcessingDX.dcs"
DICOS_DX_PALETTE = DICOS_DIR / "SimpleColorPaletteDX.dcs"
DICOS_CT_SLICE = DICOS_DIR / "SimpleCT0000.dcs"
DICOS_TDR = DICOS_DIR / "SimpleBaggageTDR.dcs"

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"  # plain DICOM Digital X-Ray Image (for presentation)
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"  # plain DICOM CT Image


def dicom_bytes(
    pixels: npt.NDArray[np.uint16],
    *,
    photometric: str = "MONOCHROME2",
    modality: str = "DX",
    sop_class: str = DX_SOP_CLASS,
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
) -> bytes:
    """A DICOM Part 10 file (explicit VR little endian) holding ``pixels``.

    ``pixels`` is (rows, columns) or (frames, rows, columns) uint16; rescale and window tags
    are written only when given.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset("test.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = modality
    dataset.PatientName = "Bag^Test"
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        dataset.NumberOfFrames = frames
    dataset.Rows, dataset.Columns = int(pixels.shape[-2]), int(pixels.shape[-1])
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    if slope is not None:
        dataset.RescaleSlope = f"{slope:g}"
    if intercept is not None:
        dataset.RescaleIntercept = f"{intercept:g}"
    if window is not None:
        dataset.WindowCenter = f"{window[0]:g}"
        dataset.WindowWidth = f"{window[1]:g}"
    dataset.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def ramp_uint16(
    width: int = 64, height: int = 48, low: int = 1000, high: int = 3000
) -> npt.NDArray[np.uint16]:
    """A horizontal ramp from ``low`` to ``high`` (a 12-bit detector's narrow band)."""
    row = np.linspace(low, high, width).round().astype(np.uint16)
    return np.tile(row, (height, 1))


def tiff_bytes(array: npt.NDArray[np.generic], **kwargs: object) -> bytes:
    """A TIFF written by tifffile (any dtype and sample count tifffile accepts)."""
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)  # type: ignore[arg-type]
    return buffer.getvalue()
