"""The model bundle: a versioned folder ``weights/<version>/`` that a predictor can trust.

Layout (see ``docs/architecture.md``)::

    manifest.json      schema_version 1; sha256 of every other file under "files"
    model.onnx         fp32, one file: input "image", outputs "logits", "features", "cam"
    model.int8.onnx    optional
    labels.tsv         index, id, name, taxon_id, kind
    ood.npz            optional out-of-domain model (``ood.method``: mahalanobis_pca or knn_cosine,
                       scored on the ONNX output named by ``ood.features``: ``features`` or
                       ``reference_features``, the frozen ImageNet backbone's pooled features)
    *.json/*.md/*.png  optional reports

:func:`write_bundle` builds the folder in a temporary sibling, verifies it with
:func:`load_bundle` and renames it into place, so a reader never sees half a bundle.
:func:`load_bundle` refuses a damaged or incomplete bundle with a :class:`BundleError` that
names the file or manifest key at fault. No network access, no torch. The manifest's schema
and validation live in :mod:`model.manifest` (re-exported here).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from model.decision import Thresholds
from model.digest import sha256_file
from model.labels import Label, LabelsError, read_labels, write_labels
from model.manifest import (
    DEFAULT_BACKBONE,
    LABELS_FILE,
    MANIFEST_FILE,
    MODEL_FILES,
    OOD_FILE,
    SCHEMA_VERSION,
    BundleError,
    BundleManifest,
    OodSpec,
    check_file_name,
    check_version,
)
from model.ood import KNN_METHOD, OOD_METHOD, AnyOodModel, KnnOodModel, OodError, load_ood
from model.preprocess import PreprocessConfig
from model.taxonomy import Taxonomy, default_taxonomy
from model.vocabulary import MODALITIES

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BACKBONE",
    "LABELS_FILE",
    "MANIFEST_FILE",
    "MODALITIES",
    "MODEL_FILES",
    "OOD_FILE",
    "SCHEMA_VERSION",
    "Bundle",
    "BundleError",
    "BundleManifest",
    "BundleSummary",
    "OodSpec",
    "Precision",
    "list_bundles",
    "load_bundle",
    "sha256_file",
    "write_bundle",
]

Precision = Literal["fp32", "int8", "auto"]


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: where it is, its manifest, its labels and its OOD model (if any)."""

    path: Path
    manifest: BundleManifest
    labels: tuple[Label, ...]
    ood: AnyOodModel | None = field(default=None, compare=False)

    @property
    def version(self) -> str:
        """The bundle's version (its folder name by convention)."""
        return self.manifest.version

    @property
    def has_int8(self) -> bool:
        """True when the bundle ships an INT8 model."""
        return self.manifest.models.get("int8") is not None

    def resolve_precision(self, precision: Precision = "auto") -> Literal["fp32", "int8"]:
        """``auto`` means INT8 when the bundle has it, else fp32; INT8 must exist if asked."""
        if precision == "auto":
            return "int8" if self.has_int8 else "fp32"
        if precision == "int8" and not self.has_int8:
            raise BundleError(
                f"bundle {self.version} has no INT8 model; use precision 'fp32' or 'auto'"
            )
        if precision not in ("fp32", "int8"):
            raise BundleError(f"precision must be fp32, int8 or auto, got {precision!r}")
        return precision

    def model_path(self, precision: Precision = "auto") -> Path:
        """Path of the ONNX file for ``precision`` (see :meth:`resolve_precision`)."""
        name = self.manifest.models[self.resolve_precision(precision)]
        if name is None:  # pragma: no cover - excluded by resolve_precision
            raise BundleError(f"bundle {self.version} has no {precision} model")
        return self.path / name


