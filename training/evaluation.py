"""Evaluate a bundle on labelled images through the real predictor.

Images go through ``model.preprocess.preprocess_bytes`` (the one preprocessing) and
``model.predictor.Predictor`` (the ONNX session the service runs, INT8 when the bundle ships it
unless ``precision`` says otherwise), so the figures are those of the bundle as served.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from model.bundle import Bundle
from model.labels import Label
from training.data import DataError, LabelMap, Sample
from training.inputs import batches, load_inputs
from training.report import classification_report, write_report

logger = logging.getLogger(__name__)

BATCH = 32


def bundle_label_map(bundle: Bundle) -> LabelMap:
    """The dataset class -> label id table the bundle was trained with (label ids map to
    themselves too, so data foldered by label id also works)."""
    classes = {label.id: label.id for label in bundle.labels}
    recorded = bundle.manifest.training.get("label_map", {})
    if isinstance(recorded, dict) and isinstance(recorded.get("classes"), dict):
        classes.update({str(k): str(v) for k, v in recorded["classes"].items()})
    return LabelMap.from_labels(bundle.labels, classes)


def mappable(sample: Sample, label_map: LabelMap) -> bool:
    """True when the sample's dataset class maps to one of the bundle's labels."""
    return sample.label in label_map.classes


@dataclass
class Predictions:
    """What the predictor returned for a list of images."""

    probs: NDArray[np.float64]
    ood_scores: NDArray[np.float64] | None
    decisions: list[str]
    decision_labels: list[str | None] = field(default_factory=list)
    """The label id that decided (``label_threshold``/``lookalike_threshold``), else None."""


def predict_paths(
    bundle: Bundle, paths: Sequence[Path], *, precision: str = "auto", desc: str = "predict"
) -> Predictions:
    """Run the bundle's predictor over image files, in batches, with a progress bar."""
    from model.predictor import Predictor

    predictor = Predictor(bundle, precision=precision)  # type: ignore[arg-type]
    config = bundle.manifest.preprocess
    probs: list[NDArray[np.float64]] = []
    scores: list[float | None] = []
    decisions: list[str] = []
    decision_labels: list[str | None] = []
    with tqdm(total=len(paths), desc=desc, unit="img", dynamic_ncols=True) as bar:
        for chunk in batches(list(paths), BATCH):
            for prediction in predictor.predict_arrays(load_inputs(chunk, config)):
                probs.append(np.asarray(prediction.probabilities, dtype=np.float64))
                score = getattr(prediction, "ood_score", None)
                scores.append(None if score is None else float(score))
                decisions.append(prediction.decision.kind)
                decision_labels.append(prediction.decision.label_id)
            bar.update(len(chunk))
    stacked = np.stack(probs) if probs else np.zeros((0, len(bundle.labels)))
    ood = None if any(s is None for s in scores) else np.asarray(scores, dtype=np.float64)
    return Predictions(stacked, ood, decisions, decision_labels)


def ood_scores_for(
    bundle: Bundle, paths: Sequence[Path], *, precision: str = "auto"
) -> NDArray[np.float64]:
    """OOD scores of the served model for image files (the bundle must have an OOD model)."""
    result = predict_paths(bundle, paths, precision=precision, desc="ood scores")
    if result.ood_scores is None:
        raise DataError(f"bundle {bundle.version} has no OOD model")
    return result.ood_scores


def uncalibrated(probs: NDArray[np.float64], temperature: float) -> NDArray[np.float64]:
    """Undo temperature scaling: softmax(T * log p) equals softmax(logits)."""
    logp = np.log(np.clip(probs, 1e-300, 1.0)) * temperature
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    out: NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


@dataclass
class EvalResult:
    """Predictions on labelled images and the report computed from them."""

    labels: tuple[Label, ...]
    y_true: NDArray[np.int64]
    probs: NDArray[np.float64]
    probs_uncalibrated: NDArray[np.float64]
    report: dict[str, Any]
    groups: list[str] | None = None

    def subset_report(self, mask: Sequence[bool]) -> dict[str, Any]:
        """The full report on the images where ``mask`` is true (e.g. those the bundle never
        saw: :mod:`training.seen_images`)."""
        keep = np.asarray(mask, dtype=bool)
        if not keep.any():
            raise DataError("no images in the subset")
        return classification_report(
            self.y_true[keep],
            self.probs[keep],
            self.labels,
            probs_uncalibrated=self.probs_uncalibrated[keep],
            groups=None
            if self.groups is None
            else [g for g, k in zip(self.groups, keep, strict=True) if k],
        )

    decisions: list[str] = field(default_factory=list)
    """Each image's decision kind, in sample order."""
    decision_labels: list[str | None] = field(default_factory=list)
    """Each image's deciding label id (None for roll-ups, uncertain and outside the domain)."""

    @property
    def correct(self) -> NDArray[np.bool_]:
        """Per-image top-1 correctness."""
        out: NDArray[np.bool_] = self.probs.argmax(axis=1) == self.y_true
        return out

    def write(self, folder: Path, name: str) -> list[Path]:
        """Write the JSON, Markdown and PNG reports; returns their paths."""
        return write_report(
            folder,
            name,
            self.report,
            self.y_true,
            self.probs,
            probs_uncalibrated=self.probs_uncalibrated,
            title=f"{name}: {len(self.y_true)} images",
        )


def evaluate_samples(
    bundle: Bundle,
    samples: Sequence[Sample],
    label_map: LabelMap | None = None,
    *,
    precision: str = "auto",
    ood_threshold: float | None = None,
) -> EvalResult:
    """Predict every sample with the bundle and compute the full report.

    ``ood_threshold`` overrides the bundle's threshold for the ``ood_flagged`` share (used while
    training, before the final threshold is written).
    """
    label_map = label_map or bundle_label_map(bundle)
    unknown = sorted({s.label for s in samples if not mappable(s, label_map)})
    if unknown:
        raise DataError(
            f"classes {', '.join(unknown)} are not labels of bundle {bundle.version} nor in its "
            f"label map (known: {', '.join(sorted(label_map.classes))})"
        )
    if not samples:
        raise DataError("no images to evaluate")
    index = {label.id: label.index for label in bundle.labels}
    y_true = np.array([index[label_map.classes[s.label]] for s in samples], dtype=np.int64)
    result = predict_paths(
        bundle, [s.path for s in samples], precision=precision, desc=f"evaluate {bundle.version}"
    )
    raw = uncalibrated(result.probs, bundle.manifest.temperature)
    report = classification_report(
        y_true,
        result.probs,
        bundle.labels,
        probs_uncalibrated=raw,
        groups=[s.source for s in samples],
    )
    report["temperature"] = round(bundle.manifest.temperature, 4)
    report["precision"] = bundle.resolve_precision(precision)  # type: ignore[arg-type]
    report["decisions"] = dict(sorted(Counter(result.decisions).items()))
    if result.ood_scores is not None:
        threshold = ood_threshold
        if threshold is None and bundle.manifest.ood is not None:
            threshold = bundle.manifest.ood.threshold
        if threshold is not None:
            report["ood_flagged"] = round(float(np.mean(result.ood_scores > threshold)), 4)
    return EvalResult(
        bundle.labels,
        y_true,
        result.probs,
        raw,
        report,
        groups=[s.source for s in samples],
        decisions=result.decisions,
        decision_labels=result.decision_labels,
    )
