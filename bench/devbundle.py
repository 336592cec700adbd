"""A stand-in bundle for developing the benchmarks before ``weights/default`` exists.

It has the default bundle's network (EfficientNet-Lite0 with ImageNet weights, 2-class head),
exported by :func:`training.backbone.export_onnx`, a static QDQ per-channel INT8 copy calibrated
on a few real images, and a manifest with the keys the benchmarks read. It is written with
:func:`model.bundle.write_bundle`, so the service can serve it too.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.common import CACHE_DIR
from bench.images import load_set
from model.labels import Label

logger = logging.getLogger(__name__)

DEV_BUNDLE = CACHE_DIR / "dev-bundle"

DEV_LABELS = (
    Label(0, "ivory", "Elephant ivory", "loxodonta-africana", "cites"),
    Label(1, "ceramic", "Ceramic or porcelain", "ceramic-porcelain", "lookalike"),
)


class _Reader:
    """Calibration data reader for ``onnxruntime.quantization.quantize_static``."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._iter: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {"image": batch}


def make_dev_bundle(calibration_images: int = 32) -> Path:
    """Build (once) and return a verified bundle folder with fp32 and INT8 ONNX models."""
    if (DEV_BUNDLE / "manifest.json").is_file():
        return DEV_BUNDLE
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from model.bundle import write_bundle
    from model.decision import Thresholds
    from model.preprocess import preprocess_bytes
    from training.backbone import BACKBONE_PREPROCESS, create_model, export_onnx

    scratch = DEV_BUNDLE.parent / (DEV_BUNDLE.name + ".build")
    scratch.mkdir(parents=True, exist_ok=True)
    model = create_model(2, pretrained=True)
    export_onnx(model, scratch / "model.onnx")
    images = load_set(calibration_images)
    arrays = [preprocess_bytes(im.data, BACKBONE_PREPROCESS)[None] for im in images]
    prepared = scratch / "model.pre.onnx"
    quant_pre_process(str(scratch / "model.onnx"), str(prepared))
    quantize_static(
        str(prepared),
        str(scratch / "model.int8.onnx"),
        _Reader(arrays),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    prepared.unlink()
    final = write_bundle(
        DEV_BUNDLE.parent,
        version=DEV_BUNDLE.name,
        onnx_fp32=scratch / "model.onnx",
        onnx_int8=scratch / "model.int8.onnx",
        labels=DEV_LABELS,
        preprocess=BACKBONE_PREPROCESS,
        temperature=1.0,
        thresholds=Thresholds(taxon=0.7, lookalike=0.7),
        modalities=["camera"],
        metrics={"note": "benchmark stand-in: ImageNet backbone, untrained head"},
        training={"images": 0},
        provenance={"command": "bench.devbundle.make_dev_bundle"},
        limitations=["Benchmark stand-in with an untrained head: for timing only."],
        recommended=False,
        overwrite=True,
    )
    shutil.rmtree(scratch)
    logger.info("made development bundle %s", final)
    return final
