"""Model backends side by side: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime INT8.

Every backend runs the same network (the bundle's ONNX files; for PyTorch the same architecture
built by :func:`model.backbone.create_model` and wrapped like the export, so it computes logits,
features and class activation maps too) on the same random batch, with every CPU this process may
use. The machine flips between fast and slow states, so the backends are interleaved over rounds
and each round also re-measures the fp32 matmul peak; ratios are taken within a round and the
median over rounds is reported.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import cpu_count, median, time_repeated
from bench.peak import fp32_peak, model_gflops

logger = logging.getLogger(__name__)

BATCHES = (1, 8, 32)


def _ort_runner(model_path: Path, threads: int) -> Callable[[np.ndarray], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> object:
        return session.run(outputs, {input_name: batch})

    return run


def _torch_runner(
    num_classes: int, threads: int, *, channels_last: bool = False
) -> Callable[[np.ndarray], object]:
    import torch

    from model.backbone import ExportWrapper, create_model

    torch.set_num_threads(threads)
    wrapper = ExportWrapper(create_model(num_classes, pretrained=False)).eval()
    if channels_last:
        wrapper = wrapper.to(memory_format=torch.channels_last)

    def run(batch: np.ndarray) -> object:
        tensor = torch.from_numpy(batch)
        if channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return wrapper(tensor)

    return run


def bundle_facts(bundle_dir: Path) -> dict[str, Any]:
    """Input size, class count and model files of a bundle, read from its manifest."""
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    preprocess = manifest.get("preprocess", {})
    size = int(preprocess.get("crop_size") or preprocess.get("input_size") or 224)
    labels_file = bundle_dir / manifest.get("labels_file", "labels.tsv")
    num_classes = max(0, len(labels_file.read_text().strip().splitlines()) - 1)
    models = manifest.get("models", {})
    return {
        "version": manifest.get("version", bundle_dir.name),
        "size": size,
        "num_classes": num_classes,
        "fp32": bundle_dir / models["fp32"] if models.get("fp32") else None,
        "int8": bundle_dir / models["int8"] if models.get("int8") else None,
    }


def quantised_copy(fp32_path: Path, calibration_images: int = 64) -> Path | None:
    """An INT8 copy of ``fp32_path`` made with the product's own quantiser
    (:func:`training.export.quantize_int8`), cached by the fp32 file's hash; None if unavailable.

    Only for timing: the copy is not gated on accuracy.
    """
    from bench.common import CACHE_DIR
    from bench.images import load_set, write_load_set
    from model.bundle import sha256_file
    from model.preprocess import PreprocessConfig

    try:
        from training.export import quantize_int8
    except ImportError as exc:
        logger.warning("no INT8 model and no quantiser (%s): INT8 not measured", exc)
        return None
    out = CACHE_DIR / f"int8-{sha256_file(fp32_path)[:16]}.onnx"
    if not out.is_file():
        folder = write_load_set(load_set(calibration_images), CACHE_DIR / "calibration")
        paths = sorted(folder.glob("*.jpg"))[:calibration_images]
        logger.info(
            "quantising %s to INT8 for timing (%d calibration images)", fp32_path, len(paths)
        )
        quantize_int8(fp32_path, out, paths, PreprocessConfig())
    return out


def run(
    bundle_dir: Path,
    *,
    rounds: int = 3,
    seconds: float = 1.5,
    batches: tuple[int, ...] = BATCHES,
    threads: int | None = None,
    with_channels_last: bool = True,
    peak_n: int = 2048,
    quantise_missing_int8: bool = True,
) -> dict[str, Any]:
    """Measure every backend at every batch size, interleaved over ``rounds``.

    Returns:
        ``{"backends": {name: {batch: {"latency_ms", "images_per_s", "per_round"}}},
        "peak": {...}, "gflop_per_image", "share_of_peak": {name: {batch: fraction}},
        "ratios": {...}}``.
    """
    threads = threads or cpu_count()
    facts = bundle_facts(bundle_dir)
    size = facts["size"]
    runners: dict[str, Callable[[np.ndarray], object]] = {}
    try:
        runners["pytorch_eager"] = _torch_runner(facts["num_classes"], threads)
        if with_channels_last:
            runners["pytorch_eager_channels_last"] = _torch_runner(
                facts["num_classes"], threads, channels_last=True
            )
    except ImportError as exc:
        logger.warning("PyTorch backends skipped: %s", exc)
    if facts["fp32"] is not None:
        runners["onnxruntime_fp32"] = _ort_runner(facts["fp32"], threads)
    int8_source = "bundle"
    int8_path = facts["int8"]
    if int8_path is None and facts["fp32"] is not None and quantise_missing_int8:
        int8_path = quantised_copy(facts["fp32"])
        int8_source = "quantised by the benchmark (the bundle has no INT8 file)"
    if int8_path is not None:
        runners["onnxruntime_int8"] = _ort_runner(int8_path, threads)

    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, size, size), dtype=np.float32) for b in batches}
    per_round: dict[str, dict[int, list[float]]] = {n: {b: [] for b in batches} for n in runners}
    peaks: list[float] = []
    for round_index in range(rounds):
        peaks.append(fp32_peak(n=peak_n, repeats=3)["peak_gflops"])
        for name, runner in runners.items():
            for batch in batches:
                data = inputs[batch]
                times = time_repeated(
                    functools.partial(runner, data), min_time_s=seconds, min_repeats=3, warmup=2
                )
                per_round[name][batch].append(float(np.median(times)))
        logger.info(
            "model round %d/%d done (peak %.0f GFLOP/s)", round_index + 1, rounds, peaks[-1]
        )

    try:
        gflop = model_gflops(facts["num_classes"], size)
    except ImportError:
        gflop = float("nan")
    results: dict[str, Any] = {
        "bundle": facts["version"],
        "int8_source": int8_source if "onnxruntime_int8" in runners else None,
        "threads": threads,
        "rounds": rounds,
        "input_size": size,
        "gflop_per_image": gflop,
        "peak_gflops_per_round": peaks,
        "peak_gflops": median(peaks),
        "backends": {},
        "share_of_peak": {},
    }
    for name, by_batch in per_round.items():
        results["backends"][name] = {}
        results["share_of_peak"][name] = {}
        for batch, latencies in by_batch.items():
            ips = [batch / t for t in latencies]
            results["backends"][name][str(batch)] = {
                "latency_ms": median(latencies) * 1000.0,
                "images_per_s": median(ips),
                "images_per_s_per_round": ips,
            }
            shares = [i * gflop / p for i, p in zip(ips, peaks, strict=True)]
            results["share_of_peak"][name][str(batch)] = median(shares)
    results["ratios"] = _ratios(per_round, batches)
    return results


def _ratios(
    per_round: dict[str, dict[int, list[float]]], batches: tuple[int, ...]
) -> dict[str, Any]:
    """Median over rounds of each backend's throughput divided by PyTorch eager's."""
    base = per_round.get("pytorch_eager")
    if base is None:
        return {}
    ratios: dict[str, Any] = {}
    for name, by_batch in per_round.items():
        if name == "pytorch_eager":
            continue
        ratios[name] = {
            str(b): median([t0 / t for t0, t in zip(base[b], by_batch[b], strict=True)])
            for b in batches
        }
    return ratios
