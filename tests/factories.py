"""Test factories: a tiny but real bundle, built without torch, whose answers are known.

The tiny model is a genuine ONNX graph (made with ``onnx.helper``) with the bundle contract's
input and outputs, so the predictor, the CLI and the service run end to end on it:

- ``image`` [N,3,224,224] (normalised with mean = std = 0.5, so a channel at 255 is +1 and at 0
  is -1);
- a 32x32 average pool gives the 7x7 map ``pooled`` [N,3,7,7];
- ``features`` [N,3] = the spatial mean of ``pooled`` (= the per-channel mean of the image);
- ``logits`` [N,C] = ``features @ W + b``; ``W`` routes red to label 0, blue to label 1 and green
  to label 2 with weight ``scale`` (other labels get 0), ``b`` = 0;
- ``cam`` [N,C,7,7] = the 1x1 convolution of ``pooled`` with ``W`` (so its spatial mean equals
  ``logits``, as in the real export).

With the default labels and ``scale`` 4, a red image gives logits about (3.2, -4, -4): label 0
("ivory", *Loxodonta africana*, CITES) with p = 0.998; blue gives label 1 ("ceramic", a
look-alike) and green gives label 2 ("rosewood", *Dalbergia latifolia*, CITES). A magenta
image (red + blue) splits evenly between labels 0 and 1: p = 0.4997 each -> ``uncertain``.

The images of :func:`solid_image_bytes` are one colour in a fine 2x2 checker of full and 80%
intensity: a truly uniform image is refused by the quality gate (``unusable_image``) before the
model, as a blank photo must be. :func:`blank_image_bytes` makes those.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from model.bundle import MODEL_FILES, write_bundle
from model.decision import Thresholds
from model.labels import Label
from model.ood import KNN_METHOD, KnnOodModel, OodModel, fit_knn, fit_ood
from model.preprocess import PreprocessConfig

TINY_LABELS: tuple[Label, ...] = (
    Label(0, "ivory", "Elephant ivory", "loxodonta-africana", "cites"),
    Label(1, "ceramic", "Ceramic or porcelain", "ceramic-porcelain", "lookalike"),
    Label(2, "rosewood", "Indian rosewood", "dalbergia-latifolia", "cites"),
)
"""Label 0 <- red, 1 <- blue, 2 <- green."""

CHANNEL_OF_LABEL = (0, 2, 1)
"""Image channel (R=0, G=1, B=2) that drives labels 0, 1 and 2."""

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
MAGENTA = (255, 0, 255)
GRAY = (128, 128, 128)

TINY_OOD_THRESHOLD = 5.0
"""Threshold stored with the tiny OOD model: pure red/green/blue score about 1, gray far more."""


def solid_image(color: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A one-colour RGB image with a 2x2-pixel checker of full and 80% intensity, so that it
    has the detail and contrast the quality gate asks for (see the module docstring)."""
    width, height = size
    rows, cols = np.mgrid[0:height, 0:width]
    dim = (rows // 2 + cols // 2) % 2 == 1
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:] = color
    pixels[dim] = (np.asarray(color, dtype=np.float32) * 0.8).astype(np.uint8)
    return Image.fromarray(pixels)


def solid_image_bytes(
    color: tuple[int, int, int], size: tuple[int, int] = (320, 240), fmt: str = "PNG"
) -> bytes:
    """Encode :func:`solid_image` (one colour, fine checker; passes the quality gate)."""
    buffer = io.BytesIO()
    solid_image(color, size).save(buffer, format=fmt)
    return buffer.getvalue()


def blank_image_bytes(
    color: tuple[int, int, int], size: tuple[int, int] = (640, 480), fmt: str = "PNG"
) -> bytes:
    """Encode a truly uniform image (the quality gate refuses it)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def solid_array(color: tuple[int, int, int]) -> np.ndarray:
    """The model input (3, 224, 224) of :func:`solid_image` with the default preprocessing."""
    from model.preprocess import image_to_array

    return image_to_array(solid_image(color), PreprocessConfig())


def tiny_weights(num_labels: int, scale: float = 4.0) -> np.ndarray:
    """The (3, C) weight matrix of the tiny model (see the module docstring)."""
    weights = np.zeros((3, num_labels), dtype=np.float32)
    for label, channel in enumerate(CHANNEL_OF_LABEL[:num_labels]):
        weights[channel, label] = scale
    return weights


REFERENCE_SCALE = np.array([1.0, 2.0, 0.5], dtype=np.float32)
"""The tiny model's ``reference_features`` are its pooled features times this (a stand-in for
the frozen ImageNet branch of a kNN bundle: another output, scored by the kNN model)."""


def build_tiny_onnx(
    path: Path,
    num_labels: int = 3,
    *,
    scale: float = 4.0,
    size: int = 224,
    reference: bool = False,
) -> Path:
    """Write the tiny ONNX model (no torch) and return its path. ``reference`` adds the
    ``reference_features`` output (see :data:`REFERENCE_SCALE`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if size % 7:
        raise ValueError("size must be a multiple of 7 (the cam is 7x7)")
    weights = tiny_weights(num_labels, scale)
    bias = np.zeros(num_labels, dtype=np.float32)
    kernel = size // 7
    nodes = [
        helper.make_node(
            "AveragePool",
            ["image"],
            ["pooled"],
            kernel_shape=[kernel, kernel],
            strides=[kernel, kernel],
        ),
        helper.make_node("GlobalAveragePool", ["pooled"], ["pooled_mean"]),
        helper.make_node("Flatten", ["pooled_mean"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "W", "b"], ["logits"]),
        helper.make_node("Conv", ["pooled", "W_conv", "b"], ["cam"]),
    ]
    initializers = [
        numpy_helper.from_array(weights, "W"),
        numpy_helper.from_array(bias, "b"),
        numpy_helper.from_array(
            np.ascontiguousarray(weights.T.reshape(num_labels, 3, 1, 1)), "W_conv"
        ),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_labels]),
        helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 3]),
        helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["batch", num_labels, 7, 7]),
    ]
    if reference:
        nodes.append(
            helper.make_node("Mul", ["features", "reference_scale"], ["reference_features"])
        )
        initializers.append(numpy_helper.from_array(REFERENCE_SCALE, "reference_scale"))
        outputs.append(
            helper.make_tensor_value_info("reference_features", TensorProto.FLOAT, ["batch", 3])
        )
    graph = helper.make_graph(
        nodes,
        "cites_vision_tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        outputs,
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="tests.factories"
    )
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)


