"""Trainer subcommands of ``cites-vision``: ``train``, ``retrain``, ``evaluate``, ``compare``,
``export``.

Registered through the ``cites_vision.commands`` entry points; nothing heavy is imported at
module level (torch, onnxruntime and matplotlib load inside the handlers).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.cli import CommandError
from model.vocabulary import MODALITIES

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _add_data(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "--data",
        action="append",
        required=required,
        type=Path,
        metavar="DIR_OR_CSV",
        help="a folder of <class>/<image> or a CSV manifest (path,label,modality,source,"
        "case_id); repeat to combine several",
    )


def _add_limit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="evaluate a deterministic sample of N images (for quick checks)",
    )


def register_train(subparsers: Subparsers) -> None:
    """``cites-vision train``: fine-tune, calibrate, export and write a bundle."""
    p = subparsers.add_parser(
        "train",
        help="train a bundle from labelled images",
        description="Fine-tune the backbone on labelled images, calibrate on a validation split, "
        "export ONNX fp32 and INT8 and write weights/<version>/ (see docs/training.md).",
    )
    _add_data(p, required=False)
    p.add_argument(
        "--config",
        type=Path,
        help="rebuild from a bundle's config.json (options given on the command line override it)",
    )
    p.add_argument(
        "--label-map",
        type=Path,
        help="TSV: dataset_class label_id label_name "
        "taxon_id kind (default: one label per class, for experiments only)",
    )
    p.add_argument("--out", type=Path, help="folder of bundles (default: weights)")
    p.add_argument("--version", help="bundle version = folder name (default: UTC timestamp)")
    p.add_argument(
        "--mode",
        choices=("head", "last", "full"),
        help="train the head on cached features, the last stages, or everything",
    )
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (last/full; default 8)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate of fine-tuning (default 5e-4)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--seed", type=int, help="split and training seed (default 0)")
    p.add_argument(
        "--class-weight-power",
        type=float,
        help="class weights (n / (C * count)) ** power; 1 balances fully, 0 turns "
        "them off (default 0.5)",
    )
    p.add_argument("--val-fraction", type=float, help="share of groups for validation (0.15)")
    p.add_argument("--test-fraction", type=float, help="share of groups for test (0.15)")
    p.add_argument(
        "--augment",
        choices=(*MODALITIES, "phone", "xray-pseudocolour"),
        help="augmentation preset (camera; phone: camera plus photos re-taken as on a phone; "
        "xray: grey scans; xray-pseudocolour: dual-energy colour)",
    )
    p.add_argument(
        "--views",
        type=int,
        help="augmented views cached per training image in "
        "'last' mode (default 2, plus the plain view)",
    )
    p.add_argument(
        "--trained-stages",
        type=int,
        help="stages trained in 'last' mode, counted "
        "from the end (default 1: the last stage and the head)",
    )
    p.add_argument("--modality", choices=MODALITIES, help="modality of the images")
    p.add_argument(
        "--backbone",
        choices=("lite0", "lite1", "lite2"),
        help="ImageNet-pretrained EfficientNet-Lite variant (default lite0: 224 px, the fastest; "
        "lite1 240 px, lite2 260 px; docs/model-card.md compares them)",
    )
    p.add_argument(
        "--input-size",
        type=int,
        metavar="N",
        help="model input side in pixels, 96..512 (default: the backbone's own, 224 for lite0); "
        "the shorter side is resized in the backbone's ratio (256 for 224) before the centre crop",
    )
    p.add_argument(
        "--crop",
        choices=("center", "squash"),
        help="center: centre-crop after resizing the shorter side (photos, default); squash: "
        "the whole image resized to the square (x-ray scans)",
    )
    p.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_const",
        const=False,
        help="start from random weights (tests only)",
    )
    p.add_argument("--cache-dir", help="where backbone features are cached")
    p.add_argument("--no-cache", action="store_true", help="do not cache features on disk")
    p.add_argument("--work-dir", help="checkpoints and intermediate files (default runs/VERSION)")
    p.add_argument(
        "--resume",
        action="store_const",
        const=True,
        help="continue fine-tuning from the work folder's checkpoint",
    )
    p.add_argument(
        "--base",
        help="bundle to compare with; the new one is not recommended "
        "when it is worse on the same test images",
    )
    p.add_argument(
        "--init-from",
        help="warm-start from this bundle's torch weights (model.pt) instead of ImageNet",
    )
    p.add_argument(
        "--no-int8",
        dest="int8",
        action="store_const",
        const=False,
        help="do not write an INT8 model",
    )
    p.add_argument("--int8-max-drop", type=float, help="INT8 accuracy loss allowed (0.01)")
    p.add_argument("--calibration-images", type=int, help="INT8 calibration images (128)")
    p.add_argument(
        "--ood-data",
        help="folder of images that are not products, to measure the "
        "share the OOD detector flags (e.g. ../shared/data/imagenet-sample)",
    )
    p.add_argument(
        "--ood-flag-rate",
        type=float,
        help="share of validation images the OOD threshold may flag (0.05)",
    )
    p.add_argument(
        "--from-bundle",
        metavar="BUNDLE",
        help="reuse BUNDLE's trained fp32 model instead of training (same labels, in the same "
        "order): calibration, OOD model, INT8, evaluation and open-set figures are redone on "
        "the data and label map given",
    )
    p.add_argument(
        "--ood-method",
        choices=("knn-reference", "mahalanobis-finetuned"),
        help="out-of-domain score: Mahalanobis on the fine-tuned features "
        "(mahalanobis-finetuned, default) or kNN on the frozen pretrained backbone's features "
        "(knn-reference: doubles inference)",
    )
    p.add_argument("--ood-k", type=int, help="neighbours of the kNN OOD score (10)")
    p.add_argument(
        "--ood-bank-phone",
        type=float,
        help="knn-reference: share of the training photos whose phone capture (augment "
        "preset 'phone') joins the reference bank, so that photos taken differently are not "
        "mistaken for unknown products (default 0: the photos only)",
    )
    p.add_argument(
        "--max-all-clear",
        type=float,
        help="share of CITES validation images a look-alike label may answer 'not CITES' "
        "(0.05); its threshold is raised until this holds",
    )
    p.add_argument(
        "--all-clear-min-images",
        type=int,
        help="guarded CITES validation images a look-alike needs for --max-all-clear to be "
        "measured (20); with fewer its threshold is at least --all-clear-floor",
    )
    p.add_argument(
        "--all-clear-floor",
        type=float,
        help="least look-alike threshold when its all-clears cannot be measured (0.98)",
    )
    p.add_argument(
        "--target-precision",
        type=float,
        help="precision the decision thresholds aim for on validation (0.95)",
    )
    p.add_argument(
        "--threshold-rule",
        choices=("calibrated", "empirical"),
        help="how a threshold's validation precision is estimated: the mean calibrated "
        "confidence of the accepted predictions, checked against their observed precision's "
        "95%% interval (calibrated, default), or the observed precision alone (empirical)",
    )
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="fine-tune in N processes with DistributedDataParallel (--mode full; launches "
        "torchrun --standalone --nproc-per-node N on this machine)",
    )
    p.add_argument(
        "--overwrite",
        action="store_const",
        const=True,
        help="replace an existing bundle of the same version",
    )
    p.add_argument(
        "--limitation",
        dest="limitations",
        action="append",
        help="a sentence for the manifest's limitations (repeatable)",
    )
    p.set_defaults(func=_run_train)


def _resolve_config(args: argparse.Namespace) -> Any:
    from training.config import ConfigError, TrainConfig

    base: dict[str, Any] = {}
    if args.config:
        try:
            base = TrainConfig.load(args.config).to_dict()
        except (OSError, ValueError) as exc:
            raise CommandError(f"{args.config}: cannot read the configuration ({exc})") from exc
    names = TrainConfig.__dataclass_fields__
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            base[name] = (
                [str(v) for v in value]
                if name in ("data", "limitations")
                else (str(value) if isinstance(value, Path) else value)
            )
    if args.no_cache:
        base["cache_dir"] = None
    try:
        return TrainConfig.from_dict(base)
    except (ConfigError, TypeError) as exc:
        raise CommandError(str(exc)) from exc


NOISY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch._dynamo", "torch.export")


def quiet_exporter_logs() -> None:
    """The ONNX exporter logs every graph pass at INFO; keep the trainer's log readable."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _run_train(args: argparse.Namespace) -> int:
    from model.bundle import BundleError
    from training.data import DataError
    from training.export import ExportError
    from training.pipeline import run

    config = _resolve_config(args)
    if args.nproc is not None and args.nproc != 1:
        return _launch_distributed(config, args.nproc)
    quiet_exporter_logs()
    try:
        path = run(config, command=config.command())
    except (DataError, BundleError, ExportError) as exc:
        raise CommandError(str(exc)) from exc
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        sys.stdout.write(f"{path}\n")
    return 0


