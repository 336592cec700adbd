"""Backbone: complete key remap, heads, export wrapper, ONNX export vs PyTorch on real photos,
and ``backbone check`` on ../shared/data/imagenet-sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the backbone needs the training extras (torch)")
pytest.importorskip("timm", reason="the backbone needs the training extras (timm)")

from model.cli import main  # noqa: E402
from model.preprocess import preprocess_bytes  # noqa: E402
from training.backbone import (  # noqa: E402 - after the importorskip guards
    BACKBONE_PREPROCESS,
    FEATURE_DIM,
    BackboneError,
    ExportWrapper,
    backbone_spec,
    checkpoint_path,
    create_model,
    export_onnx,
    remap_key,
    remap_state_dict,
)
from training.cli_backbone import find_examples, spread  # noqa: E402

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def imagenet_model() -> torch.nn.Module:
    return create_model(None, pretrained=True)


def test_remap_covers_every_checkpoint_key_exactly() -> None:
    import timm

    state = torch.load(checkpoint_path(), map_location="cpu", weights_only=True)
    renamed = remap_state_dict(state)
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert len(state) == len(renamed) == 296
    assert set(renamed) == set(reference)
    for key, value in renamed.items():
        assert value.shape == reference[key].shape, key


@pytest.mark.parametrize(
    ("short", "size", "shorter", "blocks"),
    [("lite1", 240, 272, 21), ("lite2", 260, 292, 21)],
)
def test_lite1_and_lite2_load_their_own_checkpoint_strictly(
    short: str, size: int, shorter: int, blocks: int
) -> None:
    """Every tensor of the packaged checkpoint has its place in the deeper variants (their
    stage depths come from the timm model), and each keeps its own input size."""
    import timm

    spec = backbone_spec(short)
    reference = timm.create_model(spec.name, pretrained=False)
    depths = tuple(len(stage) for stage in reference.blocks)
    assert sum(depths) == blocks
    state = torch.load(checkpoint_path(spec.name), map_location="cpu", weights_only=True)
    renamed = remap_state_dict(state, depths)
    assert set(renamed) == set(reference.state_dict())
    model = create_model(3, pretrained=True, backbone=short)
    assert (spec.preprocess.input_size, spec.preprocess.resize_shorter) == (size, shorter)
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, size, size))
    assert logits.shape == (1, 3)
    with pytest.raises(BackboneError, match="unknown backbone 'lite9'"):
        backbone_spec("lite9")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("_conv_stem.weight", "conv_stem.weight"),
        ("_bn0.running_var", "bn1.running_var"),
        ("_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight"),
        ("_blocks.0._project_conv.weight", "blocks.0.0.conv_pw.weight"),
        ("_blocks.1._expand_conv.weight", "blocks.1.0.conv_pw.weight"),
        ("_blocks.2._bn1.bias", "blocks.1.1.bn2.bias"),
        ("_blocks.8._project_conv.weight", "blocks.4.0.conv_pwl.weight"),
        ("_blocks.15._bn2.weight", "blocks.6.0.bn3.weight"),
        ("_bn1.weight", "bn2.weight"),
        ("_fc.bias", "classifier.bias"),
    ],
)
def test_remap_examples(old: str, new: str) -> None:
    assert remap_key(old) == new


def test_remap_rejects_unknown_keys() -> None:
    with pytest.raises(BackboneError, match="unexpected"):
        remap_key("_blocks.3._se_reduce.weight")
    with pytest.raises(BackboneError, match="beyond"):
        remap_key("_blocks.16._bn0.weight")


def test_new_head_keeps_the_pretrained_body(imagenet_model: torch.nn.Module) -> None:
    torch.manual_seed(0)
    model = create_model(4)
    assert model.get_classifier().out_features == 4
    assert imagenet_model.get_classifier().out_features == 1000
    assert torch.equal(model.conv_head.weight, imagenet_model.conv_head.weight)
    assert not model.training
    with pytest.raises(ValueError, match="positive"):
        create_model(0, pretrained=False)


def test_export_wrapper_outputs(imagenet_model: torch.nn.Module) -> None:
    wrapper = ExportWrapper(imagenet_model).eval()
    batch = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits, features, cam = wrapper(batch)
        direct = imagenet_model(batch)
    assert features.shape == (2, FEATURE_DIM)
    assert cam.shape == (2, 1000, 7, 7)
    torch.testing.assert_close(logits, direct, atol=1e-4, rtol=0)
    torch.testing.assert_close(cam.mean(dim=(2, 3)), logits, atol=1e-4, rtol=0)


def real_batch(shared_data: Path, count: int = 8) -> tuple[np.ndarray, np.ndarray]:
    folder = shared_data / "imagenet-sample"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    examples = spread(find_examples(folder), count)
    arrays = [preprocess_bytes(p.read_bytes(), BACKBONE_PREPROCESS) for p, _ in examples]
    return np.stack(arrays), np.array([index for _, index in examples])


@pytest.mark.shared_data
def test_onnx_matches_pytorch_on_real_photos(
    imagenet_model: torch.nn.Module, shared_data: Path, tmp_path: Path
) -> None:
    import onnxruntime as ort

    images, targets = real_batch(shared_data)
    path = tmp_path / "model.onnx"
    batch = torch.from_numpy(images)
    diff = export_onnx(imagenet_model, path, check_batch=batch)
    assert diff <= 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # one file, no .data

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "features", "cam"]
    logits, features, cam = session.run(None, {"image": images})
    with torch.inference_mode():
        expected = imagenet_model(batch).numpy()
    assert float(np.max(np.abs(logits - expected))) <= 1e-4
    assert features.shape == (8, FEATURE_DIM) and cam.shape == (8, 1000, 7, 7)
    assert int(np.sum(logits.argmax(1) == targets)) >= 6  # real photos, mostly right
    # Dynamic batch axis: a batch of one works too.
    single = session.run(["logits"], {"image": images[:1]})[0]
    assert float(np.max(np.abs(single - logits[:1]))) <= 1e-4


@pytest.mark.shared_data
@pytest.mark.slow
def test_backbone_check_on_the_whole_sample(
    shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = shared_data / "imagenet-sample"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    code = main(["backbone", "check", "--data", str(folder), "--json", "--min-top1", "0.87"])
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 1000
    assert result["top1"] >= 0.87, result
    assert result["top5"] >= 0.95, result
    assert code == 0


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize("short", ["lite1", "lite2"])
def test_lite1_and_lite2_check_on_a_spread_of_the_sample(
    short: str, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """200 photos spread over the 1000 classes: a faithful load reaches 0.89 top-1 there for
    both (0.879 and 0.881 on all 1000, docs/model.md); the symmetric-padding trap loses about 8
    points, so 0.85 separates them."""
    folder = shared_data / "imagenet-sample"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    argv = ["backbone", "check", "--data", str(folder), "--backbone", short, "--limit", "200"]
    code = main([*argv, "--json", "--min-top1", "0.85"])
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 200
    assert result["top1"] >= 0.85, result
    assert code == 0


def test_backbone_check_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backbone", "check", "--data", str(tmp_path / "absent")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["backbone", "check", "--data", str(tmp_path)]) == 2
    assert "no images found" in capsys.readouterr().err
