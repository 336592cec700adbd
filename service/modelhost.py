"""The serving models and their hot swap: one active bundle per modality.

:class:`ModelHost` owns the active :class:`~model.predictor.Predictor` of each modality
(``camera`` for officers' photos, ``xray`` for scanner images): both serve at once. Activation
names the modality, or takes the bundle's own when it has one. Activation loads the
bundle, verifies it (``load_bundle`` checks every file's sha256), builds a predictor and warms
it up on a dummy batch, all in a worker thread; only then is the reference swapped, in one
assignment. A request holds the predictor it started with until it finishes, so requests in
flight complete on the old model, and a bundle that fails leaves the old one serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.bundle import (
    LABELS_FILE,
    BundleError,
    BundleSummary,
    Precision,
    list_bundles,
    load_bundle,
)
from model.labels import LabelsError, read_labels
from model.predictor import Predictor
from model.taxonomy import Taxonomy
from model.vocabulary import MODALITIES

logger = logging.getLogger(__name__)


class ModelNotFoundError(LookupError):
    """No bundle with that version under the weights directory."""


class ModelLoadError(RuntimeError):
    """A bundle failed to load, verify or warm up."""


class ModelUnavailableError(LookupError):
    """An earlier model version is wanted (for a heat map) but cannot be loaded any more."""


class ModalityMismatchError(ValueError):
    """The bundle was not trained for the modality it is asked to serve."""


EARLIER_MODELS_KEPT = 1
"""Earlier predictors kept loaded for heat maps of older identifications (least recent out)."""


@dataclass(frozen=True)
class ModelEntry:
    """A bundle found under the weights directory."""

    summary: BundleSummary
    active: bool
    active_for: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (see docs/api.md, Model)."""
        s = self.summary
        return {
            "active_for": list(self.active_for),
            "version": s.version,
            "folder": s.path.name,
            "created_at": s.created_at,
            "recommended": s.recommended,
            "parent_version": s.parent_version,
            "metrics": dict(s.metrics),
            "path": str(s.path),
            "active": self.active,
            "valid": s.error is None,
            "error": s.error,
        }


def describe_predictor(predictor: Predictor, modality: str | None = None) -> dict[str, Any]:
    """An active model as ``GET /v1/models/active`` shows it (``modality``: the slot it serves;
    default the bundle's first modality)."""
    bundle = predictor.bundle
    manifest = bundle.manifest
    return {
        "modality": modality or manifest.modalities[0],
        "version": bundle.version,
        "folder": bundle.path.name,
        "path": str(bundle.path),
        "created_at": manifest.created_at,
        "backbone": manifest.backbone,
        "modalities": list(manifest.modalities),
        "recommended": manifest.recommended,
        "parent_version": manifest.parent_version,
        "metrics": dict(manifest.metrics),
        "limitations": list(manifest.limitations),
        "thresholds": manifest.thresholds.to_dict(),
        "precision": predictor.precision,
        "input_size": manifest.preprocess.to_dict(),
        "labels": [label.to_dict() for label in bundle.labels],
        "active": True,
        "valid": True,
        "error": None,
    }


