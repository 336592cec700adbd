"""Export gates: fp32 must agree with PyTorch on every top-1; INT8 may lose at most 1 point.

Both gates run on the tiny ONNX model of ``tests.factories`` (pure colours -> labels), so no
backbone export is needed: fast enough for every CI run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model.preprocess import PreprocessConfig  # noqa: E402
from tests.factories import build_tiny_onnx, tiny_weights  # noqa: E402
from training import export as ex  # noqa: E402

pytestmark = [pytest.mark.train]


class TinyTorch(torch.nn.Module):
    """The tiny ONNX model in PyTorch: logits = channel means @ W (optionally negated)."""

    def __init__(self, sign: float = 1.0) -> None:
        super().__init__()
        self.weight = torch.from_numpy(tiny_weights(3)) * sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) @ self.weight


def _inputs(n_per_class: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for label, channel in enumerate((0, 2, 1)):
        for _ in range(n_per_class):
            x = rng.uniform(-1.0, -0.2, (3, 224, 224)).astype(np.float32)
            x[channel] = rng.uniform(0.2, 1.0)
            images.append(x)
            targets.append(label)
    return np.stack(images), np.array(targets)


def _png_folder(root: Path) -> list[Path]:
    from PIL import Image

    paths = []
    for i, colour in enumerate([(250, 10, 10), (10, 10, 250), (10, 250, 10)] * 2):
        path = root / f"{i}.png"
        Image.new("RGB", (32, 32), colour).save(path)
        paths.append(path)
    return paths


def test_fp32_gate_passes_when_top1_agrees(tmp_path: Path) -> None:
    onnx_path = build_tiny_onnx(tmp_path / "m.onnx")
    inputs, _ = _inputs()
    check = ex.check_fp32(TinyTorch(), onnx_path, inputs)
    assert check.disagreements == 0 and check.top1_agreement == 1.0
    assert check.max_abs_logit_diff < 1e-4


def test_fp32_gate_refuses_a_disagreeing_export(tmp_path: Path) -> None:
    onnx_path = build_tiny_onnx(tmp_path / "m.onnx")
    inputs, _ = _inputs()
    with pytest.raises(ex.ExportError, match="disagree on the top-1 of 12 of 12"):
        ex.check_fp32(TinyTorch(sign=-1.0), onnx_path, inputs)


class NearTie(TinyTorch):
    """TinyTorch whose first image has its two top logits 0.01 apart, in the other order than
    the export's: a near-tie that rounding may decide either way."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        first = logits[0].clone()
        top = int(first.argmax())
        second = int(first.argsort(descending=True)[1])
        first[second] = first[top] + 0.01
        return torch.cat([first[None], logits[1:]])


def test_fp32_gate_tolerates_a_near_tie_only(tmp_path: Path) -> None:
    onnx_path = build_tiny_onnx(tmp_path / "m.onnx")
    inputs, _ = _inputs()
    check = ex.check_fp32(NearTie(), onnx_path, inputs)
    assert (check.disagreements, check.ties) == (1, 1)
    assert check.top1_agreement == pytest.approx(11 / 12)


def test_int8_gate_rule_both_ways() -> None:
    ok = ex.int8_gate(0.90, 0.895, images=200, calibration_images=10)
    assert ok.written and "drop 0.50 points" in ok.reason
    bad = ex.int8_gate(0.90, 0.885, images=200, calibration_images=10)
    assert not bad.written and bad.reason.startswith("INT8 file not written")
    edge = ex.int8_gate(0.90, 0.89, images=200, calibration_images=10)
    assert edge.written  # exactly one point is allowed


def test_int8_export_keeps_a_good_model_and_deletes_a_failing_one(tmp_path: Path) -> None:
    fp32 = build_tiny_onnx(tmp_path / "m.onnx")
    calibration = _png_folder(tmp_path)
    inputs, targets = _inputs()
    (tmp_path / "ok").mkdir()
    kept = ex.export_int8(fp32, tmp_path / "ok", calibration, PreprocessConfig(), inputs, targets)
    assert kept.written
    assert (tmp_path / "ok" / ex.INT8_FILE).is_file()
    assert kept.int8_accuracy >= kept.fp32_accuracy - 0.01
    # the judged model's validation logits come back for calibration, but not into the manifest
    assert kept.val_logits is not None and kept.val_logits.shape[0] == len(inputs)
    int8_logits, _ = ex.onnx_outputs(tmp_path / "ok" / ex.INT8_FILE, inputs)
    np.testing.assert_array_equal(kept.val_logits, int8_logits)
    assert "val_logits" not in kept.to_dict()
    # A fake requirement that INT8 be 50 points better than fp32 forces the failure path.
    (tmp_path / "bad").mkdir()
    refused = ex.export_int8(
        fp32, tmp_path / "bad", calibration, PreprocessConfig(), inputs, targets, max_drop=-0.5
    )
    assert not refused.written
    assert not (tmp_path / "bad" / ex.INT8_FILE).exists()
    assert "not written" in refused.reason


