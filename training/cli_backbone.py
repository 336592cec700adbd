"""``cites-vision backbone check``: prove the pretrained backbone is loaded right, on real photos.

Runs the ImageNet head of :func:`training.backbone.create_model` through the project's own
preprocessing (:func:`model.preprocess.preprocess_bytes` with the backbone's own) over a
folder laid out like ``../shared/data/imagenet-sample`` (``<NNN_wnid_name>/<image>.jpg``, the
leading number being the ImageNet class index, or a ``labels.tsv`` with ``index wnid name path``)
and prints top-1 / top-5 accuracy. A faithful load reaches 0.883 top-1 on that folder; the
classic mistake (timm's ``efficientnet_lite0``, symmetric padding) about 0.81.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.cli import CommandError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
_CLASS_FOLDER = re.compile(r"^(\d+)_")


@dataclass(frozen=True)
class CheckResult:
    """Accuracy of the ImageNet head on a labelled folder."""

    top1: float
    top5: float
    images: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "top1": round(self.top1, 4),
            "top5": round(self.top5, 4),
            "images": self.images,
            "seconds": round(self.seconds, 1),
        }


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``backbone`` (with the ``check`` action) to the dispatcher."""
    parser = subparsers.add_parser(
        "backbone", help="check the pretrained backbone on labelled ImageNet photos"
    )
    actions = parser.add_subparsers(dest="backbone_action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check", help="top-1/top-5 of the ImageNet head over a folder like imagenet-sample"
    )
    check.add_argument("--data", type=Path, required=True, help="folder of <NNN_wnid_name>/*.jpg")
    check.add_argument("--limit", type=int, default=None, help="use N images, evenly spread")
    check.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="images per forward pass (8: on a 2-core CPU PyTorch runs batches of 8 faster per "
        "image than batches of 32)",
    )
    check.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    check.add_argument(
        "--min-top1", type=float, default=None, help="exit 1 when top-1 is below this"
    )
    check.add_argument(
        "--backbone",
        choices=("lite0", "lite1", "lite2"),
        default="lite0",
        help="which EfficientNet-Lite variant to check (default lite0)",
    )
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(func=run_check)


def find_examples(data: Path) -> list[tuple[Path, int]]:
    """(image path, ImageNet class index) pairs of a folder, sorted by path."""
    if not data.is_dir():
        raise CommandError(f"--data {data}: no such folder")
    table = data / "labels.tsv"
    examples: list[tuple[Path, int]] = []
    if table.is_file():
        lines = table.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines[1:], start=2):
            cells = line.split("\t")
            if len(cells) < 4 or not cells[0].strip().isdigit():
                raise CommandError(f"{table}:{number}: expected 'index wnid name path'")
            examples.append((data / cells[3].strip(), int(cells[0])))
    else:
        for folder in sorted(p for p in data.iterdir() if p.is_dir()):
            match = _CLASS_FOLDER.match(folder.name)
            if not match:
                continue
            for image in sorted(folder.iterdir()):
                if image.suffix.lower() in IMAGE_SUFFIXES:
                    examples.append((image, int(match.group(1))))
    if not examples:
        raise CommandError(
            f"--data {data}: no images found (expected <NNN_wnid_name>/<image>.jpg folders "
            "or a labels.tsv with index, wnid, name, path)"
        )
    for path, index in examples:
        if not 0 <= index < 1000:
            raise CommandError(f"{path}: class index {index} is outside ImageNet's 0..999")
    return sorted(examples)


def spread(examples: Sequence[tuple[Path, int]], limit: int | None) -> list[tuple[Path, int]]:
    """At most ``limit`` examples taken evenly across the list (all when ``limit`` is None)."""
    if limit is None or limit >= len(examples):
        return list(examples)
    if limit < 1:
        raise CommandError(f"--limit must be at least 1, got {limit}")
    step = len(examples) / limit
    return [examples[int(i * step)] for i in range(limit)]


def _batches(
    examples: Sequence[tuple[Path, int]], batch_size: int
) -> Iterator[Sequence[tuple[Path, int]]]:
    for start in range(0, len(examples), batch_size):
        yield examples[start : start + batch_size]


def evaluate_folder(
    examples: Sequence[tuple[Path, int]], *, batch_size: int = 8, backbone: str = "lite0"
) -> CheckResult:
    """Top-1/top-5 of the pretrained ImageNet head of ``backbone`` over ``examples``, with the
    backbone's own preprocessing."""
    import numpy as np
    import torch

    from model.preprocess import ImageError, preprocess_bytes
    from training.backbone import backbone_spec, create_model

    spec = backbone_spec(backbone)

    def load(item: tuple[Path, int]) -> np.ndarray:
        path = item[0]
        try:
            return preprocess_bytes(path.read_bytes(), spec.preprocess)
        except (OSError, ImageError) as exc:
            raise CommandError(f"{path}: {exc}") from exc

    started = time.perf_counter()
    model = create_model(None, pretrained=True, backbone=spec.name).to(
        memory_format=torch.channels_last
    )
    top1 = top5 = 0
    with ThreadPoolExecutor(max_workers=2) as pool, torch.inference_mode():
        for batch in _batches(examples, batch_size):
            arrays = list(pool.map(load, batch))
            inputs = torch.from_numpy(np.stack(arrays)).to(memory_format=torch.channels_last)
            best5 = model(inputs).topk(5, dim=1).indices.numpy()
            targets = np.array([index for _, index in batch])
            top1 += int(np.sum(best5[:, 0] == targets))
            top5 += int(np.sum(np.any(best5 == targets[:, None], axis=1)))
    seconds = time.perf_counter() - started
    count = len(examples)
    return CheckResult(top1 / count, top5 / count, count, seconds)


def run_check(args: argparse.Namespace) -> int:
    """Handler of ``backbone check``."""
    try:
        import torch
    except ImportError as exc:
        raise CommandError(
            f"'backbone check' needs torch and timm ({exc}); pip install -e '.[train]'"
        ) from exc
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.threads is not None:
        if args.threads < 1:
            raise CommandError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    examples = spread(find_examples(args.data), args.limit)
    logger.info("checking the backbone on %d images from %s", len(examples), args.data)
    result = evaluate_folder(examples, batch_size=args.batch_size, backbone=args.backbone)
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
    else:
        sys.stdout.write(
            f"top-1 {result.top1:.3f}  top-5 {result.top5:.3f}  on {result.images} images "
            f"({result.seconds:.1f} s, {result.images / result.seconds:.1f} img/s)\n"
        )
    if args.min_top1 is not None and result.top1 < args.min_top1:
        sys.stderr.write(
            f"error: top-1 {result.top1:.3f} is below --min-top1 {args.min_top1:.3f}; "
            "the pretrained weights are not loaded faithfully\n"
        )
        return 1
    return 0
