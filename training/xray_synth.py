"""Synthetic x-ray training images by projection (``cites-vision xray synth``).

Objects are cut out of camera photos, given a thickness map and a material, turned into a
dual-energy transmission pair with Beer-Lambert (:mod:`training.xray_materials`), coloured with
the pseudo-colour palette fitted to the real scans (:class:`Palette`) and projected
multiplicatively into real baggage scans (per channel, so additive in the log domain), at random
positions, scales, rotations and densities, with noise. docs/xray.md states every assumption.

Classes (dataset folders, mapped to labels by ``training/label_maps/xray.tsv``):

* ``ivory_bone``: a met-ivory ``ivory`` object (plain studio background) as ivory/bone;
* ``timber``: a rectangular piece cut from a wood-trade-groups surface photo as wood;
* ``porcelain``: a met-ivory ``non_ivory`` object (ceramic look-alikes) as porcelain;
* ``plain``: the background scan itself, nothing added (no wildlife product).

Training and test never share a background scan nor a source object (split by a hash of the
file name); backgrounds whose content matches an ``xray-baggage`` scan are left out, so false
alarms measured on xray-baggage come from scans the model never saw.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from training.xray_materials import (
    HIGH_BAND_KEV,
    LOW_BAND_KEV,
    MATERIALS,
    Material,
    band_transmission,
    organic_scale,
)

logger = logging.getLogger(__name__)

CLASSES: dict[str, str] = {
    "ivory_bone": "ivory_bone",
    "timber": "wood",
    "porcelain": "porcelain",
    "plain": "",
}
"""Dataset class -> material projected (``plain``: none)."""

MANIFEST_COLUMNS = (
    "path",
    "label",
    "modality",
    "source",
    "case_id",
    "split",
    "material",
    "object_source",
    "background",
    "box",
    "scale",
    "rotation_deg",
    "density_factor",
    "max_thickness_cm",
)
SPLITS = ("train", "test")


class SynthError(ValueError):
    """The inputs of the synthesiser are missing or unusable; the message says which."""


@dataclass(frozen=True)
class SynthConfig:
    """Options of ``cites-vision xray synth``."""

    ivory_dir: Path
    porcelain_dir: Path
    timber_dir: Path
    backgrounds_dir: Path
    out: Path
    per_class: int = 200
    test_per_class: int = 60
    exclude_like: Path | None = None
    test_share: float = 0.3
    seed: int = 0
    max_side: int = 512


# --- the palette of the real scans -------------------------------------------------------


@dataclass(frozen=True)
class Palette:
    """How a dual-energy pair becomes pseudo-colour, fitted to real scans.

    Each hue family (orange = organic, green = mixed, blue = inorganic) is a direction ``d`` in
    optical-density space: a pixel of attenuation ``L = -ln T_high`` is shown as
    ``exp(-L * d)`` per channel (white where nothing attenuates). ``d`` is the median of
    ``-ln(rgb)`` normalised to mean 1 over the real scans' pixels of that family. A material's
    family comes from its dual-energy ratio (``organic_scale``): 0 orange, 0.5 green, 1 blue.
    """

    orange: tuple[float, float, float]
    green: tuple[float, float, float]
    blue: tuple[float, float, float]

    def direction(self, organic: float) -> npt.NDArray[np.float64]:
        """The density direction for an organic scale in [0, 1] (piecewise linear)."""
        o, g, b = (np.asarray(c, dtype=np.float64) for c in (self.orange, self.green, self.blue))
        if organic <= 0.5:
            result: npt.NDArray[np.float64] = o + (g - o) * (organic / 0.5)
        else:
            result = g + (b - g) * ((organic - 0.5) / 0.5)
        return result

    @classmethod
    def fit(cls, scans: Sequence[Path], *, samples: int = 40) -> Palette:
        """Fit the three directions on up to ``samples`` real pseudo-colour scans."""
        buckets: dict[str, list[npt.NDArray[np.float64]]] = {"o": [], "g": [], "b": []}
        for path in list(scans)[:samples]:
            with Image.open(path) as image:
                rgb = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3)
            rgb = rgb[::7]
            density = -np.log(np.clip(rgb / 255.0, 1 / 255.0, 1.0))
            total = density.sum(axis=1)
            keep = (total > 0.6) & (total < 6.0)  # attenuating, not saturated
            density, rgbk = density[keep], rgb[keep]
            r, g, b = rgbk[:, 0], rgbk[:, 1], rgbk[:, 2]
            families = {
                "o": (r > g + 10) & (g > b + 10),
                "g": (g > r + 10) & (g > b + 10),
                "b": (b > r + 10) & (b >= g),
            }
            for key, mask in families.items():
                if mask.any():
                    buckets[key].append(density[mask])
        directions = []
        for key in ("o", "g", "b"):
            if not buckets[key]:
                raise SynthError(
                    f"no {key} pixels found in the background scans to fit the palette"
                )
            stacked = np.concatenate(buckets[key])
            unit = stacked / stacked.mean(axis=1, keepdims=True)
            median = np.median(unit, axis=0)
            directions.append(tuple(float(v) for v in median / median.mean()))
        return cls(*directions)  # type: ignore[arg-type]


# --- cut-outs and thickness ----------------------------------------------------------------


def cut_out_object(photo: Image.Image) -> npt.NDArray[np.bool_] | None:
    """The mask of the object on a plain studio background, or None when it is not clean.

    The background colour is the median of the photo's border; a pixel belongs to the object
    when it differs from it by more than a threshold set by the border's own spread. The mask is
    opened, its holes filled and its largest component kept. Photos whose object covers less
    than 4% or more than 85% of the frame, or touches more than a quarter of the border, are
    refused (not a plain background).
    """
    from scipy import ndimage

    rgb = np.asarray(photo.convert("RGB"), dtype=np.float64)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    colour = np.median(border, axis=0)
    spread = np.median(np.abs(border - colour).max(axis=1))
    distance = np.abs(rgb - colour).max(axis=2)
    mask = distance > max(28.0, 4.0 * spread)
    mask = ndimage.binary_opening(mask, iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    mask = labels == (int(np.argmax(sizes)) + 1)
    share = float(mask.mean())
    edge = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    if not 0.04 <= share <= 0.85 or float(edge.mean()) > 0.25:
        return None
    return np.asarray(mask, dtype=bool)


def thickness_from_mask(
    mask: npt.NDArray[np.bool_], max_thickness_cm: float
) -> npt.NDArray[np.float64]:
    """A rounded thickness map: ``T * sqrt(1 - (1 - d / dmax)^2)`` with ``d`` the distance to
    the mask's edge, the profile of an ellipsoid whose largest thickness is ``T`` cm."""
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(mask)
    peak = float(distance.max())
    if peak <= 0:
        return np.zeros(mask.shape)
    relative = np.clip(distance / peak, 0.0, 1.0)
    return np.asarray(max_thickness_cm * np.sqrt(1.0 - (1.0 - relative) ** 2), dtype=np.float64)