@dataclass(frozen=True)
class BundleSummary:
    """One entry of :func:`list_bundles`; ``error`` says why an entry is unusable."""

    path: Path
    version: str
    created_at: str | None
    recommended: bool
    parent_version: str | None
    metrics: Mapping[str, Any]
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the bundle could be read (and verified, if asked)."""
        return self.error is None


def _has_taxon(taxonomy: Taxonomy, taxon_id: str) -> bool:
    try:
        return taxonomy.get(taxon_id) is not None
    except KeyError:
        return False


def _check_labels_against_taxonomy(labels: Sequence[Label], taxonomy: Taxonomy, where: str) -> None:
    for label in labels:
        if label.taxon_id and not _has_taxon(taxonomy, label.taxon_id):
            raise BundleError(
                f"{where}: label {label.id!r} names taxon {label.taxon_id!r}, which is not in "
                "the taxonomy (see 'cites-vision taxa')"
            )


def _onnx_output_classes(path: Path) -> int | None:
    """Number of classes of the ``logits`` output, read with ``onnx`` when it is installed."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # onnx raises DecodeError and others for a damaged file
        raise BundleError(f"{path.name}: not a readable ONNX model ({exc})") from exc
    for output in graph.output:
        if output.name == "logits":
            dims = output.type.tensor_type.shape.dim
            if len(dims) == 2 and dims[1].dim_value > 0:
                return int(dims[1].dim_value)
            return None
    raise BundleError(f"{path.name}: the ONNX graph has no 'logits' output")


def _verify_files(path: Path, manifest: BundleManifest) -> None:
    referenced = [manifest.labels_file, *[m for m in manifest.models.values() if m]]
    if manifest.ood is not None:
        referenced.append(manifest.ood.file)
    for name in referenced:
        if name not in manifest.files:
            raise BundleError(f"{path / MANIFEST_FILE}: {name!r} is used but not listed in 'files'")
    for name, expected in manifest.files.items():
        file_path = path / name
        if not file_path.is_file():
            raise BundleError(
                f"{file_path}: listed in the manifest but missing (incomplete bundle)"
            )
        actual = sha256_file(file_path)
        if actual != expected:
            raise BundleError(
                f"{file_path}: sha256 {actual[:12]}... does not match the manifest "
                f"({expected[:12]}...); the file is damaged or was changed"
            )
    listed = set(manifest.files) | {MANIFEST_FILE}
    for extra in sorted(p.name for p in path.iterdir() if p.name not in listed):
        logger.warning("%s: %s is not listed in the manifest; ignored", path, extra)


def load_bundle(path: Path, *, taxonomy: Taxonomy | None = None) -> Bundle:
    """Read and verify a bundle folder.

    Checks the manifest (schema version, every key and its type), that each listed file is
    present with the recorded sha256, that the labels parse and name taxa of ``taxonomy``
    (default: the packaged one), that the label count matches the ONNX ``logits`` width (when
    ``onnx`` is installed; the predictor checks again from its session) and that ``ood.npz``
    loads. Raises :class:`BundleError` naming the file or key at fault.
    """
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle folder")
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing; {path} is not a bundle (or is incomplete)")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from exc
    manifest = BundleManifest.from_dict(data, str(manifest_path))
    _verify_files(path, manifest)

    labels_path = path / manifest.labels_file
    try:
        labels = read_labels(labels_path)
    except LabelsError as exc:
        raise BundleError(str(exc)) from exc
    _check_labels_against_taxonomy(labels, taxonomy or default_taxonomy(), str(labels_path))
    for precision, name in manifest.models.items():
        if name is None:
            continue
        classes = _onnx_output_classes(path / name)
        if classes is not None and classes != len(labels):
            raise BundleError(
                f"{path / name}: the {precision} model has {classes} outputs but "
                f"{manifest.labels_file} has {len(labels)} labels"
            )
    ood: AnyOodModel | None = None
    if manifest.ood is not None:
        try:
            ood = load_ood(path / manifest.ood.file, manifest.ood.method)
        except OodError as exc:
            raise BundleError(str(exc)) from exc
    logger.debug("loaded bundle %s from %s", manifest.version, path)
    return Bundle(path=path, manifest=manifest, labels=tuple(labels), ood=ood)