class ModelHost:
    """Holds the active predictor of each modality; loads and swaps bundles from a weights
    directory."""

    def __init__(
        self,
        weights_dir: Path,
        *,
        taxonomy: Taxonomy,
        threads: int | None,
        precision: Precision,
        warmup_batch: int,
        batch_threads: int | None = None,
    ) -> None:
        self.weights_dir = weights_dir
        self._taxonomy = taxonomy
        self._threads = threads
        self._batch_threads = batch_threads
        self._precision = precision
        self._warmup_batch = warmup_batch
        self._active: dict[str, Predictor] = {}
        self._swap_lock = asyncio.Lock()
        self._load_lock = threading.Lock()
        self._labels_cache: dict[str, frozenset[str]] = {}
        self._earlier: OrderedDict[str, Predictor] = OrderedDict()
        self._earlier_lock = threading.Lock()

    @property
    def current(self) -> Predictor | None:
        """The camera predictor, else the first active one (None before the first load): the
        model of the single-model API (``GET /v1/models/active`` without ``modality``)."""
        active = self._active
        return active.get("camera") or next(iter(active.values()), None)

    def current_for(self, modality: str) -> Predictor | None:
        """The active predictor for ``modality`` (``camera`` or ``xray``), or None."""
        return self._active.get(modality)

    def actives(self) -> dict[str, Predictor]:
        """Modality -> active predictor (a copy, in modality order)."""
        active = dict(self._active)
        return {m: active[m] for m in MODALITIES if m in active}

    @property
    def swapping(self) -> bool:
        """True while an activation is loading or swapping a bundle."""
        return self._swap_lock.locked()

    def load(self, path: Path) -> Predictor:
        """Load, verify and warm up the bundle at ``path`` (blocking); raises
        :class:`ModelLoadError` with the reason."""
        with self._load_lock:
            try:
                bundle = load_bundle(path, taxonomy=self._taxonomy)
                predictor = Predictor(
                    bundle,
                    taxonomy=self._taxonomy,
                    threads=self._threads,
                    batch_threads=self._batch_threads,
                    precision=self._precision,
                    spin=False,  # the cores are shared with the decode threads
                )
                self._warm_up(predictor)
            except ModelLoadError:
                raise
            except (BundleError, OSError, ValueError, RuntimeError) as exc:
                raise ModelLoadError(f"bundle {path} cannot serve: {exc}") from exc
            logger.info("loaded model %s from %s (%s)", bundle.version, path, predictor.precision)
            return predictor

    def _warm_up(self, predictor: Predictor) -> None:
        """Run dummy batches (1 and the micro-batch size) and check the outputs are sane."""
        size = predictor.preprocess.input_size
        predictor.warmup()
        for batch in sorted({1, self._warmup_batch}):
            dummy = np.zeros((batch, 3, size, size), dtype=np.float32)
            predictions = predictor.predict_arrays(dummy)
            sane = len(predictions) == batch and all(
                p.probabilities.shape == (len(predictor.labels),)
                and bool(np.all(np.isfinite(p.probabilities)))
                and abs(float(p.probabilities.sum()) - 1.0) < 1e-3
                for p in predictions
            )
            if not sane:
                raise ModelLoadError(
                    f"bundle {predictor.bundle.path} failed warm-up: its outputs are not "
                    "probabilities over its labels"
                )

    def set_initial(self, predictor: Predictor, modality: str | None = None) -> None:
        """Install a predictor at start-up, for ``modality`` (default: every modality of its
        bundle)."""
        for slot in self._slots(predictor, modality):
            self._active[slot] = predictor

    @staticmethod
    def _slots(predictor: Predictor, modality: str | None) -> tuple[str, ...]:
        modalities = tuple(predictor.bundle.manifest.modalities)
        if modality is None:
            return modalities
        if modality not in modalities:
            raise ModalityMismatchError(
                f"bundle {predictor.version} was trained on {', '.join(modalities)} images, "
                f"not {modality}; it cannot serve {modality} images"
            )
        return (modality,)

    def entries(self) -> list[ModelEntry]:
        """Every bundle folder under the weights directory, marking the active ones."""
        by_path: dict[Path, list[str]] = {}
        for modality, predictor in self.actives().items():
            by_path.setdefault(predictor.bundle.path.resolve(), []).append(modality)
        found = []
        seen: set[Path] = set()
        for summary in list_bundles(self.weights_dir):
            slots = tuple(by_path.get(summary.path.resolve(), ()))
            seen.add(summary.path.resolve())
            found.append(ModelEntry(summary, bool(slots), slots))
        for predictor in reversed(list(self.actives().values())):
            b = predictor.bundle
            if b.path.resolve() in seen:
                continue
            seen.add(b.path.resolve())
            summary = BundleSummary(
                path=b.path,
                version=b.version,
                created_at=b.manifest.created_at,
                recommended=b.manifest.recommended,
                parent_version=b.manifest.parent_version,
                metrics=b.manifest.metrics,
            )
            found.insert(0, ModelEntry(summary, True, tuple(by_path[b.path.resolve()])))
        return found

    def known_labels(self, version: str) -> frozenset[str]:
        """Label ids of model ``version`` (the active one, or a bundle in the weights dir);
        empty when the version is gone or its labels file unreadable."""
        for current in self.actives().values():
            if current.version == version:
                return frozenset(label.id for label in current.bundle.labels)
        cached = self._labels_cache.get(version)
        if cached is None:
            try:
                labels = read_labels(self.find(version) / LABELS_FILE)
            except (ModelNotFoundError, LabelsError, OSError):
                return frozenset()
            cached = frozenset(label.id for label in labels)
            self._labels_cache[version] = cached
        return cached

    def find(self, version: str) -> Path:
        """The folder of ``version`` under this host's weights directory."""
        return self.find_in(self.weights_dir, version)

    @staticmethod
    def find_in(weights_dir: Path, version: str) -> Path:
        """The folder of ``version`` (matched by manifest version, then by folder name)."""
        summaries = list_bundles(weights_dir)
        for summary in summaries:
            if summary.error is None and summary.version == version:
                return summary.path
        for summary in summaries:
            if summary.path.name == version:
                return summary.path
        known = ", ".join(sorted({s.version for s in summaries})) or "none"
        raise ModelNotFoundError(
            f"no bundle {version!r} under {weights_dir} (known versions: {known})"
        )

    async def activate(
        self,
        version: str,
        persist: Callable[[Predictor, tuple[str, ...]], None] | None = None,
        *,
        modality: str | None = None,
    ) -> tuple[Predictor, tuple[str, ...]]:
        """Load ``version`` off the event loop, then swap it in for ``modality`` (default:
        every modality its bundle was trained on); the old one keeps serving if anything fails.
        ``persist`` (blocking) records the choice before the swap, under the same lock, so that
        concurrent activations persist in the order they swap. Returns the predictor and the
        modalities it now serves. Raises :class:`ModalityMismatchError` when the bundle was not
        trained for ``modality``."""
        path = self.find(version)
        async with self._swap_lock:
            loop = asyncio.get_running_loop()
            predictor = await loop.run_in_executor(None, self.load, path)
            slots = self._slots(predictor, modality)
            if persist is not None:
                await loop.run_in_executor(None, persist, predictor, slots)
            replaced = {slot: self._active.get(slot) for slot in slots}
            active = dict(self._active)
            active.update({slot: predictor for slot in slots})
            self._active = active  # one reference assignment: the swap is atomic
            serving = {p.version for p in active.values()}
            for slot, old in replaced.items():
                if old is not None and old.version not in serving:
                    self._keep_earlier(old)
                logger.info(
                    "activated model %s for %s (was %s)",
                    predictor.version,
                    slot,
                    old.version if old is not None else "none",
                )
            with self._earlier_lock:  # an earlier copy of the version now active
                self._earlier.pop(predictor.version, None)
            return predictor, slots

    async def predictor_for(self, version: str) -> Predictor:
        """The predictor of model ``version``: the active one, or an earlier one.

        Earlier versions (for heat maps of identifications they made) come from the few kept
        loaded since they were swapped out, else are loaded from the weights directory in a
        worker thread. Raises :class:`ModelUnavailableError` with the reason when the version
        is no longer there or no longer loads.
        """
        for current in self.actives().values():
            if current.version == version:
                return current
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._earlier_predictor, version)

    def _earlier_predictor(self, version: str) -> Predictor:
        with self._earlier_lock:
            kept = self._earlier.get(version)
            if kept is not None:
                self._earlier.move_to_end(version)
                return kept
        try:
            predictor = self.load(self.find(version))
        except (ModelNotFoundError, ModelLoadError) as exc:
            raise ModelUnavailableError(str(exc)) from None
        if predictor.version != version:
            raise ModelUnavailableError(
                f"the folder {version!r} now holds model {predictor.version}, not {version}"
            )
        self._keep_earlier(predictor)
        return predictor

    def _keep_earlier(self, predictor: Predictor) -> None:
        """Remember a loaded predictor that is not active, dropping the least recently used."""
        with self._earlier_lock:
            self._earlier[predictor.version] = predictor
            self._earlier.move_to_end(predictor.version)
            while len(self._earlier) > EARLIER_MODELS_KEPT:
                dropped, _ = self._earlier.popitem(last=False)
                logger.info("dropped earlier model %s from memory", dropped)
