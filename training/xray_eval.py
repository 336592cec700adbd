"""How an x-ray bundle is judged: detection rate at fixed false-alarm rates, as screening is.

The alarm score of an image is the summed probability of the bundle's ``cites`` labels
(suspected ivory or bone, suspected timber). On held-out composites (``test.csv`` of
``cites-vision xray synth``: backgrounds and source objects the bundle never saw), the alarm
threshold for a false-alarm rate ``f`` is set on the plain scans (no wildlife product) so that at
most a share ``f`` of them alarms; the detection rate is the share of ivory/bone and timber
composites at or above it. Porcelain look-alikes alarming at that threshold are reported apart.
On real scans without wildlife (``../shared/data/xray-baggage``) every alarm is a false alarm:
the rate is reported at the same thresholds and for the bundle's own decision (a ``taxon``
answer). Box quality: intersection over union of the heat-map box with the placed object's box.
Intervals are Wilson 95 % score intervals.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from model.bundle import Bundle
from model.heatmap import box_in_image

logger = logging.getLogger(__name__)

FALSE_ALARM_RATES = (0.01, 0.05)
WILDLIFE_CLASSES = ("ivory_bone", "timber")
LOOKALIKE_CLASS = "porcelain"
PLAIN_CLASS = "plain"


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % by default); (0, 1) for no trials."""
    if total == 0:
        return (0.0, 1.0)
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class ScoredImage:
    """One evaluated image: its alarm score, the served decision and the box found."""

    path: Path
    label: str
    alarm: float
    decision: str
    top_label: str
    box: tuple[int, int, int, int] | None
    true_box: tuple[int, int, int, int] | None


def score_images(
    bundle: Bundle,
    items: Sequence[tuple[Path, str, tuple[int, int, int, int] | None]],
    *,
    precision: str = "auto",
) -> list[ScoredImage]:
    """Run the served predictor over (path, dataset class, true box) items."""
    from PIL import Image

    from model.imageio import decode_image
    from model.predictor import Predictor
    from model.preprocess import image_to_array

    predictor = Predictor(bundle, precision=precision)  # type: ignore[arg-type]
    config = bundle.manifest.preprocess
    wildlife = np.array([label.kind == "cites" for label in bundle.labels])
    results = []
    for path, label, true_box in items:
        decoded = decode_image(path.read_bytes(), target_shorter=config.decode_shorter)
        image: Image.Image = decoded.image
        prediction = predictor.predict_arrays(image_to_array(image, config)[None])[0]
        box = (
            box_in_image(prediction.box, image.size, config) if prediction.box is not None else None
        )
        if box is not None and decoded.image.size != decoded.original_size:
            sx = decoded.original_size[0] / image.size[0]
            sy = decoded.original_size[1] / image.size[1]
            box = (round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy))
        results.append(
            ScoredImage(
                path=path,
                label=label,
                alarm=float(prediction.probabilities[wildlife].sum()),
                decision=prediction.decision.kind,
                top_label=prediction.top[0].label.id,
                box=box,
                true_box=true_box,
            )
        )
    return results


def read_synth_manifest(path: Path) -> list[tuple[Path, str, tuple[int, int, int, int] | None]]:
    """(image path, dataset class, placed box) from a synth manifest (train.csv/test.csv)."""
    items: list[tuple[Path, str, tuple[int, int, int, int] | None]] = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            box_text = (row.get("box") or "").strip()
            box = None
            if box_text:
                x0, y0, x1, y1 = (int(v) for v in box_text.split())
                box = (x0, y0, x1, y1)
            items.append((path.parent / row["path"], row["label"], box))
    return items