def _launch_distributed(config: Any, nproc: int) -> int:
    """Run this ``train`` under torchrun in ``nproc`` local processes; their exit status."""
    import dataclasses
    import os
    import subprocess
    from datetime import UTC, datetime

    from training.distributed import torchrun_command

    if nproc < 2:
        raise CommandError("--nproc must be 1 or more (2 or more to distribute)")
    if config.mode != "full":
        raise CommandError("--nproc applies to --mode full (the other modes train in seconds)")
    if "WORLD_SIZE" in os.environ:
        raise CommandError("--nproc inside torchrun: launch either with torchrun or with --nproc")
    fixed = dataclasses.replace(
        config,
        version=config.version or datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
        threads=config.threads or max(1, (os.cpu_count() or 1) // nproc),
    )
    words = shlex.split(fixed.command())[1:]
    logger.info("launching %d processes: %s", nproc, shlex.join(torchrun_command(nproc, words)))
    done = subprocess.run(torchrun_command(nproc, words), check=False)
    if done.returncode != 0:
        raise CommandError(f"distributed training failed (torchrun exit status {done.returncode})")
    return 0


def _load(path: Path) -> Any:
    from model.bundle import BundleError, load_bundle

    try:
        return load_bundle(path)
    except BundleError as exc:
        raise CommandError(str(exc)) from exc


def _samples(data: list[Path], limit: int | None) -> Any:
    from training.data import DataError, load_datasets, subsample

    try:
        samples = load_datasets(data)
    except DataError as exc:
        raise CommandError(str(exc)) from exc
    if limit is not None:
        if limit < 1:
            raise CommandError("--limit must be a positive number of images")
        samples = subsample(samples, limit)
    return samples


def register_evaluate(subparsers: Subparsers) -> None:
    """``cites-vision evaluate``: metrics of a bundle on labelled images."""
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a bundle on labelled images",
        description="Accuracy, balanced accuracy, per-class precision/recall/F1, top-k, 95% "
        "bootstrap intervals, ECE before and after temperature scaling, confusion matrix and "
        "reliability diagram, through the real predictor. Images the bundle was trained or "
        "tuned on (found by content in its seen-images.tsv) are counted, warned about and "
        "left out of the separate figures on unseen images.",
    )
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder, e.g. weights/default")
    _add_data(p)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    p.add_argument("--out", type=Path, help="write JSON, Markdown and PNG reports here")
    p.add_argument("--precision", choices=("auto", "fp32", "int8"), default="auto")
    _add_limit(p)
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from training.data import DataError
    from training.evaluation import evaluate_samples
    from training.open_set import by_capture
    from training.seen_images import overlap, read_seen_images

    bundle = _load(args.bundle)
    samples = _samples(args.data, args.limit)
    try:
        seen = read_seen_images(bundle)
        result = evaluate_samples(bundle, samples, precision=args.precision)
    except DataError as exc:
        raise CommandError(str(exc)) from exc
    report: dict[str, Any] = {"bundle": bundle.version, **result.report}
    report["by_capture"] = by_capture(samples, result)
    unseen_report: dict[str, Any] | None = None
    if seen is None:
        report["seen_by_bundle"] = None
        logger.warning(
            "bundle %s does not record its training images (no seen-images.tsv): cannot tell "
            "whether these images were trained on",
            bundle.version,
        )
    else:
        found = overlap(seen, [s.path for s in samples])
        report["seen_by_bundle"] = found.counts
        if found.trained_or_tuned:
            counts = found.counts
            logger.warning(
                "%d of %d images were trained (%d) or tuned (%d) on by bundle %s: the figures "
                "on all images are optimistic; see the figures on the %d unseen images",
                found.trained_or_tuned,
                len(samples),
                counts["train"],
                counts["val"],
                bundle.version,
                len(samples) - found.trained_or_tuned,
            )
            if any(found.unseen_mask):
                unseen_report = result.subset_report(found.unseen_mask)
                unseen_report["by_capture"] = by_capture(samples, result, found.unseen_mask)
            report["unseen"] = unseen_report
    if args.out:
        result.write(args.out, "evaluation")
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(_summary_line(f"{bundle.version}: all", report))
        sys.stdout.write(_capture_lines(report["by_capture"]))
        if "unseen" in report:
            if unseen_report is None:
                sys.stdout.write(f"{bundle.version}: unseen: none of these images is unseen\n")
            else:
                sys.stdout.write(_summary_line(f"{bundle.version}: unseen", unseen_report))
                sys.stdout.write(_capture_lines(unseen_report["by_capture"]))
    return 0


