"""The bundle manifest (``manifest.json``): its schema, and its validation when read.

:class:`BundleManifest` is the typed form; :meth:`BundleManifest.from_dict` checks every key and
raises :class:`BundleError` naming the key at fault. Reading the folder, verifying hashes and
writing bundles live in :mod:`model.bundle`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from model.decision import Thresholds
from model.ood import OOD_METHODS
from model.preprocess import PreprocessConfig
from model.vocabulary import MODALITIES

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILES: dict[str, str] = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
LABELS_FILE = "labels.tsv"
OOD_FILE = "ood.npz"
OOD_FEATURE_OUTPUTS: tuple[str, ...] = ("features", "reference_features")
"""ONNX outputs an OOD model may score: the fine-tuned or the frozen pretrained features."""
DEFAULT_BACKBONE = "tf_efficientnet_lite0"

_VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
_FILE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
_SHA_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "version": str,
    "created_at": str,
    "backbone": str,
    "preprocess": dict,
    "modalities": list,
    "labels_file": str,
    "models": dict,
    "temperature": (int, float),
    "thresholds": dict,
    "ood": (dict, type(None)),
    "metrics": dict,
    "training": dict,
    "limitations": list,
    "provenance": dict,
    "recommended": bool,
    "files": dict,
}


class BundleError(ValueError):
    """A bundle is missing, incomplete, damaged or inconsistent; the message names what."""


@dataclass(frozen=True)
class OodSpec:
    """The manifest's ``ood`` object: the method, its file and the score threshold."""

    method: str
    file: str
    threshold: float
    features: str = "features"
    """The ONNX output the detector scores (one of :data:`OOD_FEATURE_OUTPUTS`)."""

    def to_dict(self) -> dict[str, Any]:
        """As stored in the manifest."""
        return {
            "method": self.method,
            "file": self.file,
            "threshold": self.threshold,
            "features": self.features,
        }


