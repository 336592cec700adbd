"""Export a trained model to ONNX (fp32 and static INT8) and check both against PyTorch.

Gates (both on the validation split):
- fp32: every top-1 of ONNX Runtime equals PyTorch's; otherwise export fails.
- INT8 (static QDQ, per-channel, MinMax calibration on training images, from the default dynamo
  exporter, which ``../shared/reference/backbone.md`` found keeps accuracy; dynamic quantisation
  is slow and is not used): accuracy may drop at most ``max_drop`` (1 point) below fp32. When the
  fully quantised model fails, the first convolutions (the stem and the first blocks, where
  3-channel images and few channels make 8-bit ranges coarsest) are kept in fp32, one step of
  :data:`FP32_LEADING_CONVS` at a time, until the gate passes (the accuracy and speed of each
  step on the default model are in ``docs/training.md``). If no step passes, the INT8 file is
  deleted and the reason is recorded.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from tqdm import tqdm

from model.preprocess import PreprocessConfig
from training.inputs import batches, load_inputs

logger = logging.getLogger(__name__)

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
DEFAULT_MAX_DROP = 0.01
FP32_LEADING_CONVS: tuple[int, ...] = (0, 1, 3, 5, 8)
"""How many leading Conv nodes stay fp32, tried in this order until the INT8 gate passes."""


class ExportError(RuntimeError):
    """The exported model disagrees with PyTorch; nothing may be shipped."""


@dataclass(frozen=True)
class Fp32Check:
    """fp32 ONNX Runtime vs PyTorch on the validation images. ``ties``: top-1 differences on
    images whose reference logits of the two classes are within :data:`TIE_MARGIN` (rounding
    decides those; they are counted in ``disagreements`` but do not fail the gate)."""

    images: int
    top1_agreement: float
    disagreements: int
    max_abs_logit_diff: float
    ties: int = 0


TIE_MARGIN = 0.05
"""Logits this close in the reference model are a tie: an export may order them either way."""


@dataclass(frozen=True)
class Int8Gate:
    """The INT8 accuracy gate: whether the INT8 file was kept, and why."""

    written: bool
    fp32_accuracy: float
    int8_accuracy: float
    drop: float
    max_drop: float
    images: int
    calibration_images: int
    reason: str
    fp32_nodes: tuple[str, ...] = ()
    """Nodes left in fp32 (the leading convolutions) in the model that was judged."""
    attempts: tuple[dict[str, object], ...] = ()
    """Every quantisation tried: ``{"fp32_leading_convs": k, "int8_accuracy": a}``."""
    val_logits: NDArray[np.float32] | None = field(default=None, repr=False, compare=False)
    """Logits of the judged INT8 model on the validation inputs (for calibrating the served
    model without running it again); not part of :meth:`to_dict`."""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form for the manifest and reports."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "val_logits"}


def session(path: Path, threads: int | None = None) -> object:
    """An ONNX Runtime CPU session for ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_outputs(
    path: Path, inputs: NDArray[np.float32], *, batch_size: int = 32
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """``(logits, features)`` of an ONNX file on preprocessed inputs."""
    sess = session(path)
    logits, features = [], []
    for start in range(0, len(inputs), batch_size):
        out = sess.run(["logits", "features"], {"image": inputs[start : start + batch_size]})  # type: ignore[attr-defined]
        logits.append(out[0])
        features.append(out[1])
    return np.concatenate(logits), np.concatenate(features)


@torch.no_grad()
def torch_logits(
    model: nn.Module, inputs: NDArray[np.float32], batch_size: int = 32
) -> NDArray[np.float32]:
    """PyTorch logits of ``model`` (eval mode) on preprocessed inputs."""
    model.eval()
    chunks = [
        model(
            torch.from_numpy(inputs[s : s + batch_size]).contiguous(
                memory_format=torch.channels_last
            )
        )
        for s in range(0, len(inputs), batch_size)
    ]
    return torch.cat(chunks).numpy()


def model_input_size(example: NDArray[np.float32] | None) -> int:
    """The side of the square inputs in ``example`` (224 when there is none)."""
    return 224 if example is None else int(example.shape[-1])


def export_fp32(
    model: nn.Module,
    folder: Path,
    example: NDArray[np.float32] | None = None,
    reference: nn.Module | None = None,
) -> Path:
    """Write ``folder/model.onnx`` with :func:`training.backbone.export_onnx` (checked on a batch);
    with ``reference`` (the frozen pretrained backbone) the file also outputs
    ``reference_features``."""
    from training.backbone import export_onnx

    path = Path(folder) / FP32_FILE
    check = None if example is None else torch.from_numpy(example[:4].copy())
    model = model.eval().to(memory_format=torch.contiguous_format)
    diff = export_onnx(model, path, check_batch=check)
    if reference is not None:
        from training.backbone import add_reference_branch

        plain = path.with_name("model.plain.onnx")
        path.replace(plain)
        add_reference_branch(plain, reference, path, input_size=model_input_size(example))
        plain.unlink()
    logger.info("fp32 export: max |logit diff| on the check batch %.2e", diff)
    return path


def check_fp32(model: nn.Module | Path, onnx_path: Path, inputs: NDArray[np.float32]) -> Fp32Check:
    """Compare top-1 of ONNX Runtime on ``onnx_path`` with ``model`` (a PyTorch model, or the
    ONNX file it was derived from) on ``inputs``; :class:`ExportError` on any disagreement
    except near-ties (the reference's two logits within :data:`TIE_MARGIN`)."""
    if isinstance(model, Path):
        expected, _ = onnx_outputs(model, inputs)
    else:
        expected = torch_logits(model, inputs)
    got, _ = onnx_outputs(onnx_path, inputs)
    reference_top, export_top = expected.argmax(1), got.argmax(1)
    agree = reference_top == export_top
    rows = np.arange(len(inputs))
    margin = expected[rows, reference_top] - expected[rows, export_top]
    ties = ~agree & (margin <= TIE_MARGIN)
    result = Fp32Check(
        images=len(inputs),
        top1_agreement=float(agree.mean()) if len(inputs) else 1.0,
        disagreements=int((~agree).sum()),
        max_abs_logit_diff=float(np.max(np.abs(expected - got))) if len(inputs) else 0.0,
        ties=int(ties.sum()),
    )
    logger.info("fp32 gate: %s", result)
    if result.disagreements > result.ties:
        raise ExportError(
            f"ONNX fp32 and PyTorch disagree on the top-1 of {result.disagreements} of "
            f"{result.images} validation images, {result.disagreements - result.ties} of them "
            f"not near-ties (max |logit diff| {result.max_abs_logit_diff:.2e})"
        )
    return result


FLOAT16_SUFFIX = "/float16"
"""Suffix of an initializer stored as float16 by :func:`store_weights_float16`."""
FLOAT16_MIN_ELEMENTS = 1024
"""Smaller initializers (biases, scales) stay float32: they weigh nothing."""


@dataclass(frozen=True)
class Fp32Storage:
    """How the fp32 file's weights are stored, and what that changed on the validation images.

    A two-backbone bundle (``--ood-method knn-reference``) would not fit the bundle budget with
    both model files; storing the fp32 file's weights as float16 (cast back to float32 when ONNX
    Runtime loads the graph: the arithmetic stays float32) halves that file, and the checks
    below bound the cost (figures: docs/training.md).
    """

    weights: str
    initializers: int
    bytes_before: int
    bytes_after: int
    top1_agreement: float
    max_abs_logit_diff: float


def store_weights_float16(onnx_path: Path, out_path: Path) -> int:
    """Write ``out_path``: ``onnx_path`` with each float32 initializer of at least
    :data:`FLOAT16_MIN_ELEMENTS` values stored as float16 and cast back to float32 by a ``Cast``
    node at the head of the graph. Returns how many initializers were converted (0 for a graph
    already stored so: the file is then copied unchanged)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    initializers = []
    casts = []
    for initializer in graph.initializer:
        size = int(np.prod(initializer.dims)) if initializer.dims else 1
        if initializer.data_type != TensorProto.FLOAT or size < FLOAT16_MIN_ELEMENTS:
            initializers.append(initializer)
            continue
        stored = initializer.name + FLOAT16_SUFFIX
        values = numpy_helper.to_array(initializer).astype(np.float16)
        initializers.append(numpy_helper.from_array(values, stored))
        casts.append(
            helper.make_node(
                "Cast", [stored], [initializer.name], to=TensorProto.FLOAT, name=stored + "/cast"
            )
        )
    if casts:
        del graph.initializer[:]
        graph.initializer.extend(initializers)
        nodes = [*casts, *graph.node]
        del graph.node[:]
        graph.node.extend(nodes)
    onnx.save(model, str(out_path))
    return len(casts)


def restore_weights_float32(onnx_path: Path, out_path: Path) -> int:
    """The inverse of :func:`store_weights_float16`: float32 initializers again, the casts
    removed (the quantiser needs the weights as initializers). Returns how many were restored
    (0 for a graph stored in float32: the file is then copied unchanged)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    stored = {i.name: i for i in graph.initializer if i.name.endswith(FLOAT16_SUFFIX)}
    casts = [
        node
        for node in graph.node
        if node.op_type == "Cast" and len(node.input) == 1 and node.input[0] in stored
    ]
    if casts:
        restored = {
            cast.output[0]: numpy_helper.from_array(
                numpy_helper.to_array(stored[cast.input[0]]).astype(np.float32), cast.output[0]
            )
            for cast in casts
        }
        initializers = [i for i in graph.initializer if i.name not in stored]
        del graph.initializer[:]
        graph.initializer.extend([*initializers, *restored.values()])
        nodes = [node for node in graph.node if node not in casts]
        del graph.node[:]
        graph.node.extend(nodes)
    onnx.save(model, str(out_path))
    return len(casts)


@contextmanager
def float32_weights(onnx_path: Path) -> Iterator[Path]:
    """``onnx_path`` itself when its weights are float32; else, for the life of the context, a
    temporary copy with them restored (:func:`restore_weights_float32`)."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    if not any(i.name.endswith(FLOAT16_SUFFIX) for i in graph.initializer):
        yield onnx_path
        return
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "float32-weights.onnx"
        restore_weights_float32(onnx_path, full)
        yield full


def store_fp32_compactly(
    fp32_path: Path, out_path: Path, inputs: NDArray[np.float32]
) -> Fp32Storage:
    """Store ``fp32_path`` with float16 weights at ``out_path`` and check it against the
    float32-weight graph on ``inputs``: :class:`ExportError` when any top-1 changes."""
    with float32_weights(fp32_path) as full:
        converted = store_weights_float16(full, out_path)
        check = check_fp32(full, out_path, inputs)
        before = full.stat().st_size
    storage = Fp32Storage(
        "float16",
        converted,
        before,
        out_path.stat().st_size,
        check.top1_agreement,
        check.max_abs_logit_diff,
    )
    logger.info("fp32 file stored with float16 weights: %s", storage)
    return storage


class _Reader:
    """Calibration batches for ``quantize_static`` (decoded lazily, with a progress bar)."""

    def __init__(self, paths: Sequence[Path], config: PreprocessConfig, batch_size: int) -> None:
        self._batches: Iterator[Sequence[Path]] = iter(list(batches(list(paths), batch_size)))
        self._config = config
        self._bar = tqdm(total=len(paths), desc="int8 calibration", unit="img", dynamic_ncols=True)

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        chunk = next(self._batches, None)
        if chunk is None:
            self._bar.close()
            return None
        self._bar.update(len(chunk))
        return {"image": load_inputs(chunk, self._config)}


def calibration_paths(paths: Sequence[Path], count: int, seed: int = 0) -> list[Path]:
    """A deterministic sample of ``count`` training images for INT8 calibration."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))[: min(count, len(paths))]
    return [paths[i] for i in sorted(order)]


def leading_convs(onnx_path: Path, count: int) -> list[str]:
    """Names of the first ``count`` Conv nodes of each branch of the graph, in its (topological)
    order: of the classifier, and of the frozen reference branch when the graph has one
    (:func:`training.backbone.add_reference_branch`, whose nodes come first in the graph; keeping
    only its convolutions in fp32 would leave the classifier's first layers quantised)."""
    import onnx

    from training.backbone import REFERENCE_PREFIX

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    convs = [node.name for node in graph.node if node.op_type == "Conv"]
    classifier = [name for name in convs if not name.startswith(REFERENCE_PREFIX)][:count]
    reference = [name for name in convs if name.startswith(REFERENCE_PREFIX)][:count]
    return classifier + reference


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    paths: Sequence[Path],
    config: PreprocessConfig,
    *,
    fp32_leading_convs: int = 0,
) -> list[str]:
    """Static INT8 QDQ: per-channel signed weights, unsigned activations (the U8S8 form x86
    runs fastest) with MinMax ranges calibrated on ``paths``; the first ``fp32_leading_convs``
    convolutions stay fp32. Returns the names of the nodes left in fp32. Unsigned activations
    kept more accuracy than signed ones (``docs/training.md``)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # the quantiser logs every rescaled channel on the root logger
    try:
        # the quantiser needs the weights as float32 initializers
        with tempfile.TemporaryDirectory() as tmp, float32_weights(fp32_path) as full:
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(full), str(prepared))
            excluded = leading_convs(prepared, fp32_leading_convs)
            quantize_static(
                str(prepared),
                str(out_path),
                _Reader(paths, config, batch_size=16),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=excluded,
            )
    finally:
        root.setLevel(level)
    logger.info(
        "wrote %s (%.1f MB, %d leading convolutions fp32)",
        out_path,
        out_path.stat().st_size / 1e6,
        len(excluded),
    )
    return excluded


def int8_gate(
    fp32_accuracy: float,
    int8_accuracy: float,
    *,
    images: int,
    calibration_images: int,
    max_drop: float = DEFAULT_MAX_DROP,
) -> Int8Gate:
    """Decide whether the INT8 model may ship: accuracy drop at most ``max_drop``."""
    drop = fp32_accuracy - int8_accuracy
    written = drop <= max_drop + 1e-12
    reason = (
        f"INT8 validation accuracy {int8_accuracy:.4f} vs fp32 {fp32_accuracy:.4f} "
        f"(drop {drop * 100:.2f} points, limit {max_drop * 100:.2f})"
    )
    if not written:
        reason = "INT8 file not written: " + reason
    return Int8Gate(
        written, fp32_accuracy, int8_accuracy, drop, max_drop, images, calibration_images, reason
    )


def _accuracy(logits: NDArray[np.float32], targets: NDArray[np.int64]) -> float:
    return float(np.mean(logits.argmax(1) == targets)) if len(targets) else 0.0


def export_int8(
    fp32_path: Path,
    folder: Path,
    calibration: Sequence[Path],
    config: PreprocessConfig,
    val_inputs: NDArray[np.float32],
    val_targets: NDArray[np.int64],
    *,
    max_drop: float = DEFAULT_MAX_DROP,
    fp32_leading_steps: Sequence[int] = FP32_LEADING_CONVS,
) -> Int8Gate:
    """Quantise, then keep ``folder/model.int8.onnx`` only if it passes :func:`int8_gate`.

    Each step of ``fp32_leading_steps`` (leading convolutions kept fp32) is tried in turn until
    one passes; the first passing model is kept (the fastest: fewest fp32 layers). The steps
    are chosen on the validation images given here, as everything else is."""
    out = Path(folder) / INT8_FILE
    fp32_logits, _ = onnx_outputs(fp32_path, val_inputs)
    targets = np.asarray(val_targets)
    fp32_accuracy = _accuracy(fp32_logits, targets)
    attempts: list[dict[str, object]] = []
    gate: Int8Gate | None = None
    convs = len(leading_convs(fp32_path, 1 << 30))
    steps = list(dict.fromkeys(min(step, convs) for step in fp32_leading_steps)) or [0]
    with float32_weights(fp32_path) as source:  # restored once for every attempt
        for step in steps:
            excluded = quantize_int8(source, out, calibration, config, fp32_leading_convs=step)
            int8_logits, _ = onnx_outputs(out, val_inputs)
            int8_accuracy = _accuracy(int8_logits, targets)
            attempts.append({"fp32_leading_convs": step, "int8_accuracy": int8_accuracy})
            gate = int8_gate(
                fp32_accuracy,
                int8_accuracy,
                images=len(targets),
                calibration_images=len(calibration),
                max_drop=max_drop,
            )
            gate = replace(
                gate, fp32_nodes=tuple(excluded), attempts=tuple(attempts), val_logits=int8_logits
            )
            if gate.written:
                break
            logger.info("INT8 with %d leading convolutions fp32: %s", len(excluded), gate.reason)
    if gate is None:  # pragma: no cover - steps is never empty
        raise RuntimeError("no INT8 quantisation was tried")
    if gate.fp32_nodes:
        gate = replace(
            gate,
            reason=f"{gate.reason}; {len(gate.fp32_nodes)} leading convolution(s) kept fp32",
        )
    if not gate.written:
        out.unlink()
        logger.warning("%s (tried %d quantisations)", gate.reason, len(attempts))
    else:
        logger.info("INT8 gate passed: %s", gate.reason)
    return gate