def _capture_lines(captures: Mapping[str, Any]) -> str:
    """One line per capture kind (training.open_set.by_capture): accuracy and shares."""
    lines = []
    for capture, figures in captures.items():
        accuracy = figures["accuracy"]
        lo, hi = accuracy["ci95"]
        line = (
            f"  {capture} photos: {figures['images']}, accuracy {accuracy['rate']:.3f} "
            f"(95% {lo:.3f}-{hi:.3f}), sent to an expert {figures['flagged']['rate']:.3f}"
        )
        if figures["all_clear_on_cites"] is not None:
            line += (
                f", all-clear on {figures['cites_images']} CITES photos "
                f"{figures['all_clear_on_cites']['rate']:.3f}"
            )
        lines.append(line + "\n")
    return "".join(lines)


def _summary_line(title: str, report: Mapping[str, Any]) -> str:
    lo, hi = report["accuracy_ci95"]
    return (
        f"{title}: {report['images']} images, accuracy {report['accuracy']:.4f} "
        f"(95% {lo:.4f}-{hi:.4f}), balanced accuracy {report['balanced_accuracy']:.4f}, "
        f"ECE {report['ece']:.4f}\n"
    )


def register_compare(subparsers: Subparsers) -> None:
    """``cites-vision compare``: two bundles on the same images with McNemar's test."""
    p = subparsers.add_parser(
        "compare",
        help="compare two bundles on the same images",
        description="Evaluate bundles A and B on the same images; paired difference with a "
        "bootstrap interval and McNemar's test.",
    )
    p.add_argument("--a", type=Path, required=True, help="bundle A (e.g. the active one)")
    p.add_argument("--b", type=Path, required=True, help="bundle B (e.g. the candidate)")
    _add_data(p)
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--precision", choices=("auto", "fp32", "int8"), default="auto")
    _add_limit(p)
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from training.compare import compare_bundles
    from training.data import DataError

    a, b = _load(args.a), _load(args.b)
    samples = _samples(args.data, args.limit)
    try:
        result = compare_bundles(a, b, samples, precision=args.precision)
    except DataError as exc:
        raise CommandError(str(exc)) from exc
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    else:
        mc = result["mcnemar"]
        sys.stdout.write(
            f"{result['images']} images: A {a.version} {result['a']['accuracy']:.4f}, "
            f"B {b.version} {result['b']['accuracy']:.4f}, difference "
            f"{result['difference']:+.4f} (95% {result['difference_ci95'][0]:+.4f} to "
            f"{result['difference_ci95'][1]:+.4f}); McNemar p = {mc['p_value']:.4g} "
            f"({mc['a_right_b_wrong']} vs {mc['b_right_a_wrong']} discordant)\n"
        )
    return 0