def test_quantize_int8_can_leave_the_leading_convolutions_in_fp32(tmp_path: Path) -> None:
    import onnx

    fp32 = build_tiny_onnx(tmp_path / "m.onnx")
    convs = ex.leading_convs(fp32, 10)
    assert len(convs) == 1
    calibration = _png_folder(tmp_path)
    quantised = ex.quantize_int8(fp32, tmp_path / "all.onnx", calibration, PreprocessConfig())
    kept = ex.quantize_int8(
        fp32, tmp_path / "kept.onnx", calibration, PreprocessConfig(), fp32_leading_convs=1
    )
    assert quantised == [] and kept == convs

    def conv_inputs_dequantised(path: Path) -> bool:
        graph = onnx.load(str(path)).graph
        producers = {out: node.op_type for node in graph.node for out in node.output}
        conv = next(node for node in graph.node if node.op_type == "Conv")
        return any(producers.get(name) == "DequantizeLinear" for name in conv.input)

    assert conv_inputs_dequantised(tmp_path / "all.onnx")
    assert not conv_inputs_dequantised(tmp_path / "kept.onnx")


def test_leading_convolutions_are_taken_from_each_branch(tmp_path: Path) -> None:
    """A kNN bundle's graph holds the frozen reference branch first: the classifier's own first
    convolutions must be among those kept in fp32, not only the reference branch's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from training.backbone import REFERENCE_PREFIX

    weight = numpy_helper.from_array(np.ones((3, 3, 1, 1), dtype=np.float32), "w")
    names = [f"{REFERENCE_PREFIX}conv_a", f"{REFERENCE_PREFIX}conv_b", "conv_a", "conv_b"]
    nodes, previous = [], "image"
    for index, name in enumerate(names):
        source = "image" if index in (0, 2) else previous
        previous = f"out_{index}"
        nodes.append(helper.make_node("Conv", [source, "w"], [previous], name=name))
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])
    outputs = [
        helper.make_tensor_value_info(f"out_{i}", TensorProto.FLOAT, [1, 3, 4, 4]) for i in (1, 3)
    ]
    graph = helper.make_graph(nodes, "two_branches", [image], outputs, [weight])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert ex.leading_convs(path, 1) == ["conv_a", f"{REFERENCE_PREFIX}conv_a"]
    assert sorted(ex.leading_convs(path, 5)) == sorted(names)


def test_int8_export_keeps_leading_convolutions_fp32_until_the_gate_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in quantiser whose fully quantised model is wrong (negated weights) and whose
    model with the first convolution in fp32 is right: the second one is kept, and both
    attempts are recorded."""
    fp32 = build_tiny_onnx(tmp_path / "m.onnx")
    inputs, targets = _inputs()
    tried: list[int] = []

    def fake_quantize(
        fp32_path: Path,
        out_path: Path,
        paths: object,
        config: object,
        *,
        fp32_leading_convs: int = 0,
    ) -> list[str]:
        tried.append(fp32_leading_convs)
        build_tiny_onnx(out_path, scale=4.0 if fp32_leading_convs else -4.0)
        return ex.leading_convs(fp32_path, fp32_leading_convs)

    monkeypatch.setattr(ex, "quantize_int8", fake_quantize)
    (tmp_path / "out").mkdir()
    gate = ex.export_int8(fp32, tmp_path / "out", [], PreprocessConfig(), inputs, targets)
    assert tried == [0, 1]  # the tiny model has one convolution: steps 3, 5, 8 are the same
    assert gate.written and (tmp_path / "out" / ex.INT8_FILE).is_file()
    assert gate.fp32_nodes == tuple(ex.leading_convs(fp32, 1))
    assert [a["fp32_leading_convs"] for a in gate.attempts] == [0, 1]
    assert gate.attempts[0]["int8_accuracy"] < 0.5 and gate.int8_accuracy == 1.0
    assert "1 leading convolution(s) kept fp32" in gate.reason
    assert gate.to_dict()["attempts"]


