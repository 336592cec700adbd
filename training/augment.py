"""Augmentation presets as named objects: camera photos and x-ray images.

A preset turns a PIL image into a normalised ``[3, S, S]`` float tensor, the same layout
``model.preprocess.preprocess_bytes`` produces for evaluation. The evaluation path never uses
these presets: evaluation and serving share the one preprocessing in ``model.preprocess``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2

from model.preprocess import PreprocessConfig
from training.photo_ops import lay_on


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
    phone: float = 0.0
    """Probability of :class:`PhoneCapture` (the photo re-taken on a bench, tilted, blurred,
    phone JPEG) before the crop."""

    def build(self, config: PreprocessConfig) -> Callable[[Image.Image], torch.Tensor]:
        """The transform for ``config`` (crop size, mean and std)."""
        size = config.input_size
        steps: list[Callable[..., object]] = [v2.RGB()]
        if self.phone:
            steps.append(PhoneCapture(self.phone))
        steps += [
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


def _uniform(low: float, high: float) -> float:
    """A uniform draw from torch's generator (seeded per DataLoader worker)."""
    return low + (high - low) * float(torch.rand(()))


def surface(size: tuple[int, int]) -> Image.Image:
    """A plausible surface to lay a product on (a bench, a floor, a bag, a cloth): a base colour
    with low-frequency shading and fine grain, all random. Synthetic on purpose: the re-shoots
    that measure robustness lay photos on ImageNet scenes, which training must not see."""
    width, height = size
    base = torch.rand(3) * 0.8 + 0.1
    coarse = torch.rand(1, 1, 4, 4)
    shading = torch.nn.functional.interpolate(
        coarse, size=(height, width), mode="bicubic", align_corners=False
    )[0, 0]
    grain = torch.randn(height, width) * _uniform(0.0, 0.08)
    pixels = base[:, None, None] * (0.7 + 0.6 * shading)[None] + grain[None]
    array = (pixels.clamp(0.0, 1.0) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


class PhoneCapture:
    """An officer's phone photo of the product, made from a studio photo (PIL in, PIL out).

    With probability ``p``: the photo is shrunk to 72-97% and tilted by up to 10 degrees on a
    random surface (:func:`surface`), so that a border of something else shows; then blurred
    (radius 0-1.5 px, hand shake and focus) and saved as a JPEG of quality 30-90 (phone
    compression, messaging apps). Light and colour come from the preset's colour jitter.
    """

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        """The re-taken photo (or ``image`` itself, with probability ``1 - p``)."""
        if float(torch.rand(())) >= self.p:
            return image
        image = image.convert("RGB")
        scale = _uniform(0.72, 0.97)
        angle = _uniform(-10.0, 10.0)
        canvas = lay_on(
            image,
            surface(image.size),
            scale=scale,
            angle=angle,
            place=lambda free_x, free_y: (
                int(_uniform(0, free_x + 1)),
                int(_uniform(0, free_y + 1)),
            ),
        )
        radius = _uniform(0.0, 1.5)
        if radius > 0.2:
            canvas = canvas.filter(ImageFilter.GaussianBlur(radius))
        buffer = io.BytesIO()
        canvas.save(buffer, format="JPEG", quality=int(_uniform(30, 91)))
        buffer.seek(0)
        return Image.open(buffer).convert("RGB")


CAMERA = AugmentPreset(
    name="camera",
    description="phone and studio photos: random crop, flips, small rotation, colour jitter",
    scale=(0.35, 1.0),
    hflip=0.5,
    vflip=0.2,
    rotation=15.0,
    color_jitter=(0.3, 0.3, 0.2, 0.03),
)

PHONE = AugmentPreset(
    name="phone",
    description="camera, plus photos re-taken as an officer's phone would: a border of a "
    "random surface, tilt, blur and phone JPEG on 60% of the images",
    scale=(0.35, 1.0),
    hflip=0.5,
    vflip=0.2,
    rotation=15.0,
    color_jitter=(0.35, 0.35, 0.25, 0.03),
    phone=0.6,
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
    preset.name: preset for preset in (CAMERA, PHONE, XRAY, XRAY_PSEUDOCOLOUR)
}


def preset_for(name: str) -> AugmentPreset:
    """The preset called ``name`` (``camera`` or ``xray``); ``KeyError`` names the choices."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(
            f"unknown augmentation preset {name!r}; choose {', '.join(PRESETS)}"
        ) from None