def register_export(subparsers: Subparsers) -> None:
    """``cites-vision export``: (re)quantise a bundle's fp32 model to INT8 with the gate."""
    p = subparsers.add_parser(
        "export",
        help="add or redo the INT8 model of a bundle",
        description="Quantise a bundle's fp32 ONNX model to static INT8 (QDQ, per-channel, "
        "calibrated on --calibration images), check it on --data (at most --max-drop accuracy "
        "loss) and write a new bundle version with it; the fp32 model is copied unchanged.",
    )
    p.add_argument("--bundle", type=Path, required=True, help="source bundle")
    p.add_argument(
        "--calibration",
        type=Path,
        action="append",
        required=True,
        help="images to calibrate activations on (folder or manifest)",
    )
    _add_data(p)
    p.add_argument("--version", required=True, help="version of the new bundle")
    p.add_argument("--out", type=Path, default=Path("weights"), help="folder of bundles")
    p.add_argument("--calibration-images", type=int, default=128)
    p.add_argument("--max-drop", type=float, default=0.01)
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from training.data import DataError
    from training.requantize import requantize_bundle

    bundle = _load(args.bundle)
    try:
        path, gate = requantize_bundle(
            bundle,
            _samples(args.calibration, None),
            _samples(args.data, None),
            out=args.out,
            version=args.version,
            calibration_images=args.calibration_images,
            max_drop=args.max_drop,
            command=shlex.join(["cites-vision", *sys.argv[1:]]),
        )
    except DataError as exc:
        raise CommandError(str(exc)) from exc
    sys.stdout.write(f"{path}: {gate.reason}\n")
    return 0


