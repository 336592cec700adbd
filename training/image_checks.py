"""Measure the image checks that run before the model on the real sets in ../shared/data.

For every image of each set: decode, preprocess and check it exactly as the predictor does
(:func:`model.checks.prepare_input` with the default :class:`~model.preprocess.PreprocessConfig`
or a bundle's): the quality gate (:func:`model.quality.assess_quality`) and the scanner-image
detector (:func:`model.modality.detect_modality`). Prints, per set, how many images each
check refuses or flags (with a 95% Wilson interval), and the refused files. The figures are
in docs/model.md.

    python -m training.image_checks --data-root ../shared/data [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from model.bundle import load_bundle
from model.checks import prepare_input
from model.preprocess import PreprocessConfig
from training.metrics import wilson_interval

logger = logging.getLogger(__name__)

CAMERA_SETS = ("met-ivory", "wood-trade-groups", "imagenet-sample")
SCANNER_SETS = ("xray-baggage", "xray-backgrounds")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class SetRates:
    """What the checks did on one set."""

    name: str
    images: int = 0
    refused: list[str] = field(default_factory=list)
    problems: Counter[str] = field(default_factory=Counter)
    scanner: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary with 95% intervals."""
        return {
            "set": self.name,
            "images": self.images,
            "quality_refused": len(self.refused),
            "quality_refused_rate": _rate(len(self.refused), self.images),
            "quality_problems": dict(self.problems),
            "quality_refused_files": self.refused,
            "looks_like_scanner": len(self.scanner),
            "looks_like_scanner_rate": _rate(len(self.scanner), self.images),
            "looks_like_scanner_files": self.scanner if self.name not in SCANNER_SETS else [],
        }


def _rate(count: int, total: int) -> dict[str, float]:
    low, high = wilson_interval(count, total)
    return {"rate": count / total if total else 0.0, "low": low, "high": high}


def image_files(folder: Path) -> list[Path]:
    """The images of a set (any depth), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def measure_set(folder: Path, config: PreprocessConfig) -> SetRates:
    """Run both checks on every image of ``folder``."""
    rates = SetRates(folder.name)
    for path in image_files(folder):
        _array, checks = prepare_input(path.read_bytes(), config)
        rates.images += 1
        if not checks.quality.usable:
            rates.refused.append(str(path.relative_to(folder)))
            rates.problems.update(checks.quality.problems)
        if checks.modality.looks_like_scanner:
            rates.scanner.append(str(path.relative_to(folder)))
    return rates


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--bundle", type=Path, help="use this bundle's preprocessing")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_bundle(args.bundle).manifest.preprocess if args.bundle else PreprocessConfig()
    results: list[SetRates] = []
    for name in (*CAMERA_SETS, *SCANNER_SETS):
        folder = args.data_root / name
        if not folder.is_dir():
            logger.error("%s: not found; pass --data-root", folder)
            return 2
        results.append(measure_set(folder, config))
    camera = [r for r in results if r.name in CAMERA_SETS]
    total = sum(r.images for r in camera)
    refused = sum(len(r.refused) for r in camera)
    flagged = sum(len(r.scanner) for r in camera)
    for r in results:
        logger.info(
            "%-18s %5d images: quality refused %3d (%.2f%%) %s; looks like a scanner %3d (%.2f%%)",
            r.name,
            r.images,
            len(r.refused),
            100 * len(r.refused) / r.images,
            dict(r.problems),
            len(r.scanner),
            100 * len(r.scanner) / r.images,
        )
    low, high = wilson_interval(refused, total)
    logger.info(
        "camera sets: quality refused %d / %d = %.2f%% (95%% CI %.2f-%.2f%%); "
        "scanner false positives %d / %d = %.2f%%",
        refused,
        total,
        100 * refused / total,
        100 * low,
        100 * high,
        flagged,
        total,
        100 * flagged / total,
    )
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