def relief(
    photo: Image.Image, mask: npt.NDArray[np.bool_], strength: float
) -> npt.NDArray[np.float64]:
    """A factor around 1 from the photo's luminance inside the mask (carving, grain)."""
    grey = np.asarray(photo.convert("L"), dtype=np.float64)
    inside = grey[mask] if mask.any() else grey.reshape(-1)
    spread = float(inside.std()) or 1.0
    factor = 1.0 + strength * np.clip((grey - float(inside.mean())) / spread, -2.0, 2.0)
    return np.asarray(factor, dtype=np.float64)


@dataclass(frozen=True)
class ObjectLayer:
    """An object ready to project: thickness (cm) and mask, at the photo's resolution."""

    thickness: npt.NDArray[np.float64]
    mask: npt.NDArray[np.bool_]
    material: Material
    source: str


def carved_object(
    photo: Image.Image, material: Material, rng: np.random.Generator, source: str
) -> ObjectLayer | None:
    """A museum object (ivory, bone, porcelain): cut out, ellipsoid thickness with relief."""
    mask = cut_out_object(photo)
    if mask is None:
        return None
    low, high = (1.5, 6.0) if material.name == "ivory_bone" else (0.6, 3.0)
    thickness = thickness_from_mask(mask, float(rng.uniform(low, high)))
    thickness *= relief(photo, mask, 0.08)
    return ObjectLayer(np.where(mask, thickness, 0.0), mask, material, source)


