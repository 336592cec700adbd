"""Augmentation presets: camera and x-ray recipes produce model-ready tensors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from model.preprocess import PreprocessConfig  # noqa: E402
from training.augment import (  # noqa: E402
    CAMERA,
    PHONE,
    PRESETS,
    XRAY,
    XRAY_PSEUDOCOLOUR,
    GaussianNoise,
    PhoneCapture,
    RandomGamma,
    preset_for,
    surface,
)


def _photo() -> Image.Image:
    image = Image.new("RGB", (120, 90), (200, 120, 40))
    image.paste((20, 60, 200), (10, 10, 60, 50))
    return image


def test_presets_are_named_and_looked_up() -> None:
    assert set(PRESETS) == {"camera", "phone", "xray", "xray-pseudocolour"}
    assert preset_for("xray") is XRAY
    with pytest.raises(KeyError, match="choose camera, phone, xray"):
        preset_for("infrared")


@pytest.mark.parametrize("preset", [CAMERA, PHONE, XRAY, XRAY_PSEUDOCOLOUR])
def test_preset_output_matches_the_model_input(preset: object) -> None:
    config = PreprocessConfig()
    transform = preset.build(config)  # type: ignore[attr-defined]
    torch.manual_seed(0)
    out = transform(_photo())
    assert out.shape == (3, config.input_size, config.input_size)
    assert out.dtype == torch.float32
    # normalised with mean = std = 0.5: values lie in [-1, 1]
    assert float(out.min()) >= -1.0 - 1e-5 and float(out.max()) <= 1.0 + 1e-5


def test_xray_preset_is_grayscale_and_random() -> None:
    transform = XRAY.build(PreprocessConfig())
    torch.manual_seed(1)
    first = transform(_photo())
    # gray before the per-channel noise (std at most 0.05 of the range): channels nearly equal
    assert float((first[0] - first[1]).abs().mean()) < 0.1
    assert float((first[1] - first[2]).abs().mean()) < 0.1
    second = transform(_photo())
    assert not torch.equal(first, second)


def test_gamma_and_noise_steps() -> None:
    image = torch.full((3, 4, 4), 0.25)
    assert torch.allclose(RandomGamma((2.0, 2.0))(image), torch.full((3, 4, 4), 0.0625))
    torch.manual_seed(0)
    noisy = GaussianNoise(0.5)(image)
    assert float(noisy.min()) >= 0.0 and float(noisy.max()) <= 1.0
    assert not torch.equal(noisy, image)


def test_xray_pseudocolour_preset_keeps_colour() -> None:
    transform = XRAY_PSEUDOCOLOUR.build(PreprocessConfig(crop="squash"))
    torch.manual_seed(2)
    out = transform(Image.new("RGB", (300, 200), (230, 140, 40)))  # an orange (organic) scan
    assert float((out[0] - out[2]).mean()) > 0.5  # still orange: red well above blue


def test_phone_capture_lays_the_photo_on_a_surface_blurred_and_compressed() -> None:
    """The re-taken photo keeps its size and most of the product, shows a border of another
    surface, and differs from one draw to the next; with p=0 it is the photo itself."""
    photo = _photo().resize((240, 180))
    assert PhoneCapture(0.0)(photo) is photo
    torch.manual_seed(3)
    shots = [PhoneCapture(1.0)(photo) for _ in range(4)]
    original = torch.from_numpy(np.asarray(photo, dtype=np.float32).reshape(-1, 3))
    for shot in shots:
        assert shot.size == photo.size and shot.mode == "RGB"
        pixels = torch.from_numpy(np.asarray(shot, dtype=np.float32).reshape(-1, 3))
        changed = ((pixels - original).abs().sum(dim=1) > 60).float().mean()
        assert 0.02 < float(changed) < 0.9  # a border and a tilt, not another picture
    assert len({shot.tobytes() for shot in shots}) == 4
    background = surface((64, 48))
    assert background.size == (64, 48) and background.mode == "RGB"
