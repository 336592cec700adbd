"""What the officers' page needs to identify on the phone itself, as data: the offline package.

:func:`build_offline_package` turns the active predictor (its bundle: preprocessing, labels,
temperature, thresholds, out-of-domain model, model file), the taxonomy (roll-up lineages,
appendix by origin for every taxon a decision can name) and the guidance texts into one JSON
document. The page's ``js/offline/`` modules interpret it; they hold no thresholds, listings or
texts of their own, so a new bundle or taxonomy flows to the phone without a page change. The
decision rules it names (``decision_rules``) are those of :mod:`model.decision`, and the browser
test replays golden cases made by the Python predictor through the browser to prove both agree.

The browser runtime (ONNX Runtime Web, WASM) is an npm package installed by ``make web-runtime``
into ``service/web/node_modules``; :func:`web_runtime_files` says which of its files the page
needs and whether they are there (without them the page works online only and says so).
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.bundle import Precision
from model.decision import DECISION_RULES, ROLLUP_LIMIT, ROLLUP_RANKS
from model.fusion import DEFAULT_OOD_FUSION, MAX_VIEWS
from model.ood import KnnOodModel, OodModel
from model.predictor import Predictor
from model.taxonomy import Appendix, AppendixResolution, Taxonomy
from service.guidance import GuidanceBook

logger = logging.getLogger(__name__)

PACKAGE_FORMAT = 2
"""Bumped when the package's shape changes; the page refuses a format it does not know, and
stores the package again when the format differs from the one it kept (2: ``fusion``)."""

WEB_DIR = Path(__file__).resolve().parent / "web"
RUNTIME_DIR = WEB_DIR / "node_modules" / "onnxruntime-web" / "dist"
RUNTIME_FILES: tuple[str, ...] = (
    "ort.wasm.min.mjs",
    "ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm",
)
"""The files of ``onnxruntime-web`` the page loads: the WASM build's module and its binary."""
RUNTIME_URL = "/static/vendor/ort/"

OFFLINE_MODALITY = "camera"
"""The page identifies offline only camera photos (x-ray scans come from scanner systems)."""


@dataclass(frozen=True)
class WebRuntime:
    """Where the browser runtime's files are, and whether all of them are present."""

    folder: Path
    files: tuple[str, ...] = RUNTIME_FILES

    @property
    def available(self) -> bool:
        """True when every file the page needs is installed."""
        return all((self.folder / name).is_file() for name in self.files)

    def path_of(self, name: str) -> Path | None:
        """The file ``name`` when it is one of the runtime's files and is installed."""
        if name not in self.files:
            return None
        path = self.folder / name
        return path if path.is_file() else None

    def size(self) -> int:
        """Bytes of the installed files (0 when absent)."""
        return sum(
            (self.folder / n).stat().st_size for n in self.files if (self.folder / n).is_file()
        )


def web_runtime(folder: Path = RUNTIME_DIR) -> WebRuntime:
    """The browser runtime at ``folder`` (default: ``service/web/node_modules``)."""
    return WebRuntime(folder)


def _f32(array: np.ndarray[Any, Any]) -> dict[str, Any]:
    """A float32 array as ``{shape, data}`` with little-endian base64 data."""
    return _encoded(array, "<f4")


def _f16(array: np.ndarray[Any, Any]) -> dict[str, Any]:
    """A float16 array as :func:`_f32` gives a float32 one (half the bytes: the kNN reference
    bank, which the bundle stores as float16 already)."""
    return _encoded(array, "<f2")


def _encoded(array: np.ndarray[Any, Any], dtype: str) -> dict[str, Any]:
    values = np.ascontiguousarray(array, dtype=dtype)
    return {"shape": list(values.shape), "data": base64.b64encode(values.tobytes()).decode()}


def _resolution(resolution: AppendixResolution) -> dict[str, Any]:
    appendix = None if resolution.appendix is Appendix.NOT_LISTED else resolution.appendix.value
    return {"appendix": appendix, "explanation": resolution.explanation}


def _appendix_table(taxonomy: Taxonomy, taxon_id: str) -> dict[str, Any]:
    """Every distinct resolution for ``taxon_id`` and which origin country gets which.

    ``default`` (no country given) and ``by_country`` index ``resolutions``; a country not in
    ``by_country`` gets ``default`` too."""
    resolutions: list[dict[str, Any]] = []
    index_of: dict[tuple[str | None, str], int] = {}

    def index(resolution: AppendixResolution) -> int:
        entry = _resolution(resolution)
        key = (entry["appendix"], entry["explanation"])
        if key not in index_of:
            index_of[key] = len(resolutions)
            resolutions.append(entry)
        return index_of[key]

    default = index(taxonomy.appendix_for(taxon_id, None))
    by_country: dict[str, int] = {}
    for code in taxonomy.countries:
        position = index(taxonomy.appendix_for(taxon_id, code))
        if position != default:
            by_country[code] = position
    return {"default": default, "by_country": by_country, "resolutions": resolutions}