def timber_piece(photo: Image.Image, rng: np.random.Generator, source: str) -> ObjectLayer:
    """A rectangular piece of timber cut from a wood-surface photo: a slab of uniform thickness
    (2-8 cm), its edges rounded over a few pixels, with the grain as +-10% density."""
    from scipy import ndimage

    width, height = photo.size
    aspect = float(rng.uniform(1.5, 5.0))
    piece_w = int(width * rng.uniform(0.6, 0.95))
    piece_h = max(8, min(height, int(piece_w / aspect)))
    left = int(rng.integers(0, max(1, width - piece_w + 1)))
    top = int(rng.integers(0, max(1, height - piece_h + 1)))
    crop = photo.crop((left, top, left + piece_w, top + piece_h))
    mask = np.ones((crop.height, crop.width), dtype=bool)
    padded = np.pad(mask, 1)
    edge = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    rounding = np.clip(edge / 4.0, 0.0, 1.0) ** 0.5
    thickness = float(rng.uniform(2.0, 8.0)) * rounding * relief(crop, mask, 0.05)
    return ObjectLayer(thickness, mask, MATERIALS["wood"], source)


# --- projection ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where and how an object was projected into a background."""

    box: tuple[int, int, int, int]
    scale: float
    rotation_deg: float
    density_factor: float
    max_thickness_cm: float


def object_colour(
    layer: ObjectLayer, palette: Palette, density_factor: float
) -> npt.NDArray[np.float64]:
    """The object's per-channel transmission (h, w, 3) in (0, 1]: Beer-Lambert dual-energy pair,
    shown with the palette (1 where there is no object)."""
    high = band_transmission(layer.material, layer.thickness, HIGH_BAND_KEV, density_factor)
    low = band_transmission(layer.material, layer.thickness, LOW_BAND_KEV, density_factor)
    attenuation = -np.log(np.clip(high, 1e-6, 1.0))
    # the low/high ratio of the actual pair (beam hardening included) sets the hue per pixel
    direction = palette.direction(organic_scale(layer.material))
    colour = np.exp(-attenuation[..., None] * direction[None, None, :])
    low_extra = -np.log(np.clip(low, 1e-6, 1.0)) - attenuation
    colour[..., 2] *= np.exp(-0.15 * low_extra)  # a little extra blue absorption, as scanners
    return np.asarray(np.clip(colour, 0.0, 1.0), dtype=np.float64)


def project(
    background: Image.Image,
    layer: ObjectLayer,
    palette: Palette,
    rng: np.random.Generator,
) -> tuple[Image.Image, Placement]:
    """Project ``layer`` into ``background`` (multiplicative per channel) at a random place."""
    bg = np.asarray(background.convert("RGB"), dtype=np.float64) / 255.0
    bg_h, bg_w = bg.shape[:2]
    density = float(rng.uniform(*layer.material.density_range)) / layer.material.density
    colour = object_colour(layer, palette, density)
    target = float(rng.uniform(0.18, 0.45)) * min(bg_w, bg_h)
    scale = target / max(layer.mask.shape)
    rotation = float(rng.uniform(0.0, 360.0))
    size = (max(4, round(layer.mask.shape[1] * scale)), max(4, round(layer.mask.shape[0] * scale)))
    # per-channel optical density, resized and rotated as float images (0 outside the object)
    density_map = -np.log(np.clip(colour, 1e-6, 1.0))
    channels = [
        np.asarray(
            Image.fromarray(density_map[..., c].astype(np.float32), mode="F")
            .resize(size, Image.Resampling.BILINEAR)
            .rotate(rotation, resample=Image.Resampling.BILINEAR, expand=True),
            dtype=np.float64,
        )
        for c in range(3)
    ]
    stamp = np.stack(channels, axis=-1)
    height, width = stamp.shape[:2]
    if height >= bg_h or width >= bg_w:
        factor = 0.9 * min(bg_h / height, bg_w / width)
        small = (max(4, int(width * factor)), max(4, int(height * factor)))
        stamp = np.stack(
            [
                np.asarray(
                    Image.fromarray(stamp[..., c].astype(np.float32), mode="F").resize(
                        small, Image.Resampling.BILINEAR
                    )
                )
                for c in range(3)
            ],
            axis=-1,
        )
        scale *= factor
        height, width = stamp.shape[:2]
    top = int(rng.integers(0, bg_h - height + 1))
    left = int(rng.integers(0, bg_w - width + 1))
    log_bg = -np.log(np.clip(bg, 1.0 / 255.0, 1.0))
    log_bg[top : top + height, left : left + width] += stamp  # additive in the log domain
    out = np.exp(-log_bg)
    # detector noise: signal-dependent Gaussian (quantum noise), stronger where less arrives
    noise = rng.normal(0.0, 1.0, out.shape) * (0.004 + 0.012 * np.sqrt(np.clip(out, 0, 1)))
    out = np.clip(out + noise, 0.0, 1.0)
    inside = stamp.sum(axis=2) > 0.05
    ys, xs = np.nonzero(inside)
    box = (
        (
            left + int(xs.min()),
            top + int(ys.min()),
            left + int(xs.max()) + 1,
            top + int(ys.max()) + 1,
        )
        if len(xs)
        else (left, top, left + width, top + height)
    )
    image = Image.fromarray(np.rint(out * 255.0).astype(np.uint8), mode="RGB")
    placement = Placement(
        box=box,
        scale=round(scale, 4),
        rotation_deg=round(rotation, 1),
        density_factor=round(density, 3),
        max_thickness_cm=round(float(layer.thickness.max()), 2),
    )
    return image, placement


