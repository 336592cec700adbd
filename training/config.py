"""The resolved training configuration: one frozen object, saved as ``config.json`` in a bundle."""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from model.preprocess import CROPS, PreprocessConfig
from training.features import DEFAULT_CACHE_DIR
from training.train import MODES

INPUT_SIZES = (96, 512)
"""Smallest and largest ``--input-size`` accepted (pixels, square model input)."""


class ConfigError(ValueError):
    """A training option is out of range; the message names it."""


OOD_METHODS = ("knn-reference", "mahalanobis-finetuned")
"""``mahalanobis-finetuned`` (default): class-conditional Mahalanobis distance in a PCA space of
the fine-tuned features (no extra cost; the offline page scores it in the browser);
``knn-reference``: k-nearest-neighbour cosine distance on the frozen ImageNet backbone's features
(a second, frozen backbone in the ONNX graph: twice the cost per image; the offline page scores
it too)."""

THRESHOLD_RULES = ("calibrated", "empirical")
"""Ways to estimate a threshold's validation precision (``training.calibrate.ThresholdRule``)."""


@dataclass(frozen=True)
class TrainConfig:
    """Every option of ``cites-vision train``; see ``docs/training.md`` for their meaning."""

    data: tuple[str, ...]
    out: str = "weights"
    version: str = ""
    label_map: str | None = None
    mode: str = "last"
    epochs: int = 8
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.02
    seed: int = 0
    class_weight_power: float = 0.5
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    augment: str = "camera"
    views: int = 2
    trained_stages: int = 1
    modality: str = "camera"
    backbone: str = "tf_efficientnet_lite0"
    input_size: int | None = None
    crop: str = "center"
    pretrained: bool = True
    cache_dir: str | None = str(DEFAULT_CACHE_DIR)
    work_dir: str | None = None
    resume: bool = False
    base: str | None = None
    init_from: str | None = None
    int8: bool = True
    int8_max_drop: float = 0.01
    calibration_images: int = 128
    ood_data: str | None = None
    ood_flag_rate: float = 0.05
    from_bundle: str | None = None
    ood_method: str = "mahalanobis-finetuned"
    ood_k: int = 10
    ood_bank_phone: float = 0.0
    max_all_clear: float = 0.05
    all_clear_min_images: int = 20
    all_clear_floor: float = 0.98
    target_precision: float = 0.95
    threshold_rule: str = "calibrated"
    threads: int | None = None
    overwrite: bool = False
    limitations: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("give at least one --data folder or manifest")
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.epochs < 0 or self.batch_size < 1:
            raise ConfigError("--epochs must be >= 0 and --batch-size >= 1")
        if not (0.0 < self.val_fraction < 1.0 and 0.0 <= self.test_fraction < 1.0):
            raise ConfigError("--val-fraction must be in (0, 1) and --test-fraction in [0, 1)")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError("--val-fraction plus --test-fraction must leave 10% for training")
        if not 0.0 < self.ood_flag_rate < 1.0:
            raise ConfigError("--ood-flag-rate must be in (0, 1)")
        if self.ood_method not in OOD_METHODS:
            raise ConfigError(
                f"--ood-method must be one of {', '.join(OOD_METHODS)}, got {self.ood_method!r}"
            )
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ConfigError(
                f"--threshold-rule must be one of {', '.join(THRESHOLD_RULES)}, "
                f"got {self.threshold_rule!r}"
            )
        if self.ood_k < 1:
            raise ConfigError("--ood-k must be >= 1")
        if not 0.0 <= self.ood_bank_phone <= 1.0:
            raise ConfigError("--ood-bank-phone must be a share in [0, 1]")
        if not 0.0 <= self.max_all_clear < 1.0:
            raise ConfigError("--max-all-clear must be in [0, 1)")
        if self.all_clear_min_images < 0 or not 0.5 <= self.all_clear_floor <= 1.0:
            raise ConfigError(
                "--all-clear-min-images must be >= 0 and --all-clear-floor in [0.5, 1]"
            )
        if self.views < 0 or not 1 <= self.trained_stages <= 7:
            raise ConfigError("--views must be >= 0 and --trained-stages in 1..7")
        if self.calibration_images < 1:
            raise ConfigError("--calibration-images must be >= 1")
        if self.crop not in CROPS:
            raise ConfigError(f"--crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        from training.backbone import BackboneError, backbone_spec

        try:
            object.__setattr__(self, "backbone", backbone_spec(self.backbone).name)
        except BackboneError as exc:
            raise ConfigError(f"--backbone: {exc}") from None
        low, high = INPUT_SIZES
        if self.input_size is not None and (
            isinstance(self.input_size, bool)
            or not isinstance(self.input_size, int)
            or not low <= self.input_size <= high
        ):
            raise ConfigError(
                f"--input-size must be a whole number of pixels in {low}..{high}, "
                f"got {self.input_size!r}"
            )

    def preprocess(self) -> PreprocessConfig:
        """The run's one preprocessing: the backbone's, at ``input_size`` (default: the
        backbone's own, 224 for Lite0, 240 for Lite1, 260 for Lite2).

        The shorter side is resized in the backbone's ratio (256 for 224), so the centre crop
        keeps the same share of the image at every size. ``crop="squash"`` resizes the whole
        image to the square instead (x-ray scans: an object may lie anywhere in the bag).
        """
        from training.backbone import backbone_spec

        base = backbone_spec(self.backbone).preprocess
        if self.input_size is None or self.input_size == base.input_size:
            return replace(base, crop=self.crop)
        ratio = base.resize_shorter / base.input_size
        return replace(
            base,
            input_size=self.input_size,
            resize_shorter=round(self.input_size * ratio),
            crop=self.crop,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data["data"] = list(self.data)
        data["limitations"] = list(self.limitations)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output (unknown keys are an error)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}")
        values = dict(data)
        values["data"] = tuple(values.get("data", ()))
        values["limitations"] = tuple(values.get("limitations", ()))
        return cls(**values)

    def command(self) -> str:
        """The ``cites-vision train`` command line that reproduces this configuration."""
        defaults = TrainConfig(data=self.data)
        words = ["cites-vision", "train"]
        for item in self.data:
            words += ["--data", item]
        for f in fields(self):
            value, default = getattr(self, f.name), getattr(defaults, f.name)
            flag = "--" + f.name.replace("_", "-")
            if f.name == "data" or value == default:
                continue
            if f.name == "limitations":
                for sentence in value:
                    words += ["--limitation", sentence]
            elif f.name == "pretrained":
                words.append("--no-pretrained")
            elif f.name == "int8":
                words.append("--no-int8")
            elif f.name == "cache_dir" and value is None:
                words.append("--no-cache")
            elif isinstance(value, bool):
                words.append(flag)
            else:
                words += [flag, str(value)]
        return shlex.join(words)

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """Read a ``config.json`` written by a previous run (its ``config`` object)."""
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls.from_dict(payload.get("config", payload))
