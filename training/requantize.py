"""``cites-vision export``: (re)build a bundle's INT8 model from its fp32 model.

The fp32 ONNX file, labels, calibration and OOD model (with the output it scores) are copied
unchanged into a new bundle version (:func:`model.bundle.rewrite_bundle`); only the INT8 file is
new, and it is kept only if it passes the accuracy gate on the given labelled images.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from model.bundle import MODEL_FILES, Bundle, rewrite_bundle
from training.data import Sample
from training.evaluation import bundle_label_map
from training.export import Int8Gate, calibration_paths, export_int8
from training.inputs import load_inputs

logger = logging.getLogger(__name__)


def requantize_bundle(
    bundle: Bundle,
    calibration: Sequence[Sample],
    data: Sequence[Sample],
    *,
    out: Path,
    version: str,
    calibration_images: int = 128,
    max_drop: float = 0.01,
    command: str = "",
) -> tuple[Path, Int8Gate]:
    """Quantise ``bundle``'s fp32 model, gate it on ``data`` and write ``out/version``."""
    from training.data import encode_labels

    manifest = bundle.manifest
    label_map = bundle_label_map(bundle)
    targets = encode_labels(data, label_map)
    inputs = load_inputs([s.path for s in data], manifest.preprocess)
    fp32 = bundle.model_path("fp32")
    with tempfile.TemporaryDirectory() as tmp:
        gate = export_int8(
            fp32,
            Path(tmp),
            calibration_paths([s.path for s in calibration], calibration_images),
            manifest.preprocess,
            inputs,
            targets,
            max_drop=max_drop,
        )
        path = rewrite_bundle(
            bundle,
            Path(out),
            version,
            onnx_int8=Path(tmp) / MODEL_FILES["int8"] if gate.written else None,
            metrics={**manifest.metrics, "int8": gate.to_dict()},
            provenance={
                **manifest.provenance,
                "command": command,
                "parent_version": bundle.version,
            },
        )
    logger.info("wrote %s: %s", path, gate.reason)
    return path, gate