# --- splits and the dataset ----------------------------------------------------------------


def _unit_hash(text: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(name: str, test_share: float, seed: int) -> str:
    """``test`` for a deterministic ``test_share`` of names (by hash), else ``train``."""
    return "test" if _unit_hash(name, seed) < test_share else "train"


def difference_hash(path: Path) -> npt.NDArray[np.bool_]:
    """A 16x16 difference hash of an image's grey content (robust to resizing and JPEG)."""
    with Image.open(path) as image:
        grey = np.asarray(
            image.convert("L").resize((17, 16), Image.Resampling.BILINEAR), dtype=float
        )
    return np.asarray(grey[:, 1:] > grey[:, :-1], dtype=bool)


def matching_backgrounds(
    backgrounds: Sequence[Path], others: Sequence[Path], max_distance: int = 40
) -> set[Path]:
    """Backgrounds whose difference hash lies within ``max_distance`` bits (of 256) of one of
    ``others`` (the same scan, resized or re-encoded, or a near-identical one)."""
    other_hashes = [difference_hash(p) for p in others]
    matches = set()
    for path in backgrounds:
        own = difference_hash(path)
        if any(int(np.count_nonzero(own != h)) <= max_distance for h in other_hashes):
            matches.add(path)
    return matches


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise SynthError(f"{folder}: not a folder")
    found = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file()
    )
    if not found:
        raise SynthError(f"{folder}: no .jpg or .png images in it")
    return found


