"""``cites-vision predict``: run a bundle over image files or folders, offline.

Prints one line per image: with ``--json`` a JSON object (path, decision, top labels, OOD
score, or an error), otherwise a short human line. Unreadable images get an error line and make
the final exit code 1; a missing path or a bad bundle is a user error (exit 2). Needs only
numpy, Pillow and ONNX Runtime (a serving install).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from model.cli import CommandError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".avif", ".tif", ".tiff", ".bmp", ".gif"}
)
BATCH_SIZE = 16


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``predict`` to the dispatcher."""
    parser = subparsers.add_parser(
        "predict", help="suggest CITES taxa for image files or folders with a bundle"
    )
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder weights/<v>")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="images or folders")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--top-k", type=int, default=5, help="labels listed per image")
    parser.add_argument("--country", default=None, help="origin country (ISO alpha-2), e.g. KE")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "int8"), default="auto", help="model file to run"
    )
    parser.set_defaults(func=run_predict)


def iter_images(paths: Sequence[Path]) -> Iterator[Path]:
    """Files named directly, and image files under folders (recursive, sorted)."""
    for path in paths:
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                if found.is_file() and found.suffix.lower() in IMAGE_SUFFIXES:
                    yield found
        elif path.is_file():
            yield path
        else:
            raise CommandError(f"{path}: no such file or folder")


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _human_line(path: Path, record: dict[str, Any]) -> str:
    if "error" in record:
        return f"{path}: error: {record['error']['message']}"
    decision = record["decision"]
    appendix = f" [Appendix {decision['appendix']}]" if decision["appendix"] else ""
    return f"{path}: {decision['kind']}{appendix} ({decision['rule']}): {decision['reason']}"


def run_predict(args: argparse.Namespace) -> int:
    """Handler of ``predict``."""
    from model.bundle import BundleError
    from model.predictor import Predictor, PredictorError
    from model.preprocess import ImageError
    from model.taxonomy import InvalidCountryError, default_taxonomy

    if args.top_k < 1:
        raise CommandError(f"--top-k must be at least 1, got {args.top_k}")
    if args.threads is not None and args.threads < 1:
        raise CommandError(f"--threads must be at least 1, got {args.threads}")
    taxonomy = default_taxonomy()
    try:
        country = taxonomy.normalize_country(args.country)
    except InvalidCountryError as exc:
        raise CommandError(f"--country: {exc}") from exc
    files = list(iter_images(args.paths))
    if not files:
        raise CommandError("no image files found in the given folders")
    try:
        predictor = Predictor(
            args.bundle, taxonomy=taxonomy, threads=args.threads, precision=args.precision
        )
    except (BundleError, PredictorError) as exc:
        raise CommandError(f"--bundle: {exc}") from exc

    failures = 0
    for chunk in _chunks(files, BATCH_SIZE):
        blobs: list[bytes | None] = []
        for path in chunk:
            try:
                blobs.append(path.read_bytes())
            except OSError as exc:
                logger.debug("cannot read %s: %s", path, exc)
                blobs.append(None)
        readable = [b for b in blobs if b is not None]
        results = iter(
            predictor.predict_bytes(
                readable, origin_countries=[country] * len(readable), top_k=args.top_k
            )
        )
        for path, blob in zip(chunk, blobs, strict=True):
            record: dict[str, Any] = {"path": str(path)}
            result = None if blob is None else next(results)
            if result is None:
                record["error"] = {"code": "unreadable", "message": "cannot read the file"}
            elif isinstance(result, ImageError):
                code = getattr(result, "code", type(result).__name__)
                record["error"] = {"code": code, "message": str(result)}
            else:
                record.update(result.to_dict())
                record["version"] = predictor.version
            failures += "error" in record
            line = (
                json.dumps(record, ensure_ascii=False) if args.json else _human_line(path, record)
            )
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    if failures:
        logger.warning("%d of %d images could not be read", failures, len(files))
        return 1
    return 0
