"""What reduced-scale JPEG decoding (Pillow's draft mode) saves in preprocessing.

Times decode + preprocess (``model.preprocess``) of the benchmark images from ``bench.images``:
a 4032x3024 phone-sized JPEG and a 1600x1200 JPEG (real photos from ``../shared/data`` enlarged,
quality 90), each decoded in full and at reduced scale, and a 2048x2048 16-bit scanner TIFF
(no draft mode for TIFF: the time is decoding plus percentile windowing). Reports the median of
the timed runs, the size of the decoded image and, for the JPEGs, how far the reduced-scale
model input is from the full-decode one (mean absolute difference, normalised units).

Run: ``.venv/bin/python -m bench.bench_preprocess [--runs N] [--markdown]`` (under a minute).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import machine_info, median
from bench.images import BenchImage, medium_jpeg, phone_jpeg, scanner_tiff
from model.preprocess import PreprocessConfig, decode_image, image_to_array, preprocess_bytes

logger = logging.getLogger(__name__)


def _median_ms(func: Callable[[], object], runs: int) -> float:
    func()  # warm-up (page cache, lazy imports)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return round(median(times) * 1000.0, 1)


def _measure(image: BenchImage, config: PreprocessConfig, runs: int) -> list[dict[str, Any]]:
    """Rows for one image: full decode, and reduced-scale decode where it applies."""
    data = image.data
    full = decode_image(data)
    reduced = decode_image(data, target_shorter=config.decode_shorter)
    full_input = image_to_array(full.image, config)
    rows = [
        {
            "image": image.name,
            "size": f"{image.width}x{image.height}",
            "file_mb": round(len(data) / 1e6, 2),
            "decode": "full",
            "decoded_size": "x".join(map(str, full.image.size)),
            "decoded_mb": round(full.image.width * full.image.height * 3 / 1e6, 1),
            "decode_ms": _median_ms(lambda: decode_image(data), runs),
            "total_ms": _median_ms(lambda: image_to_array(decode_image(data).image, config), runs),
            "mean_abs_diff": 0.0,
        }
    ]
    if reduced.reduced_scale:
        shorter = config.decode_shorter
        difference = np.abs(preprocess_bytes(data, config) - full_input)
        rows.append(
            {
                **rows[0],
                "decode": "reduced (draft)",
                "decoded_size": "x".join(map(str, reduced.image.size)),
                "decoded_mb": round(reduced.image.width * reduced.image.height * 3 / 1e6, 1),
                "decode_ms": _median_ms(lambda: decode_image(data, target_shorter=shorter), runs),
                "total_ms": _median_ms(lambda: preprocess_bytes(data, config), runs),
                "mean_abs_diff": round(float(difference.mean()), 4),
            }
        )
    return rows


def run(runs: int = 15) -> dict[str, Any]:
    """Measure every benchmark image; returns plain JSON-ready data."""
    config = PreprocessConfig()
    rows: list[dict[str, Any]] = []
    for make in (phone_jpeg, medium_jpeg, scanner_tiff):
        image = make()
        logger.info("measuring %s", image.name)
        rows.extend(_measure(image, config, runs))
    return {
        "benchmark": "preprocess",
        "runs": runs,
        "statistic": "median",
        "config": config.to_dict(),
        "machine": machine_info(),
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| image | decode | decoded size | decoded MB | decode ms | decode + preprocess ms "
        "| mean abs diff vs full |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['image']} ({row['size']}, {row['file_mb']} MB) | {row['decode']} "
            f"| {row['decoded_size']} | {row['decoded_mb']} | {row['decode_ms']} "
            f"| {row['total_ms']} | {row['mean_abs_diff']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: print the JSON result (or a Markdown table with ``--markdown``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=15, help="timed runs per measurement")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = run(args.runs)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        sys.stdout.write("\n" + markdown(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