def register_retrain(subparsers: Subparsers) -> None:
    """``cites-vision retrain``: continue a bundle on feedback, gate it, optionally activate."""
    p = subparsers.add_parser(
        "retrain",
        help="continue a bundle on officers' feedback, gated against it",
        description="Warm-start from the base bundle's weights and recipe, keep its labels and "
        "add labels officers found, replay part of its training data, compare with it on its "
        "test set and on held-out new images, and write a new bundle (see docs/retraining.md).",
    )
    p.add_argument(
        "--base", type=Path, required=True, help="the bundle to continue, e.g. weights/V"
    )
    p.add_argument(
        "--data",
        action="append",
        required=True,
        type=Path,
        metavar="FEEDBACK.tar.gz|DIR|CSV",
        help="a feedback export, its extracted folder, a CSV manifest or a <class>/<image> "
        "folder; repeat to combine",
    )
    p.add_argument("--out", help="folder of bundles (default: weights)")
    p.add_argument("--version", help="version of the new bundle (default: UTC timestamp)")
    p.add_argument(
        "--head-only",
        action="store_true",
        help="quick mode: refit only the classifier on the base's features",
    )
    p.add_argument("--mode", choices=("head", "last", "full"), help="override the base's mode")
    p.add_argument("--epochs", type=int, help="override the base's epochs")
    p.add_argument("--lr", type=float, help="override the base's peak learning rate")
    p.add_argument(
        "--min-new-label-images",
        type=int,
        default=None,
        metavar="N",
        help="images a taxon the base lacks needs to become a new label (default 20)",
    )
    p.add_argument(
        "--replay",
        type=int,
        default=None,
        metavar="N",
        help="images replayed from the base's training split (default: all of them in head "
        "mode, whose features are cached; 400 when fine-tuning; 0 for none)",
    )
    p.add_argument(
        "--replay-data",
        action="append",
        metavar="DIR_OR_CSV",
        help="where the base's training data is, when not at the paths in its config.json",
    )
    p.add_argument("--no-int8", dest="int8", action="store_const", const=False)
    p.add_argument("--cache-dir", help="where backbone features are cached")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--calibration-images", type=int, help="INT8 calibration images")
    p.add_argument(
        "--activate", metavar="URL", help="activate on this running service if recommended"
    )
    p.add_argument("--key", help="admin API key for --activate (default $CITES_API_KEY)")
    p.add_argument(
        "--force",
        action="store_true",
        help="write and activate even when the gate does not recommend it (needs --why)",
    )
    p.add_argument("--why", help="the reason for --force, recorded in the manifest")
    p.add_argument("--json", action="store_true", help="print the gate report as JSON")
    p.set_defaults(func=_run_retrain)