def _default_provenance(parent_version: str | None) -> dict[str, Any]:
    return {
        "parent_version": parent_version,
        "host": platform.node(),
        "python": platform.python_version(),
    }


def write_bundle(
    out_dir: Path,
    *,
    version: str,
    onnx_fp32: Path,
    onnx_int8: Path | None,
    labels: Sequence[Label],
    preprocess: PreprocessConfig,
    temperature: float,
    thresholds: Thresholds,
    modalities: Sequence[str],
    metrics: Mapping[str, Any],
    training: Mapping[str, Any],
    provenance: Mapping[str, Any],
    limitations: Sequence[str],
    ood: AnyOodModel | None = None,
    ood_threshold: float | None = None,
    ood_features: str = "features",
    extra_files: Mapping[str, Path] | None = None,
    recommended: bool = True,
    parent_version: str | None = None,
    backbone: str = DEFAULT_BACKBONE,
    taxonomy: Taxonomy | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``out_dir/<version>/`` atomically and return its path.

    Files are copied into a temporary sibling folder, hashed, described in ``manifest.json``,
    verified with :func:`load_bundle` and only then renamed into place. An existing version is
    refused unless ``overwrite``. ``provenance`` is stored with ``parent_version``, ``host`` and
    ``python`` added where the caller did not give them.
    """
    out_dir = Path(out_dir)
    check_version(version, "version")
    if (ood is None) != (ood_threshold is None):
        raise BundleError("ood and ood_threshold must be given together")
    for modality in modalities:
        if modality not in MODALITIES:
            raise BundleError(f"unknown modality {modality!r} (known: {', '.join(MODALITIES)})")
    sources: dict[str, Path] = {MODEL_FILES["fp32"]: Path(onnx_fp32)}
    if onnx_int8 is not None:
        sources[MODEL_FILES["int8"]] = Path(onnx_int8)
    reserved = {MANIFEST_FILE, LABELS_FILE, OOD_FILE, *MODEL_FILES.values()}
    for name, source in (extra_files or {}).items():
        check_file_name(name, "extra_files")
        if name in reserved:
            raise BundleError(f"extra_files: {name!r} is reserved for the bundle itself")
        sources[name] = Path(source)
    for name, source in sources.items():
        if not source.is_file():
            raise BundleError(f"{source}: no such file (for {name})")

    final = out_dir / version
    if final.exists() and not overwrite:
        raise BundleError(f"{final} already exists; choose a new version or pass overwrite=True")
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=out_dir))
    try:
        for name, source in sources.items():
            shutil.copyfile(source, staging / name)
        write_labels(staging / LABELS_FILE, labels)
        ood_spec: OodSpec | None = None
        if ood is not None and ood_threshold is not None:
            ood.save(staging / OOD_FILE)
            method = KNN_METHOD if isinstance(ood, KnnOodModel) else OOD_METHOD
            ood_spec = OodSpec(method, OOD_FILE, float(ood_threshold), ood_features)
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir())}
        manifest = BundleManifest(
            schema_version=SCHEMA_VERSION,
            version=version,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            backbone=backbone,
            preprocess=preprocess,
            modalities=tuple(modalities),
            labels_file=LABELS_FILE,
            models={
                "fp32": MODEL_FILES["fp32"],
                "int8": MODEL_FILES["int8"] if onnx_int8 is not None else None,
            },
            temperature=float(temperature),
            thresholds=thresholds,
            ood=ood_spec,
            metrics=dict(metrics),
            training=dict(training),
            limitations=tuple(limitations),
            provenance={**_default_provenance(parent_version), **provenance},
            recommended=recommended,
            files=files,
        )
        text = json.dumps(manifest.to_dict(), indent=2, sort_keys=False, allow_nan=False)
        (staging / MANIFEST_FILE).write_text(text + "\n", encoding="utf-8")
        load_bundle(staging, taxonomy=taxonomy)
        _publish(staging, final, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote bundle %s (%d files)", final, len(files) + 1)
    return final


def _publish(staging: Path, final: Path, overwrite: bool) -> None:
    """Rename ``staging`` to ``final``; an existing ``final`` is swapped out only if allowed."""
    staging.chmod(0o755)
    if not final.exists():
        os.rename(staging, final)
        return
    if not overwrite:
        raise BundleError(f"{final} appeared while writing; choose a new version")
    retired = final.with_name(f".{final.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    os.rename(final, retired)
    os.rename(staging, final)
    shutil.rmtree(retired, ignore_errors=True)


def rewrite_bundle(bundle: Bundle, out_dir: Path, version: str, **changes: Any) -> Path:
    """Write ``bundle`` again as ``out_dir/<version>`` through :func:`write_bundle`: the same
    model files, labels, preprocessing, calibration, OOD model (and the output it scores),
    metrics, provenance and extra files, except the :func:`write_bundle` arguments given in
    ``changes`` (``extra_files`` given there are added to the bundle's own).
    ``parent_version`` is ``bundle``'s version unless given."""
    manifest = bundle.manifest
    reserved = {MANIFEST_FILE, LABELS_FILE, OOD_FILE, *MODEL_FILES.values()}
    extra = {n: bundle.path / n for n in manifest.files if n not in reserved}
    extra.update(changes.pop("extra_files", {}))
    int8 = MODEL_FILES["int8"]
    arguments: dict[str, Any] = {
        "version": version,
        "onnx_fp32": bundle.model_path("fp32"),
        "onnx_int8": bundle.path / int8 if int8 in manifest.files else None,
        "labels": bundle.labels,
        "preprocess": manifest.preprocess,
        "temperature": manifest.temperature,
        "thresholds": manifest.thresholds,
        "modalities": manifest.modalities,
        "metrics": manifest.metrics,
        "training": manifest.training,
        "provenance": {**manifest.provenance, "parent_version": bundle.version},
        "limitations": manifest.limitations,
        "ood": bundle.ood,
        "ood_threshold": None if manifest.ood is None else manifest.ood.threshold,
        "ood_features": "features" if manifest.ood is None else manifest.ood.features,
        "extra_files": extra,
        "recommended": manifest.recommended,
        "parent_version": bundle.version,
        "backbone": manifest.backbone,
    }
    arguments.update(changes)
    return write_bundle(Path(out_dir), **arguments)


def list_bundles(weights_dir: Path, *, verify: bool = False) -> list[BundleSummary]:
    """Bundles under ``weights_dir`` (one folder each), oldest first.

    Without ``verify`` only manifests are read (fast); with it each bundle is fully checked with
    :func:`load_bundle`. Folders that fail are listed with ``error`` set rather than skipped;
    hidden folders (staging, retired) are ignored.
    """
    weights_dir = Path(weights_dir)
    if not weights_dir.is_dir():
        return []
    summaries: list[BundleSummary] = []
    for folder in sorted(p for p in weights_dir.iterdir() if p.is_dir()):
        if folder.name.startswith(".") or not (folder / MANIFEST_FILE).exists():
            continue
        try:
            if verify:
                manifest = load_bundle(folder).manifest
            else:
                data = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
                manifest = BundleManifest.from_dict(data, str(folder / MANIFEST_FILE))
        except (BundleError, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            summaries.append(BundleSummary(folder, folder.name, None, False, None, {}, str(exc)))
            continue
        summaries.append(
            BundleSummary(
                path=folder,
                version=manifest.version,
                created_at=manifest.created_at,
                recommended=manifest.recommended,
                parent_version=manifest.parent_version,
                metrics=manifest.metrics,
            )
        )
    summaries.sort(key=lambda s: (s.created_at or "", s.version))
    return summaries
