"""The frozen reference backbone grafted into a bundle's ONNX graph: same input, one more output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.backbone import add_reference_branch, create_model, export_onnx


@pytest.mark.slow
def test_reference_branch_outputs_the_frozen_backbone_features_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    tuned = create_model(3, pretrained=False)
    reference = create_model(3, pretrained=False)  # other random weights: must not be mixed up
    plain = tmp_path / "plain.onnx"
    export_onnx(tuned, plain, input_size=64)
    grafted = add_reference_branch(plain, reference, tmp_path / "model.onnx", input_size=64)

    batch = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    before = ort.InferenceSession(str(plain), options, providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(str(grafted), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in after.get_outputs()]
    assert names == ["logits", "features", "cam", "reference_features"]
    logits, features, cam, reference_features = after.run(names, {"image": batch.numpy()})
    old_logits, old_features, old_cam = before.run(
        ["logits", "features", "cam"], {"image": batch.numpy()}
    )
    np.testing.assert_allclose(logits, old_logits, atol=1e-5)
    np.testing.assert_allclose(features, old_features, atol=1e-5)
    np.testing.assert_allclose(cam, old_cam, atol=1e-5)
    with torch.no_grad():
        expected = reference.eval().forward_features(batch).mean(dim=(2, 3)).numpy()
        tuned_features = tuned.eval().forward_features(batch).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(reference_features, expected, atol=1e-4)
    assert not np.allclose(reference_features, tuned_features, atol=1e-3)
