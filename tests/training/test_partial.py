"""``last`` mode: the cached-trunk split computes exactly what the whole model computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from training import partial  # noqa: E402
from training.backbone import ExportWrapper, create_model  # noqa: E402

pytestmark = [pytest.mark.train]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(3, pretrained=False).eval()


def test_trunk_plus_top_equals_the_whole_model(model: torch.nn.Module) -> None:
    images = torch.randn(4, 3, 224, 224)
    split = partial.split_index(model, 1)
    maps = partial.trunk(model, images, split)
    assert tuple(maps.shape) == (4, 192, 7, 7)
    with torch.no_grad():
        logits, features, _ = ExportWrapper(model)(images)
        top = partial.top_logits(model, maps, split)
    assert torch.allclose(top, logits, atol=1e-4)
    got = partial.features_from_maps(model, maps, split)
    assert np.allclose(got, features.numpy(), atol=1e-4)


def test_last_stage_training_moves_only_the_top_and_keeps_the_best_epoch(
    model: torch.nn.Module, tmp_path: Path
) -> None:
    split = partial.split_index(model, 1)
    stem_before = model.conv_stem.weight.detach().clone()
    head_before = model.get_classifier().weight.detach().clone()
    torch.manual_seed(1)
    views = torch.randn(2, 12, 192, 7, 7).half()
    targets = np.arange(12) % 3
    result = partial.train_last_stage(
        model,
        views,
        targets,
        views[0][:6],
        targets[:6],
        split,
        epochs=2,
        lr=1e-3,
        weight_decay=0.0,
        batch_size=4,
        class_weights=None,
        checkpoint=tmp_path / "c.pt",
    )
    assert len(result.history) == 2 and result.best_epoch in (1, 2)
    assert torch.equal(model.conv_stem.weight, stem_before)
    assert not torch.equal(model.get_classifier().weight, head_before)
    assert (tmp_path / "c.pt").is_file()
    trained = model.get_classifier().weight.detach().clone()
    resumed = partial.train_last_stage(
        model,
        views,
        targets,
        views[0][:6],
        targets[:6],
        split,
        epochs=2,
        lr=1e-3,
        weight_decay=0.0,
        batch_size=4,
        class_weights=None,
        checkpoint=tmp_path / "c.pt",
        resume=True,
    )  # the checkpoint is complete: nothing left to train, the best epoch is restored
    assert resumed.history == result.history
    assert torch.equal(model.get_classifier().weight, trained)
    with pytest.raises(ValueError, match="made for 2 epochs"):
        partial.train_last_stage(
            model,
            views,
            targets,
            views[0][:6],
            targets[:6],
            split,
            epochs=5,
            lr=1e-3,
            weight_decay=0.0,
            batch_size=4,
            class_weights=None,
            checkpoint=tmp_path / "c.pt",
            resume=True,
        )
    with pytest.raises(ValueError, match="trained_stages"):
        partial.split_index(model, 0)