@dataclass(frozen=True)
class BundleManifest:
    """The typed content of ``manifest.json`` (see the module docstring and the contract)."""

    schema_version: int
    version: str
    created_at: str
    backbone: str
    preprocess: PreprocessConfig
    modalities: tuple[str, ...]
    labels_file: str
    models: Mapping[str, str | None]
    temperature: float
    thresholds: Thresholds
    ood: OodSpec | None
    metrics: Mapping[str, Any]
    training: Mapping[str, Any]
    limitations: tuple[str, ...]
    provenance: Mapping[str, Any]
    recommended: bool
    files: Mapping[str, str]

    @property
    def parent_version(self) -> str | None:
        """The version this bundle was trained from, if any (recorded in provenance)."""
        value = self.provenance.get("parent_version")
        return value if isinstance(value, str) else None

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-ready data, keys in contract order."""
        return {
            "schema_version": self.schema_version,
            "version": self.version,
            "created_at": self.created_at,
            "backbone": self.backbone,
            "preprocess": self.preprocess.to_dict(),
            "modalities": list(self.modalities),
            "labels_file": self.labels_file,
            "models": dict(self.models),
            "temperature": self.temperature,
            "thresholds": self.thresholds.to_dict(),
            "ood": None if self.ood is None else self.ood.to_dict(),
            "metrics": dict(self.metrics),
            "training": dict(self.training),
            "limitations": list(self.limitations),
            "provenance": dict(self.provenance),
            "recommended": self.recommended,
            "files": dict(self.files),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = MANIFEST_FILE) -> BundleManifest:
        """Validate and type a parsed manifest; :class:`BundleError` names the bad key."""
        if not isinstance(data, dict):
            raise BundleError(f"{source}: the manifest must be a JSON object")
        if "schema_version" not in data:
            raise BundleError(f"{source}: missing key 'schema_version'")
        if data["schema_version"] != SCHEMA_VERSION:
            raise BundleError(
                f"{source}: schema_version {data['schema_version']!r} is not supported "
                f"(this program reads {SCHEMA_VERSION}); use a matching cites-vision version"
            )
        for key, expected in _REQUIRED_KEYS.items():
            if key not in data:
                raise BundleError(f"{source}: missing key {key!r}")
            value = data[key]
            if isinstance(value, bool) and expected is not bool:
                raise BundleError(f"{source}: key {key!r} has the wrong type (bool)")
            if not isinstance(value, expected):
                raise BundleError(
                    f"{source}: key {key!r} has the wrong type ({type(value).__name__})"
                )
        unknown = sorted(set(data) - set(_REQUIRED_KEYS))
        if unknown:
            raise BundleError(f"{source}: unknown keys {unknown}")
        check_version(data["version"], f"{source}: key 'version'")
        try:
            preprocess = PreprocessConfig.from_dict(data["preprocess"])
        except ValueError as exc:
            raise BundleError(f"{source}: key 'preprocess': {exc}") from exc
        try:
            thresholds = Thresholds.from_dict(data["thresholds"])
        except ValueError as exc:
            raise BundleError(f"{source}: key 'thresholds': {exc}") from exc
        return cls(
            schema_version=SCHEMA_VERSION,
            version=data["version"],
            created_at=data["created_at"],
            backbone=data["backbone"],
            preprocess=preprocess,
            modalities=_modalities(data["modalities"], f"{source}: key 'modalities'"),
            labels_file=check_file_name(data["labels_file"], f"{source}: key 'labels_file'"),
            models=_models(data["models"], f"{source}: key 'models'"),
            temperature=_temperature(data["temperature"], f"{source}: key 'temperature'"),
            thresholds=thresholds,
            ood=_ood_spec(data["ood"], f"{source}: key 'ood'"),
            metrics=data["metrics"],
            training=data["training"],
            limitations=_strings(data["limitations"], f"{source}: key 'limitations'"),
            provenance=data["provenance"],
            recommended=data["recommended"],
            files=_files(data["files"], f"{source}: key 'files'"),
        )


def check_version(version: str, where: str) -> None:
    """Refuse a bundle version that is not a short slug (raises :class:`BundleError`)."""
    if not _VERSION_PATTERN.match(version):
        raise BundleError(
            f"{where}: {version!r} is not a valid version (letters, digits, '.', '_', '-'; "
            "at most 64 characters, e.g. 'ivory-2026-01-15')"
        )


def check_file_name(name: Any, where: str) -> str:
    """Return ``name`` if it is a plain file name inside a bundle, else raise BundleError."""
    if not isinstance(name, str) or not _FILE_PATTERN.match(name) or name == MANIFEST_FILE:
        raise BundleError(f"{where}: {name!r} is not a plain file name inside the bundle")
    return name


def _modalities(value: list[Any], where: str) -> tuple[str, ...]:
    if not value:
        raise BundleError(f"{where}: at least one modality is required ({', '.join(MODALITIES)})")
    for item in value:
        if item not in MODALITIES:
            raise BundleError(
                f"{where}: unknown modality {item!r} (known: {', '.join(MODALITIES)})"
            )
    if len(set(value)) != len(value):
        raise BundleError(f"{where}: modalities repeat")
    return tuple(value)


def _models(value: dict[str, Any], where: str) -> dict[str, str | None]:
    if set(value) != {"fp32", "int8"}:
        raise BundleError(f"{where}: must have exactly the keys 'fp32' and 'int8'")
    models: dict[str, str | None] = {"fp32": check_file_name(value["fp32"], f"{where}.fp32")}
    models["int8"] = (
        None if value["int8"] is None else check_file_name(value["int8"], f"{where}.int8")
    )
    return models


def _temperature(value: float, where: str) -> float:
    temperature = float(value)
    if not 0.01 <= temperature <= 100.0:
        raise BundleError(f"{where}: {value!r} must be in [0.01, 100]")
    return temperature


def _ood_spec(value: dict[str, Any] | None, where: str) -> OodSpec | None:
    if value is None:
        return None
    if (
        not {"method", "file", "threshold"}
        <= set(value)
        <= {
            "method",
            "file",
            "threshold",
            "features",
        }
    ):
        raise BundleError(
            f"{where}: must have the keys 'method', 'file', 'threshold' (and optionally 'features')"
        )
    if value["method"] not in OOD_METHODS:
        raise BundleError(
            f"{where}.method: {value['method']!r} is not supported ({', '.join(OOD_METHODS)})"
        )
    threshold = value["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold <= 0:
        raise BundleError(f"{where}.threshold: must be a positive number, got {threshold!r}")
    features = value.get("features", "features")
    if features not in OOD_FEATURE_OUTPUTS:
        raise BundleError(
            f"{where}.features: {features!r} is not an output the detector can score "
            f"({', '.join(OOD_FEATURE_OUTPUTS)})"
        )
    return OodSpec(
        str(value["method"]),
        check_file_name(value["file"], f"{where}.file"),
        float(threshold),
        str(features),
    )


def _strings(value: list[Any], where: str) -> tuple[str, ...]:
    for item in value:
        if not isinstance(item, str):
            raise BundleError(f"{where}: every entry must be a string, got {item!r}")
    return tuple(value)


def _files(value: dict[str, Any], where: str) -> dict[str, str]:
    for name, digest in value.items():
        check_file_name(name, where)
        if not isinstance(digest, str) or not _SHA_PATTERN.match(digest):
            raise BundleError(f"{where}: {name!r} needs a lower-case hex sha256, got {digest!r}")
    return dict(value)
