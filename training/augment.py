"""Augmentation presets as named objects: camera photos and x-ray images.

A preset turns a PIL image into a normalised ``[3, S, S]`` float tensor, the same layout
``model.preprocess.preprocess_bytes`` produces for evaluation. The evaluation path never uses
these presets: evaluation and serving share the one preprocessing in ``model.preprocess``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import v2

from model.preprocess import PreprocessConfig


@dataclass(frozen=True)
class AugmentPreset:
    """A named augmentation recipe; :meth:`build` gives the transform for one input size."""

    name: str
    description: str
    scale: tuple[float, float] = (0.35, 1.0)
    hflip: float = 0.5
    vflip: float = 0.0
    rotation: float = 0.0
    color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    grayscale: bool = False
    invert: float = 0.0
    gamma: tuple[float, float] = (1.0, 1.0)
    noise_std: float = 0.0

    def build(self, config: PreprocessConfig) -> Callable[[Image.Image], torch.Tensor]:
        """The transform for ``config`` (crop size, mean and std)."""
        size = config.input_size
        steps: list[Callable[..., object]] = [
            v2.RGB(),
            v2.RandomResizedCrop(
                size, scale=self.scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True
            ),
        ]
        if self.hflip:
            steps.append(v2.RandomHorizontalFlip(self.hflip))
        if self.vflip:
            steps.append(v2.RandomVerticalFlip(self.vflip))
        if self.rotation:
            steps.append(v2.RandomRotation(self.rotation))
        if any(self.color_jitter):
            steps.append(v2.ColorJitter(*self.color_jitter))
        if self.grayscale:
            steps.append(v2.Grayscale(num_output_channels=3))
        if self.invert:
            steps.append(v2.RandomInvert(self.invert))
        steps.append(v2.ToImage())
        steps.append(v2.ToDtype(torch.float32, scale=True))
        if self.gamma != (1.0, 1.0):
            steps.append(RandomGamma(self.gamma))
        if self.noise_std:
            steps.append(GaussianNoise(self.noise_std))
        steps.append(v2.Normalize(list(config.mean), list(config.std)))
        transform: Callable[[Image.Image], torch.Tensor] = v2.Compose(steps)
        return transform


class RandomGamma(torch.nn.Module):
    """Raise a [0, 1] image to a random power drawn uniformly from ``bounds``."""

    def __init__(self, bounds: tuple[float, float]) -> None:
        super().__init__()
        self.bounds = bounds

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Apply one random gamma to the whole image."""
        low, high = self.bounds
        gamma = low + (high - low) * float(torch.rand(()))
        return image.clamp(0.0, 1.0) ** gamma


class GaussianNoise(torch.nn.Module):
    """Add zero-mean Gaussian noise (a random standard deviation up to ``std``) and clip."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Add the noise to a [0, 1] image."""
        sigma = self.std * float(torch.rand(()))
        return (image + torch.randn_like(image) * sigma).clamp(0.0, 1.0)


CAMERA = AugmentPreset(
    name="camera",
    description="phone and studio photos: random crop, flips, small rotation, colour jitter",
    scale=(0.35, 1.0),
    hflip=0.5,
    vflip=0.2,
    rotation=15.0,
    color_jitter=(0.3, 0.3, 0.2, 0.03),
)

XRAY = AugmentPreset(
    name="xray",
    description="x-ray scans: grayscale, inversion, gamma and contrast, sensor noise",
    scale=(0.5, 1.0),
    hflip=0.5,
    vflip=0.5,
    rotation=10.0,
    color_jitter=(0.2, 0.4, 0.0, 0.0),
    grayscale=True,
    invert=0.5,
    gamma=(0.6, 1.6),
    noise_std=0.05,
)

XRAY_PSEUDOCOLOUR = AugmentPreset(
    name="xray-pseudocolour",
    description="dual-energy pseudo-colour scans: the colours encode the material, so no grey "
    "or inversion; mild crops (the object may lie near an edge), flips, gamma, noise; no "
    "rotation (black corners would be unlike a scan's white)",
    scale=(0.85, 1.0),
    hflip=0.5,
    vflip=0.5,
    rotation=0.0,
    color_jitter=(0.15, 0.15, 0.0, 0.0),
    gamma=(0.8, 1.25),
    noise_std=0.02,
)

PRESETS: dict[str, AugmentPreset] = {
    preset.name: preset for preset in (CAMERA, XRAY, XRAY_PSEUDOCOLOUR)
}


def preset_for(name: str) -> AugmentPreset:
    """The preset called ``name`` (``camera`` or ``xray``); ``KeyError`` names the choices."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(
            f"unknown augmentation preset {name!r}; choose {', '.join(PRESETS)}"
        ) from None
