"""Does test-time augmentation pay for its cost? The default bundle, on its own test split.

Each test image (the ``test`` rows of the bundle's ``seen-images.tsv``: photos the bundle never
trained or tuned on) is answered three ways by the served model (INT8 when the bundle has it):

* ``single``: the photo as the service sees it today;
* ``flip``: the mean of the calibrated probabilities of the photo and its mirror image;
* ``flip+zoom``: the same with a third view, the central 85% of the photo.

For each way: top-1 accuracy with a 95% bootstrap interval (all test images, the ivory set and
the timber set), balanced accuracy, ECE, the decisions that matter to an officer (all-clears on
CITES material, "uncertain" answers), a paired McNemar test against ``single``, and the model
time per photo (each view is one more image through the network; decoding is not repeated).

Run: ``.venv/bin/python -m bench.tta [--bundle weights/default] [--out docs/benchmarks/tta.json]``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from bench.common import machine_info, shared_data_dir, write_json

logger = logging.getLogger(__name__)

ZOOM = 0.85
VARIANTS = ("single", "flip", "flip+zoom")
BATCH = 16


def views(image: Image.Image, variant: str) -> list[Image.Image]:
    """The images one photo is answered from under ``variant``."""
    result = [image]
    if variant in ("flip", "flip+zoom"):
        result.append(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    if variant == "flip+zoom":
        width, height = image.size
        dx, dy = int(width * (1 - ZOOM) / 2), int(height * (1 - ZOOM) / 2)
        result.append(image.crop((dx, dy, width - dx, height - dy)))
    return result


def test_samples(bundle_path: Path, data_dir: Path) -> list[tuple[Path, str, str]]:
    """(path, dataset class, set name) of the bundle's test images
    (:func:`training.seen_images.split_samples`)."""
    from model.bundle import load_bundle
    from training.data import DataError
    from training.seen_images import split_samples

    try:
        found = split_samples(load_bundle(bundle_path), data_dir, ("test",))
    except DataError as exc:
        raise SystemExit(str(exc)) from None
    return [(sample.path, sample.label, name) for sample, name in found["test"]]


def answer(
    predictor: Any,
    images: Sequence[Image.Image],
    variant: str,
) -> tuple[NDArray[np.float64], list[str], float]:
    """Fused probabilities (N, C), decision kinds and model seconds for ``images``."""
    from model.decision import decide
    from model.preprocess import image_to_array

    config = predictor.preprocess
    manifest = predictor.bundle.manifest
    probabilities: list[NDArray[np.float64]] = []
    kinds: list[str] = []
    seconds = 0.0
    for start in range(0, len(images), BATCH):
        chunk = images[start : start + BATCH]
        per_photo = [views(image, variant) for image in chunk]
        arrays = np.stack([image_to_array(v, config) for group in per_photo for v in group])
        began = time.perf_counter()
        predictions = predictor.predict_arrays(arrays)
        seconds += time.perf_counter() - began
        index = 0
        for group in per_photo:
            parts = predictions[index : index + len(group)]
            index += len(group)
            fused = np.mean([p.probabilities for p in parts], axis=0).astype(np.float64)
            scores = [p.ood_score for p in parts]
            ood = None if any(s is None for s in scores) else float(np.mean(scores))
            decision = decide(
                fused.astype(np.float32),
                predictor.labels,
                predictor.taxonomy,
                manifest.thresholds,
                None,
                ood_score=ood,
                ood_threshold=None if manifest.ood is None else manifest.ood.threshold,
            )
            probabilities.append(fused)
            kinds.append(decision.kind)
    return np.stack(probabilities), kinds, seconds


def interval(statistic: Callable[[NDArray[np.int64]], float], n: int) -> list[float]:
    """95% bootstrap interval of ``statistic`` over ``n`` items, rounded."""
    from training.metrics import bootstrap_ci

    low, high = bootstrap_ci(statistic, n, resamples=1000)
    return [round(low, 4), round(high, 4)]


def _mean_of(values: NDArray[np.bool_]) -> Callable[[NDArray[np.int64]], float]:
    """The statistic "mean of ``values`` at the resampled indices", for :func:`interval`."""
    return lambda indices: float(values[indices].mean())


def figures(
    y_true: NDArray[np.int64],
    probs: NDArray[np.float64],
    kinds: Sequence[str],
    sets: Sequence[str],
    cites: NDArray[np.bool_],
    num_classes: int,
) -> dict[str, Any]:
    """Accuracy (with intervals), balanced accuracy, ECE and decision shares of one variant."""
    from training.metrics import balanced_accuracy, expected_calibration_error

    correct = probs.argmax(axis=1) == y_true
    result: dict[str, Any] = {
        "accuracy": round(float(correct.mean()), 4),
        "accuracy_ci95": interval(_mean_of(correct), len(correct)),
        "balanced_accuracy": round(balanced_accuracy(y_true, probs.argmax(axis=1), num_classes), 4),
        "ece": round(expected_calibration_error(y_true, probs), 4),
    }
    for name in sorted(set(sets)):
        subset = correct[np.array([s == name for s in sets])]
        result[f"accuracy_{name}"] = round(float(subset.mean()), 4)
        result[f"accuracy_{name}_ci95"] = interval(_mean_of(subset), len(subset))
    kinds_array = np.array(kinds)
    all_clear = kinds_array == "lookalike"
    result["all_clear_on_cites"] = round(float(all_clear[cites].mean()), 4)
    result["uncertain"] = round(float(np.mean(kinds_array == "uncertain")), 4)
    result["outside_training_domain"] = round(
        float(np.mean(kinds_array == "outside_training_domain")), 4
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Measure each variant on the bundle's test split and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="weights/default")
    parser.add_argument("--data-dir", help="the shared data folder (default: ../shared/data)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    parser.add_argument("--out", default="docs/benchmarks/tta.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from model.predictor import Predictor
    from training.evaluation import bundle_label_map
    from training.metrics import mcnemar

    data_dir = Path(args.data_dir) if args.data_dir else shared_data_dir()
    predictor = Predictor(Path(args.bundle), threads=args.threads)
    label_map = bundle_label_map(predictor.bundle)
    samples = test_samples(Path(args.bundle), data_dir)
    ids = [label.id for label in predictor.labels]
    y_true = np.array([ids.index(label_map.classes[label]) for _, label, _ in samples])
    sets = [name for _, _, name in samples]
    cites = np.array([predictor.labels[i].kind == "cites" for i in y_true])
    logger.info(
        "%d test images (%s)",
        len(samples),
        ", ".join(f"{s}: {sets.count(s)}" for s in sorted(set(sets))),
    )
    images = [Image.open(path).convert("RGB") for path, _, _ in samples]
    size = predictor.preprocess.input_size
    predictor.predict_arrays(np.zeros((1, 3, size, size), dtype=np.float32))  # warm-up

    results: dict[str, Any] = {}
    correct_single: NDArray[np.bool_] | None = None
    for variant in VARIANTS:
        probs, kinds, seconds = answer(predictor, images, variant)
        result = figures(y_true, probs, kinds, sets, cites, len(ids))
        result["model_ms_per_photo"] = round(seconds * 1000 / len(images), 2)
        correct = probs.argmax(axis=1) == y_true
        if correct_single is None:
            correct_single = correct
        else:
            test = mcnemar(correct_single, correct)
            result["vs_single_mcnemar"] = {
                "single_only": test.b,
                "variant_only": test.c,
                "p_value": round(test.p_value, 4),
            }
        results[variant] = result
        logger.info("%s: %s", variant, result)
    payload = {
        "command": " ".join(["python -m bench.tta", *(argv or [])]),
        "bundle": predictor.bundle.manifest.version,
        "precision": predictor.precision,
        "images": len(samples),
        "machine": machine_info(),
        "variants": results,
    }
    write_json(Path(args.out), payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