def threshold_for(negatives: npt.NDArray[np.float64], rate: float) -> float:
    """The lowest threshold at which at most ``rate`` of ``negatives`` reach it (alarm >= t)."""
    ordered = np.sort(negatives)[::-1]
    allowed = math.floor(rate * len(ordered))
    if allowed >= len(ordered):
        return 0.0
    return float(np.nextafter(ordered[allowed], np.inf))


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _rate(hits: int, total: int) -> dict[str, Any]:
    low, high = wilson(hits, total)
    return {
        "rate": round(hits / total, 4) if total else None,
        "hits": hits,
        "images": total,
        "ci95": [round(low, 4), round(high, 4)],
    }


def screening_report(
    composites: Sequence[ScoredImage], real_scans: Sequence[ScoredImage] = ()
) -> dict[str, Any]:
    """Detection at fixed false-alarm rates on composites, false alarms on real scans."""
    plain = np.array([s.alarm for s in composites if s.label == PLAIN_CLASS])
    if len(plain) == 0:
        raise ValueError("the held-out composites hold no plain scans to set the thresholds on")
    report: dict[str, Any] = {"operating_points": [], "real_scans": None}
    for rate in FALSE_ALARM_RATES:
        threshold = threshold_for(plain, rate)
        point: dict[str, Any] = {
            "target_false_alarm_rate": rate,
            "threshold": round(threshold, 6),
            "false_alarms_plain": _rate(int((plain >= threshold).sum()), len(plain)),
        }
        positives = [s for s in composites if s.label in WILDLIFE_CLASSES]
        point["detection_rate"] = _rate(
            sum(s.alarm >= threshold for s in positives), len(positives)
        )
        for name in WILDLIFE_CLASSES:
            subset = [s for s in composites if s.label == name]
            point[f"detection_rate_{name}"] = _rate(
                sum(s.alarm >= threshold for s in subset), len(subset)
            )
        lookalikes = [s for s in composites if s.label == LOOKALIKE_CLASS]
        point["lookalike_alarm_rate"] = _rate(
            sum(s.alarm >= threshold for s in lookalikes), len(lookalikes)
        )
        if real_scans:
            point["false_alarms_real_scans"] = _rate(
                sum(s.alarm >= threshold for s in real_scans), len(real_scans)
            )
        report["operating_points"].append(point)
    served = [s for s in composites if s.label in WILDLIFE_CLASSES]
    report["served_decision"] = {
        "wildlife_answered_taxon": _rate(sum(s.decision == "taxon" for s in served), len(served)),
        # the worst error: ivory or timber answered "no wildlife product" or "porcelain"
        "wildlife_answered_lookalike": _rate(
            sum(s.decision == "lookalike" for s in served), len(served)
        ),
        "wildlife_decisions": _counts(s.decision for s in served),
        "plain_answered_taxon": _rate(
            sum(s.decision == "taxon" for s in composites if s.label == PLAIN_CLASS), len(plain)
        ),
    }
    if real_scans:
        report["real_scans"] = {
            "images": len(real_scans),
            "served_false_alarms": _rate(
                sum(s.decision == "taxon" for s in real_scans), len(real_scans)
            ),
            "top_labels": _counts(s.top_label for s in real_scans),
            "decisions": _counts(s.decision for s in real_scans),
        }
    overlaps = [
        iou(s.box, s.true_box)
        for s in composites
        if s.label in (*WILDLIFE_CLASSES, LOOKALIKE_CLASS)
        and s.true_box is not None
        and s.box is not None
    ]
    boxed = [s for s in composites if s.label in (*WILDLIFE_CLASSES, LOOKALIKE_CLASS)]
    report["boxes"] = {
        "objects": len(boxed),
        "with_box": len(overlaps),
        "mean_iou": round(float(np.mean(overlaps)), 4) if overlaps else None,
        "iou_at_least_0.3": _rate(sum(v >= 0.3 for v in overlaps), len(boxed)),
    }
    return report


def _counts(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))


def real_scan_items(folder: Path) -> list[tuple[Path, str, None]]:
    """Every image under ``folder`` (e.g. xray-baggage/<class>/*.jpg), as plain scans."""
    paths = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".png")
    )
    return [(p, PLAIN_CLASS, None) for p in paths]
