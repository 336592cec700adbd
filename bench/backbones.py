"""Cost per image of each backbone option (EfficientNet-Lite0/1/2), side by side in one run.

For each backbone: the architecture with a 4-way head (the default bundle's label count) is
exported to ONNX as a bundle's model is (:func:`training.export.export_fp32`) and quantised to
INT8 as the pipeline does (:func:`training.export.quantize_int8`, calibrated on real photos of
``../shared/data/met-ivory``, first 3 convolutions kept in fp32). ONNX Runtime then runs each
file with the predictor's session options (one intra-op thread, the service's batch setting, and
every core for a lone image), interleaved over rounds; the median latency per image is reported.
The model's accuracy is not measured here (an untrained head): docs/model-card.md has the
accuracy of each backbone on the same splits.

Run: ``.venv/bin/python -m bench.backbones [--rounds 3] [--out docs/benchmarks/backbones.json]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine_info, median, shared_data_dir, write_json

logger = logging.getLogger(__name__)

BACKBONES = ("lite0", "lite1", "lite2")
CASES = (("batch 1, 2 threads", 1, 2), ("batch 8, 1 thread", 8, 1))


def export_files(short: str, folder: Path, calibration: list[Path]) -> dict[str, Path]:
    """fp32 and INT8 ONNX files of backbone ``short`` with a 4-way head."""
    from training.backbone import backbone_spec, create_model
    from training.export import export_fp32, quantize_int8

    spec = backbone_spec(short)
    size = spec.preprocess.input_size
    model = create_model(4, pretrained=True, backbone=spec.name)
    example = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = export_fp32(model, folder, example)
    int8 = folder / "model.int8.onnx"
    quantize_int8(fp32, int8, calibration, spec.preprocess, fp32_leading_convs=3)
    return {"fp32": fp32, "int8": int8}


def time_file(path: Path, size: int, batch: int, threads: int, seconds: float) -> float:
    """Median milliseconds per image of ONNX Runtime on ``path`` (the service's options)."""
    import onnxruntime as ort

    from model.predictor import session_options

    session = ort.InferenceSession(
        str(path), session_options(threads, spin=False), providers=["CPUExecutionProvider"]
    )
    inputs = {"image": np.zeros((batch, 3, size, size), dtype=np.float32)}
    for _ in range(3):
        session.run(None, inputs)
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 5:
        started = time.perf_counter()
        session.run(None, inputs)
        samples.append(1000.0 * (time.perf_counter() - started) / batch)
    return median(samples)


def run(rounds: int, seconds: float) -> dict[str, Any]:
    """Export every backbone, then time every file and case, interleaved over ``rounds``."""
    from training.backbone import backbone_spec

    photos = sorted((shared_data_dir() / "met-ivory").rglob("*.jpg"))
    calibration = photos[:: max(1, len(photos) // 64)][:64]
    results: dict[str, Any] = {"machine": machine_info(), "rounds": rounds, "backbones": {}}
    with tempfile.TemporaryDirectory(prefix="bench-backbones-") as work:
        files = {b: export_files(b, Path(work) / b, calibration) for b in BACKBONES}
        timings: dict[tuple[str, str, str], list[float]] = {}
        for round_index in range(rounds):
            for short in (
                BACKBONES[round_index % len(BACKBONES) :]
                + BACKBONES[: round_index % len(BACKBONES)]
            ):
                size = backbone_spec(short).preprocess.input_size
                for precision, path in files[short].items():
                    for case, batch, threads in CASES:
                        ms = time_file(path, size, batch, threads, seconds)
                        timings.setdefault((short, precision, case), []).append(ms)
                        logger.info("round %d %s %s %s: %.2f ms/image", round_index + 1, short,
                                    precision, case, ms)  # fmt: skip
        for short in BACKBONES:
            spec = backbone_spec(short)
            entry: dict[str, Any] = {
                "timm": spec.name,
                "input_size": spec.preprocess.input_size,
                "int8_mb": round(files[short]["int8"].stat().st_size / 1e6, 1),
                "fp32_mb": round(files[short]["fp32"].stat().st_size / 1e6, 1),
            }
            for (name, precision, case), values in timings.items():
                if name == short:
                    entry[f"{precision}, {case}"] = round(median(values), 2)
            results["backbones"][short] = entry
    return results


def main() -> None:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per file, case and round")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/backbones.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = run(args.rounds, args.seconds)
    write_json(args.out, results)
    print(json.dumps(results["backbones"], indent=2))


if __name__ == "__main__":
    main()
