"""Model backends side by side: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime INT8.

Every backend runs the same network (the bundle's ONNX files; for PyTorch the same architecture
built by :func:`training.backbone.create_model` and wrapped like the export, so it computes logits,
features and class activation maps too) on the same random batch, with every CPU this process may
use. Each backend lives in its own process and waits idle while another is timed (in one process
PyTorch's OpenMP threads and BLAS threads keep spinning and slow the next backend down). The
machine flips between fast and slow states, so the backends are interleaved over rounds and each
round also re-measures the fp32 matmul peak; ratios are taken within a round and the median over
rounds is reported.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
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
    """ONNX Runtime with the product predictor's own session options for batch work
    (:func:`model.predictor.session_options`, spinning on; the service turns spinning off)."""
    import onnxruntime as ort

    from model.predictor import session_options

    options = session_options(threads, spin=True)
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

    from training.backbone import ExportWrapper, create_model

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
    ood = manifest.get("ood") or {}
    return {
        "version": manifest.get("version", bundle_dir.name),
        "size": size,
        "num_classes": num_classes,
        # the output the bundle's out-of-domain check scores: an answer needs it as well
        "ood_output": ood.get("features", "features") if ood else None,
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
    from model.digest import sha256_file
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


def _worker_main(conn: Any, spec: tuple[Any, ...], threads: int, size: int, peak_n: int) -> None:
    """A backend's own process: build the runner, then time what the parent asks for."""
    try:
        if spec[0] == "peak":
            conn.send(("ready", None))
            while (message := conn.recv()) is not None:
                conn.send(("ok", fp32_peak(n=peak_n, repeats=3)["peak_gflops"]))
            return
        if spec[0] == "torch":
            runner = _torch_runner(spec[1], threads, channels_last=spec[2])
        else:
            runner = _ort_runner(Path(spec[1]), threads)
        rng = np.random.default_rng(0)
        inputs: dict[int, np.ndarray] = {}
        conn.send(("ready", None))
        while (message := conn.recv()) is not None:
            batch, seconds = message
            if batch not in inputs:
                inputs[batch] = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
            times = time_repeated(
                functools.partial(runner, inputs[batch]),
                min_time_s=seconds,
                min_repeats=3,
                warmup=2,
            )
            conn.send(("ok", float(np.median(times))))
    except Exception as exc:  # reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


class _Workers:
    """One process per backend (and one for the peak), started together, idle between asks.

    Backends in one process disturb each other: PyTorch's OpenMP threads and BLAS threads keep
    spinning after their work and steal the cores from whatever runs next.
    """

    def __init__(
        self, specs: dict[str, tuple[Any, ...]], *, threads: int, size: int, peak_n: int
    ) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._conns: dict[str, Any] = {}
        self._procs: list[Any] = []
        for name, spec in {"peak": ("peak",), **specs}.items():
            parent, child = context.Pipe()
            process = context.Process(
                target=_worker_main, args=(child, spec, threads, size, peak_n), daemon=True
            )
            process.start()
            self._conns[name] = parent
            self._procs.append(process)
        for name in self._conns:
            self._answer(name)

    def _answer(self, name: str) -> Any:
        status, value = self._conns[name].recv()
        if status == "error":
            raise RuntimeError(f"backend {name} failed: {value}")
        return value

    def peak(self) -> float:
        """Measured fp32 GEMM peak right now (GFLOP/s)."""
        self._conns["peak"].send(True)
        return float(self._answer("peak"))

    def measure(self, name: str, batch: int, seconds: float) -> float:
        """Median seconds per call of backend ``name`` at ``batch``."""
        self._conns[name].send((batch, seconds))
        return float(self._answer(name))

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        for conn in self._conns.values():
            with contextlib.suppress(OSError):
                conn.send(None)
        for process in self._procs:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()


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
    specs: dict[str, tuple[Any, ...]] = {}
    if importlib.util.find_spec("torch") is not None:
        specs["pytorch_eager"] = ("torch", facts["num_classes"], False)
        if with_channels_last:
            specs["pytorch_eager_channels_last"] = ("torch", facts["num_classes"], True)
    else:
        logger.warning("PyTorch backends skipped: torch is not installed")
    if facts["fp32"] is not None:
        specs["onnxruntime_fp32"] = ("onnx", str(facts["fp32"]), False)
    int8_source = "bundle"
    int8_path = facts["int8"]
    if int8_path is None and facts["fp32"] is not None and quantise_missing_int8:
        int8_path = quantised_copy(facts["fp32"])
        int8_source = "quantised by the benchmark (the bundle has no INT8 file)"
    if int8_path is not None:
        specs["onnxruntime_int8"] = ("onnx", str(int8_path), False)

    per_round: dict[str, dict[int, list[float]]] = {n: {b: [] for b in batches} for n in specs}
    peaks: list[float] = []
    with _Workers(specs, threads=threads, size=size, peak_n=peak_n) as workers:
        for round_index in range(rounds):
            peaks.append(workers.peak())
            for name in specs:
                for batch in batches:
                    per_round[name][batch].append(workers.measure(name, batch, seconds))
            logger.info(
                "model round %d/%d done (peak %.0f GFLOP/s)", round_index + 1, rounds, peaks[-1]
            )

    try:
        gflop = model_gflops(facts["num_classes"], size)
    except ImportError:
        gflop = float("nan")
    results: dict[str, Any] = {
        "bundle": facts["version"],
        "int8_source": int8_source if "onnxruntime_int8" in specs else None,
        "isolation": "each backend in its own process, idle while the others run",
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
            results["backends"][name][str(batch)]["share_of_peak_per_round"] = shares
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