def test_export_command_adds_a_gated_int8_model_to_a_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from model.bundle import load_bundle
    from model.cli import main
    from tests.factories import make_tiny_bundle

    source = make_tiny_bundle(tmp_path / "weights", version="tiny-fp32")
    for label, colour in (
        ("ivory", (250, 0, 0)),
        ("ceramic", (0, 0, 250)),
        ("rosewood", (0, 250, 0)),
    ):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (30, 20), (colour[0], colour[1] + i, colour[2])).save(
                tmp_path / "data" / label / f"{i}.png"
            )
    code = main(
        [
            "export",
            "--bundle",
            str(source),
            "--calibration",
            str(tmp_path / "data"),
            "--data",
            str(tmp_path / "data"),
            "--version",
            "tiny-int8",
            "--out",
            str(tmp_path / "weights"),
        ]
    )
    assert code == 0
    assert "INT8 validation accuracy" in capsys.readouterr().out
    bundle = load_bundle(tmp_path / "weights" / "tiny-int8")
    assert bundle.has_int8
    assert bundle.manifest.metrics["int8"]["written"] is True
    assert bundle.manifest.provenance["parent_version"] == "tiny-fp32"


def _conv_model(path: Path) -> Path:
    """A small graph whose weights are large enough to be stored as float16: a 3->64 3x3
    convolution, global pooling and a 64->3 linear layer, with outputs logits and features."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    initializers = [
        numpy_helper.from_array(rng.normal(0, 0.3, (64, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(np.zeros(64, dtype=np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 0.3, (64, 3)).astype(np.float32) * 10, "fc_w"),
        numpy_helper.from_array(np.zeros(3, dtype=np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_model",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 64]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_fp32_weights_stored_as_float16_answer_the_same_and_quantise(tmp_path: Path) -> None:
    """A two-backbone bundle's fp32 file keeps its weights as float16: half the bytes of the
    large weights, the same top-1 and near-identical logits, and it still quantises (the
    quantiser gets float32 weights back)."""
    import onnx

    full = _conv_model(tmp_path / "full.onnx")
    compact = tmp_path / "compact.onnx"
    inputs, _ = _inputs()
    storage = ex.store_fp32_compactly(full, compact, inputs)
    assert storage.weights == "float16" and storage.initializers == 1  # conv_w: 1728 values
    assert storage.top1_agreement == 1.0 and storage.max_abs_logit_diff < 0.05
    stored = {i.name: i.data_type for i in onnx.load(str(compact)).graph.initializer}
    assert stored["conv_w" + ex.FLOAT16_SUFFIX] == onnx.TensorProto.FLOAT16
    assert stored["fc_w"] == onnx.TensorProto.FLOAT  # 192 values: below the minimum
    assert ex.store_weights_float16(compact, tmp_path / "again.onnx") == 0  # already stored
    restored = tmp_path / "restored.onnx"
    assert ex.restore_weights_float32(compact, restored) == 1
    weights = {i.name: i for i in onnx.load(str(restored)).graph.initializer}
    assert weights["conv_w"].data_type == onnx.TensorProto.FLOAT
    assert not any(n.op_type == "Cast" for n in onnx.load(str(restored)).graph.node)
    int8 = tmp_path / "int8.onnx"
    ex.quantize_int8(compact, int8, _png_folder(tmp_path), PreprocessConfig())
    graph = onnx.load(str(int8)).graph
    assert any(n.op_type == "DequantizeLinear" and "conv_w" in n.input[0] for n in graph.node)
    logits, _ = ex.onnx_outputs(int8, inputs)
    reference, _ = ex.onnx_outputs(full, inputs)
    assert np.mean(logits.argmax(1) == reference.argmax(1)) >= 0.9


def test_the_fp32_file_check_refuses_a_changed_answer(tmp_path: Path) -> None:
    full = _conv_model(tmp_path / "full.onnx")
    wrong = build_tiny_onnx(tmp_path / "wrong.onnx", scale=-4.0)
    inputs, _ = _inputs()
    with pytest.raises(ex.ExportError, match="disagree"):
        ex.check_fp32(full, wrong, inputs)