def _taxon_entry(taxonomy: Taxonomy, taxon_id: str) -> dict[str, Any]:
    taxon = taxonomy.get(taxon_id)
    return {
        "id": taxon.id,
        "scientific_name": taxon.scientific_name,
        "rank": str(taxon.rank),
        "kind": taxon.kind,
        "common_names": dict(taxon.common_names),
        "appendix": _appendix_table(taxonomy, taxon.id),
    }


def _lineage(taxonomy: Taxonomy, taxon_id: str) -> list[str]:
    """A CITES label's taxon and its ancestors up to and including ``class`` (the roll-up's
    walk in :func:`model.decision.rollup`)."""
    chain: list[str] = []
    for taxon in taxonomy.lineage(taxon_id):
        chain.append(taxon.id)
        if str(taxon.rank) == ROLLUP_LIMIT:
            break
    return chain


def model_file(predictor: Predictor) -> Path:
    """The ONNX file the predictor runs (the one the page downloads: same precision)."""
    precision: Precision = "int8" if predictor.precision == "int8" else "fp32"
    return predictor.bundle.model_path(precision)


def build_offline_package(
    predictor: Predictor, taxonomy: Taxonomy, guidance: GuidanceBook
) -> dict[str, Any]:
    """The offline package of ``predictor`` (see the module docstring and docs/web.md)."""
    bundle = predictor.bundle
    manifest = bundle.manifest
    path = model_file(predictor)
    labels = [label.to_dict() for label in bundle.labels]
    taxon_ids: set[str] = set()
    lineages: dict[str, list[str]] = {}
    for label in bundle.labels:
        if label.taxon_id:
            taxon_ids.add(label.taxon_id)
        if label.kind == "cites" and label.taxon_id:
            lineages[label.id] = _lineage(taxonomy, label.taxon_id)
            taxon_ids.update(lineages[label.id])
    ood: dict[str, Any] | None = None
    if isinstance(bundle.ood, OodModel) and manifest.ood is not None:
        model = bundle.ood
        ood = {
            "method": manifest.ood.method,
            "threshold": manifest.ood.threshold,
            "normalize": model.normalize,
            "residual_scale": model.residual_scale,
            "center": _f32(model.center),
            "basis": _f32(model.basis),
            "whitening": _f32(model.whitening),
            "class_centers": _f32(model.class_centers),
        }
    elif isinstance(bundle.ood, KnnOodModel) and manifest.ood is not None:
        # kNN on the frozen ImageNet branch's features (``reference_features``): the page scores
        # the same bank the service does (float16, as stored).
        ood = {
            "method": manifest.ood.method,
            "threshold": manifest.ood.threshold,
            "k": bundle.ood.k,
            "bank": _f16(bundle.ood.bank),
        }
    elif manifest.ood is not None:
        # A detector the page cannot score: named, so that the page refuses to identify
        # offline instead of answering without the domain check.
        ood = {"method": manifest.ood.method, "threshold": manifest.ood.threshold}
    return {
        "format": PACKAGE_FORMAT,
        "version": bundle.version,
        "created_at": manifest.created_at,
        "modality": OFFLINE_MODALITY,
        "offline_capable": OFFLINE_MODALITY in manifest.modalities,
        "model": {
            "url": f"/v1/models/active/offline-model?version={bundle.version}",
            "file": path.name,
            "precision": predictor.precision,
            "sha256": manifest.files[path.name],
            "size": path.stat().st_size,
            "input": "image",
            "outputs": {
                "logits": "logits",
                "features": "features",
                # what the out-of-domain model scores (another output for kNN bundles)
                "ood_features": predictor.ood_output,
            },
        },
        "preprocess": manifest.preprocess.to_dict(),
        "temperature": manifest.temperature,
        "labels": labels,
        "thresholds": manifest.thresholds.to_dict(),
        "decision_rules": list(DECISION_RULES),
        "rollup": {"ranks": list(ROLLUP_RANKS), "limit": ROLLUP_LIMIT, "lineages": lineages},
        "ood": ood,
        # several photos of one item (model/fusion.py, as POST /v1/identifications:views)
        "fusion": {"probabilities": "mean", "ood": DEFAULT_OOD_FUSION, "max_views": MAX_VIEWS},
        "taxa": {taxon_id: _taxon_entry(taxonomy, taxon_id) for taxon_id in sorted(taxon_ids)},
        "countries": sorted(taxonomy.countries),
        "guidance": guidance.to_dict(),
        "limitations": list(manifest.limitations),
        "metrics": dict(manifest.metrics),
    }


class OfflinePackages:
    """Builds each model's package once (the OOD arrays dominate its size; docs/web.md)."""

    def __init__(self, taxonomy: Taxonomy, guidance: GuidanceBook) -> None:
        self._taxonomy = taxonomy
        self._guidance = guidance
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}

    def get(self, predictor: Predictor) -> dict[str, Any]:
        """The package of ``predictor`` (cached by bundle folder and version)."""
        key = (str(predictor.bundle.path), predictor.version)
        package = self._cache.get(key)
        if package is None:
            package = build_offline_package(predictor, self._taxonomy, self._guidance)
            self._cache = {key: package}  # only the active model's package is kept
            logger.info("offline package built for model %s", predictor.version)
        return package