def _fit_max_side(image: Image.Image, max_side: int) -> Image.Image:
    image = image.convert("RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def synthesise(config: SynthConfig) -> dict[str, object]:
    """Write the dataset (images, ``train.csv``, ``test.csv``, ``synth.json``) and return its
    summary. Refuses to write into a folder that already holds a manifest."""
    out = config.out
    if (out / "train.csv").exists():
        raise SynthError(f"{out} already holds a synthetic dataset; choose another --out")
    backgrounds = _images(config.backgrounds_dir)
    excluded: set[Path] = set()
    checked = False
    if config.exclude_like is not None:
        others = _images(config.exclude_like)
        excluded = matching_backgrounds(backgrounds, others)
        checked = True
        logger.info(
            "%d backgrounds match a scan of %s and are left out", len(excluded), config.exclude_like
        )
    usable = [p for p in backgrounds if p not in excluded]
    by_split_bg = {
        s: [p for p in usable if split_of(p.name, config.test_share, config.seed) == s]
        for s in SPLITS
    }
    sources = {
        "ivory_bone": _images(config.ivory_dir),
        "porcelain": _images(config.porcelain_dir),
        "timber": _images(config.timber_dir),
    }
    for split in SPLITS:
        if not by_split_bg[split]:
            raise SynthError(f"no background scans left for the {split} split")
    palette = Palette.fit([p for p in by_split_bg["train"]])
    rng = np.random.default_rng(config.seed)
    rows: dict[str, list[dict[str, object]]] = {s: [] for s in SPLITS}
    counts = {"train": config.per_class, "test": config.test_per_class}
    refused_photos = 0
    for split in SPLITS:
        bg_paths = by_split_bg[split]
        for label, material_name in CLASSES.items():
            folder = out / "images" / split / label
            folder.mkdir(parents=True, exist_ok=True)
            pool = (
                [
                    p
                    for p in sources[label]
                    if split_of(p.stem, config.test_share, config.seed) == split
                ]
                if material_name
                else []
            )
            if material_name and not pool:
                raise SynthError(f"no {label} source photos left for the {split} split")
            made, attempts = 0, 0
            while made < counts[split]:
                attempts += 1
                if attempts > 20 * counts[split] + 50:
                    raise SynthError(
                        f"could not cut out enough {label} objects for {split}: only {made} of "
                        f"{counts[split]} (photos without a plain background are refused)"
                    )
                bg_path = bg_paths[int(rng.integers(len(bg_paths)))]
                with Image.open(bg_path) as opened:
                    background = _fit_max_side(opened, config.max_side)
                row: dict[str, object] = {
                    "label": label,
                    "modality": "xray",
                    "split": split,
                    "background": bg_path.name,
                    "material": material_name or "none",
                }
                if not material_name:
                    image = background
                    row.update(
                        object_source="",
                        box="",
                        scale="",
                        rotation_deg="",
                        density_factor="",
                        max_thickness_cm="",
                        case_id=f"bg-{bg_path.stem}",
                    )
                else:
                    src = pool[int(rng.integers(len(pool)))]
                    with Image.open(src) as opened:
                        photo = _fit_max_side(opened, 256)
                    if label == "timber":
                        layer: ObjectLayer | None = timber_piece(photo, rng, src.name)
                    else:
                        layer = carved_object(photo, MATERIALS[material_name], rng, src.name)
                    if layer is None:
                        refused_photos += 1
                        continue
                    image, placement = project(background, layer, palette, rng)
                    placed = asdict(placement)
                    placed["box"] = " ".join(str(v) for v in placement.box)
                    row.update(placed)
                    row.update(
                        object_source=f"{src.parent.name}/{src.name}", case_id=f"obj-{src.stem}"
                    )
                name = f"{split}-{label}-{made:05d}.jpg"
                image.save(folder / name, format="JPEG", quality=90)
                row["path"] = f"images/{split}/{label}/{name}"
                row["source"] = f"xray-synth-{split}"
                rows[split].append(row)
                made += 1
    for split in SPLITS:
        with (out / f"{split}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            for row in rows[split]:
                writer.writerow({k: row.get(k, "") for k in MANIFEST_COLUMNS})
    summary: dict[str, object] = {
        "images": {s: len(rows[s]) for s in SPLITS},
        "per_class": counts,
        "backgrounds": {s: len(by_split_bg[s]) for s in SPLITS},
        "backgrounds_excluded_as_matching": sorted(p.name for p in excluded),
        "exclusion_checked_against": str(config.exclude_like) if checked else None,
        "source_objects": {
            label: {
                s: len({r["object_source"] for r in rows[s] if r["label"] == label}) for s in SPLITS
            }
            for label in CLASSES
            if CLASSES[label]
        },
        "photos_refused_no_plain_background": refused_photos,
        "palette": asdict(palette),
        "energies_kev": {"low": list(LOW_BAND_KEV), "high": list(HIGH_BAND_KEV)},
        "materials": {
            n: {
                "density": m.density,
                "density_range": list(m.density_range),
                "organic_scale": round(organic_scale(m), 3),
                "source": m.source,
            }
            for n, m in MATERIALS.items()
        },
        "seed": config.seed,
    }
    (out / "synth.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _check_disjoint(rows)
    return summary


def _check_disjoint(rows: dict[str, list[dict[str, object]]]) -> None:
    """Fail loudly if a background or a source object appears in both splits."""
    for key in ("background", "object_source"):
        train = {str(r[key]) for r in rows["train"] if r[key]}
        test = {str(r[key]) for r in rows["test"] if r[key]}
        shared = train & test
        if shared:
            raise SynthError(f"{key} shared by train and test: {sorted(shared)[:3]}")