def tiny_ood_model() -> OodModel:
    """An OOD model fitted on jittered features of the red, blue and green test images."""
    rng = np.random.default_rng(0)
    centers = np.array([solid_array(c).mean(axis=(1, 2)) for c in (RED, BLUE, GREEN)])
    features = np.concatenate([c + rng.normal(0.0, 0.05, (40, 3)) for c in centers])
    labels = np.repeat(np.arange(3), 40)
    return fit_ood(features, labels, components=2, normalize=False)


def tiny_knn_ood_model(k: int = 3) -> KnnOodModel:
    """A kNN OOD model whose bank is the ``reference_features`` of jittered red, blue and green
    test images (:func:`model.ood.fit_knn`: L2-normalised, float16)."""
    rng = np.random.default_rng(0)
    centers = np.array([solid_array(c).mean(axis=(1, 2)) for c in (RED, BLUE, GREEN)])
    features = np.concatenate([c + rng.normal(0.0, 0.05, (20, 3)) for c in centers])
    return fit_knn(features * REFERENCE_SCALE, k=k)


def make_tiny_bundle(
    directory: Path,
    *,
    version: str = "tiny-1",
    labels: Sequence[Label] = TINY_LABELS,
    scale: float = 4.0,
    temperature: float = 1.0,
    thresholds: Thresholds | None = None,
    modalities: Sequence[str] = ("camera",),
    with_int8: bool = False,
    with_ood: bool = False,
    ood_threshold: float = 5.0,
    ood_method: str = "mahalanobis_pca",
    recommended: bool = True,
    parent_version: str | None = None,
) -> Path:
    """Write a real tiny bundle to ``directory/<version>`` and return its path.

    ``with_int8`` adds ``model.int8.onnx``: the same graph with ``scale`` halved, so tests can
    tell which file a predictor runs. ``with_ood`` adds ``ood.npz`` (see :func:`tiny_ood_model`)
    with threshold ``ood_threshold`` (default :data:`TINY_OOD_THRESHOLD`; pure magenta scores
    about 28, so a threshold of 30 keeps it in the domain). ``ood_method`` ``knn_cosine``
    makes it a kNN detector on the ``reference_features`` output instead
    (:func:`tiny_knn_ood_model`), as ``--ood-method knn-reference`` bundles have.
    """
    knn = with_ood and ood_method == KNN_METHOD
    ood_model: OodModel | KnnOodModel | None = None
    if with_ood:
        ood_model = tiny_knn_ood_model() if knn else tiny_ood_model()
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = build_tiny_onnx(Path(scratch) / "fp32.onnx", len(labels), scale=scale, reference=knn)
        int8 = (
            build_tiny_onnx(
                Path(scratch) / "int8.onnx", len(labels), scale=scale / 2, reference=knn
            )
            if with_int8
            else None
        )
        return write_bundle(
            Path(directory),
            version=version,
            onnx_fp32=fp32,
            onnx_int8=int8,
            labels=labels,
            preprocess=PreprocessConfig(),
            temperature=temperature,
            thresholds=thresholds or Thresholds(taxon=0.7, lookalike=0.7),
            modalities=modalities,
            metrics={"top1": 1.0, "note": "synthetic test bundle"},
            training={"images": 0, "label_map": {label.id: label.taxon_id for label in labels}},
            provenance={"command": "tests.factories.make_tiny_bundle", "git_commit": None},
            limitations=["Synthetic: classifies pure colours only; for tests."],
            ood=ood_model,
            ood_threshold=ood_threshold if with_ood else None,
            ood_features="reference_features" if knn else "features",
            recommended=recommended,
            parent_version=parent_version,
        )


def make_corrupt_bundle(directory: Path, *, version: str = "tiny-corrupt") -> Path:
    """A tiny bundle whose ``model.onnx`` was changed after writing (sha256 mismatch)."""
    path = make_tiny_bundle(directory, version=version)
    model = path / MODEL_FILES["fp32"]
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    return path


def make_incomplete_bundle(
    directory: Path, *, version: str = "tiny-incomplete", missing: str = "labels.tsv"
) -> Path:
    """A tiny bundle with one listed file removed (default: the labels)."""
    path = make_tiny_bundle(directory, version=version)
    (path / missing).unlink()
    return path


def copy_bundle(source: Path, directory: Path, version: str) -> Path:
    """Copy a bundle folder to ``directory/version`` (manifest unchanged) for tampering tests."""
    target = Path(directory) / version
    shutil.copytree(source, target)
    return target