def _run_retrain(args: argparse.Namespace) -> int:
    import os

    from model.bundle import BundleError, load_bundle
    from model.service_client import ServiceClient, ServiceError
    from training.data import DataError
    from training.export import ExportError
    from training.retrain import (
        DEFAULT_MIN_NEW_LABEL_IMAGES,
        RetrainOptions,
        read_report,
        retrain,
    )

    if args.force and not (args.why or "").strip():
        raise CommandError("--force needs --why TEXT: the reason is recorded in the manifest")
    key = args.key or os.environ.get("CITES_API_KEY")
    if args.activate and not key:
        raise CommandError("--activate needs --key KEY (an admin key) or $CITES_API_KEY")
    min_images = args.min_new_label_images
    if min_images is not None and min_images < 1:
        raise CommandError("--min-new-label-images must be at least 1")
    if args.replay is not None and args.replay < 0:
        raise CommandError("--replay must be 0 or more images")
    mode = "head" if args.head_only else args.mode
    options = RetrainOptions(
        out=args.out or str(Path(args.base).resolve().parent),
        version=args.version or "",
        min_new_label_images=DEFAULT_MIN_NEW_LABEL_IMAGES if min_images is None else min_images,
        replay_images=args.replay,
        replay_data=tuple(args.replay_data or ()),
        overrides={
            "mode": mode,
            "epochs": args.epochs,
            "lr": args.lr,
            "int8": args.int8,
            "cache_dir": args.cache_dir,
            "threads": args.threads,
            "calibration_images": args.calibration_images,
        },
        force_why=args.why.strip() if args.force else None,
    )
    quiet_exporter_logs()
    try:
        path = retrain(args.base, args.data, options)
    except (DataError, BundleError, ExportError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    bundle = load_bundle(path)
    report = read_report(bundle)
    gate = report["gate"]
    if args.json:
        sys.stdout.write(
            json.dumps({"bundle": str(path), **report}, indent=2, sort_keys=True) + "\n"
        )
    else:
        verdict = "recommended" if bundle.manifest.recommended else "NOT recommended"
        sys.stdout.write(f"{path}: {verdict}\n")
        for reason in gate.get("reasons", []):
            sys.stdout.write(f"  - {reason}\n")
        sys.stdout.write((path / "gate.md").read_text(encoding="utf-8"))
    if args.activate:
        if not (bundle.manifest.recommended or args.force):
            raise CommandError(
                f"{bundle.version} is not recommended; not activated on {args.activate} "
                "(override with --force --why TEXT)"
            )
        reason = f"retrain from {report['retrain'].get('base')}"
        if args.force and not bundle.manifest.recommended:
            reason = f"gate overridden: {options.force_why}"
        try:
            active = ServiceClient(args.activate, key or "").activate(bundle.version, reason)
        except ServiceError as exc:
            raise CommandError(f"{bundle.version} written but not activated: {exc}") from exc
        sys.stdout.write(f"activated {active['version']} on {args.activate}\n")
    return 0
