"""``cites-vision xray synth`` and ``cites-vision xray evaluate`` (see docs/xray.md).

Registered through the ``cites_vision.commands`` entry points; scipy, xraydb and onnxruntime
load inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from model.cli import CommandError

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

logger = logging.getLogger(__name__)

SHARED = Path("../shared/data")


def register(subparsers: Subparsers) -> None:
    """``cites-vision xray``: synthetic x-ray data by projection, and screening metrics."""
    p = subparsers.add_parser(
        "xray",
        help="synthetic x-ray images by projection; screening metrics of an x-ray bundle",
        description="Synthetic x-ray training data and the evaluation of x-ray bundles "
        "(docs/xray.md).",
    )
    commands = p.add_subparsers(dest="xray_command", metavar="COMMAND", required=True)
    synth = commands.add_parser(
        "synth",
        help="project objects cut from camera photos into real baggage scans",
        description="Cut objects out of camera photos, give them a thickness and a material, "
        "form dual-energy Beer-Lambert transmission in the scans' pseudo-colour palette and "
        "project it into real baggage scans; writes images, train.csv, test.csv and synth.json.",
    )
    synth.add_argument("--out", type=Path, required=True, help="new folder for the dataset")
    synth.add_argument(
        "--ivory",
        type=Path,
        default=SHARED / "met-ivory" / "ivory",
        help="photos of ivory/bone objects on plain backgrounds",
    )
    synth.add_argument(
        "--porcelain",
        type=Path,
        default=SHARED / "met-ivory" / "non_ivory",
        help="photos of ceramic/porcelain look-alikes on plain backgrounds",
    )
    synth.add_argument(
        "--timber",
        type=Path,
        default=SHARED / "wood-trade-groups",
        help="wood surface photos (rectangular pieces are cut from them)",
    )
    synth.add_argument(
        "--backgrounds",
        type=Path,
        default=SHARED / "xray-backgrounds" / "scans",
        help="real pseudo-colour baggage scans to project into",
    )
    synth.add_argument(
        "--exclude-like",
        type=Path,
        default=None,
        help="leave out backgrounds whose content matches a scan in this folder "
        "(e.g. ../shared/data/xray-baggage, where false alarms are measured)",
    )
    synth.add_argument("--per-class", type=int, default=200, help="training images per class")
    synth.add_argument("--test-per-class", type=int, default=60, help="test images per class")
    synth.add_argument(
        "--test-share",
        type=float,
        default=0.3,
        help="share of backgrounds and source objects kept for test (0.3)",
    )
    synth.add_argument("--max-side", type=int, default=512, help="longer side of the images")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_run_synth)

    evaluate = commands.add_parser(
        "evaluate",
        help="detection rate at fixed false-alarm rates, false alarms on real scans",
        description="Detection rate at 1%% and 5%% false-alarm rates on held-out composites "
        "(thresholds set on their plain scans), false alarms on real scans without wildlife, "
        "and how well the heat-map box overlaps the placed object.",
    )
    evaluate.add_argument("--bundle", type=Path, required=True, help="the x-ray bundle folder")
    evaluate.add_argument(
        "--data", type=Path, required=True, help="test.csv written by 'cites-vision xray synth'"
    )
    evaluate.add_argument(
        "--real",
        type=Path,
        default=None,
        help="folder of real scans holding no wildlife (e.g. ../shared/data/xray-baggage)",
    )
    evaluate.add_argument("--precision", choices=("auto", "fp32", "int8"), default="auto")
    evaluate.add_argument("--out", type=Path, help="write the report as JSON to this file")
    evaluate.set_defaults(func=_run_evaluate)


def _run_synth(args: argparse.Namespace) -> int:
    from training.xray_synth import SynthConfig, SynthError, synthesise

    if args.per_class < 1 or args.test_per_class < 1:
        raise CommandError("--per-class and --test-per-class must be at least 1")
    if not 0.05 <= args.test_share <= 0.8:
        raise CommandError("--test-share must be between 0.05 and 0.8")
    if args.max_side < 64:
        raise CommandError("--max-side must be at least 64 pixels")
    config = SynthConfig(
        ivory_dir=args.ivory,
        porcelain_dir=args.porcelain,
        timber_dir=args.timber,
        backgrounds_dir=args.backgrounds,
        out=args.out,
        per_class=args.per_class,
        test_per_class=args.test_per_class,
        exclude_like=args.exclude_like,
        test_share=args.test_share,
        seed=args.seed,
        max_side=args.max_side,
    )
    try:
        summary = synthesise(config)
    except (SynthError, OSError) as exc:
        raise CommandError(str(exc)) from exc
    images = summary["images"]
    sys.stdout.write(
        f"{args.out}: {images} images; manifests train.csv and test.csv, summary synth.json\n"
    )
    if summary["exclusion_checked_against"] is None:
        sys.stdout.write(
            "note: backgrounds were not checked against the scans false alarms are measured on "
            "(--exclude-like)\n"
        )
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from model.bundle import BundleError, load_bundle
    from model.imageio import ImageError
    from training.xray_eval import (
        read_synth_manifest,
        real_scan_items,
        score_images,
        screening_report,
    )

    try:
        bundle = load_bundle(args.bundle)
    except BundleError as exc:
        raise CommandError(str(exc)) from exc
    if "xray" not in bundle.manifest.modalities:
        raise CommandError(f"bundle {bundle.version} is not an x-ray bundle")
    if not args.data.is_file():
        raise CommandError(f"{args.data}: no such manifest (test.csv of 'xray synth')")
    try:
        composites = score_images(bundle, read_synth_manifest(args.data), precision=args.precision)
        real = (
            score_images(bundle, real_scan_items(args.real), precision=args.precision)
            if args.real is not None
            else []
        )
        report = screening_report(composites, real)
    except (ImageError, OSError, KeyError, ValueError) as exc:
        raise CommandError(f"cannot evaluate: {exc}") from exc
    report = {"bundle": bundle.version, "data": str(args.data), "real": str(args.real), **report}
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return 0
