"""Multi-view identification: do several photos of one object, fused, give safer answers?

The service fuses up to :data:`model.fusion.MAX_VIEWS` photos of one object into one answer
(:mod:`model.fusion`: mean of the calibrated probabilities, the views' out-of-domain scores
combined by ``max`` or ``mean``, one decision). This benchmark measures that on the default
bundle, per split (``val``: used for the choice below; ``test``: reported only):

* **Known products**: the bundle's ``val`` and ``test`` rows of ``seen-images.tsv`` (the ivory
  set ``met-ivory`` and the timber set ``wood-trade-groups``, found by the datasets the bundle's
  ``config.json`` records; labels mapped to the bundle's labels as :mod:`bench.tta` does).
* **Unknown near-domain products**: :func:`training.open_set.near_domain_samples` (ImageNet
  photos of leather goods, carvings, beads, shells...), split by
  :func:`training.open_set.open_set_split`.

There is one photo per object, so the views are **simulated**: each view is an independent
software re-shoot of the object's photo (:func:`training.open_set.reshoot` through
:func:`training.open_set.write_reshoots`, seed ``k - 1`` for view ``k``; the backgrounds are the
unrelated ImageNet photos, as :func:`training.open_set.evaluate_open_set` uses), as an officer's
phone might take several photos of it. Real photos of one object from several sides differ more
(other faces, other light) than re-shoots of one photo; the figures are an estimate of the
mechanism, not of field use. The clean photo is kept as a reference row.

Each view is predicted once (:meth:`model.predictor.Predictor.predict_arrays`, the image checks
made from the decoded file as the service makes them); every variant is then fused from the
stored predictions (:meth:`model.predictor.Predictor.fuse`). Variants: ``clean single photo``,
``1 re-shot view``, and 2 or 3 views fused with ``ood_fusion`` ``max`` and ``mean``. Figures per
variant and split, each share with its 95% Wilson interval and n: top-1 accuracy of the fused
probabilities on known products (all, ivory set, timber set), ECE, known products flagged
(decision kind in :data:`training.open_set.FLAGGED_KINDS`), unknown products flagged, unknown
products given the all-clear (``lookalike``) or called a CITES taxon (``taxon``), all-clears on
known CITES items, and the model seconds per object. The recommended variant is chosen on the
validation split only (:func:`choose`).

Run: ``.venv/bin/python -m bench.multiview [--bundle weights/default]
[--out docs/benchmarks/multiview.json] [--limit N]`` (``--limit N``: at most N objects of each
set per split, for a quick try). Re-shoots are cached under ``bench/results/multiview-reshoots``
(git-ignored; ``--work`` to change).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from bench.common import REPO_ROOT, machine_info, shared_data_dir, write_json

if TYPE_CHECKING:
    from model.bundle import Bundle
    from model.predictor import Prediction, Predictor
    from training.data import LabelMap, Sample

logger = logging.getLogger(__name__)

SPLITS = ("val", "test")
UNKNOWN_SET = "near-domain-unknown"
BATCH = 16
KNOWN_FLAGGED_LIMIT = 0.05
"""The choice prefers variants that send at most this share of known products to an expert."""
DEFAULT_WORK = REPO_ROOT / "bench" / "results" / "multiview-reshoots"
CAVEAT = (
    "Simulated views: one photo per object exists, so each view is an independent software "
    "re-shoot of that photo (tilt, border of another scene, light, colour cast, blur, phone "
    "JPEG; training.open_set.reshoot). Real photos of one object from several sides differ "
    "more than re-shoots of one photo: these figures estimate the fusion mechanism, not field use."
)


@dataclass(frozen=True)
class Variant:
    """One way of answering an object.

    Attributes:
        name: the row name.
        views: 0 for the clean photo, else the number of re-shot views fused.
        ood_fusion: ``max`` or ``mean`` for two or more views; None otherwise (one view: the
            two are the same).
    """

    name: str
    views: int
    ood_fusion: str | None


VARIANTS: tuple[Variant, ...] = (
    Variant("clean single photo", 0, None),
    Variant("1 re-shot view", 1, None),
    Variant("2 views fused, OOD max", 2, "max"),
    Variant("2 views fused, OOD mean", 2, "mean"),
    Variant("3 views fused, OOD max", 3, "max"),
    Variant("3 views fused, OOD mean", 3, "mean"),
)
MAX_VIEWS = max(v.views for v in VARIANTS)


@dataclass(frozen=True)
class BenchObject:
    """One photographed object.

    Attributes:
        sample: its one real photo.
        label_index: the bundle label it is (None for an unknown product).
        set_name: ``met-ivory``, ``wood-trade-groups`` (the dataset folder) or
            :data:`UNKNOWN_SET`.
    """

    sample: Sample
    label_index: int | None
    set_name: str


@dataclass(frozen=True)
class Answers:
    """One variant's answers for a list of objects.

    Attributes:
        probabilities: fused calibrated probabilities, (N, C).
        kinds: the decision kind of each object.
        seconds: model (and fusion) seconds of each object.
    """

    probabilities: NDArray[np.float64]
    kinds: list[str]
    seconds: NDArray[np.float64]


# ---- the objects ------------------------------------------------------------------------------
def known_objects(
    bundle: Bundle, data_dir: Path, label_map: LabelMap, splits: Sequence[str] = SPLITS
) -> dict[str, list[BenchObject]]:
    """The bundle's known products of ``splits`` (:func:`training.seen_images.split_samples`);
    a class the bundle cannot map is skipped."""
    from training.data import DataError
    from training.seen_images import split_samples

    try:
        samples = split_samples(bundle, data_dir, splits)
    except DataError as exc:
        raise SystemExit(str(exc)) from None
    found: dict[str, list[BenchObject]] = {split: [] for split in splits}
    for split, pairs in samples.items():
        for sample, name in pairs:
            if sample.label not in label_map.classes:
                logger.warning("%s: class %r is not in the bundle's label map", name, sample.label)
                continue
            found[split].append(BenchObject(sample, label_map.index_of(sample.label), name))
    return found


def unknown_objects(imagenet_dir: Path) -> dict[str, list[BenchObject]]:
    """The near-domain unknown products (:func:`training.open_set.near_domain_samples`) by
    split."""
    from training.open_set import near_domain_samples

    return {
        split: [BenchObject(sample, None, UNKNOWN_SET) for sample in samples]
        for split, samples in near_domain_samples(imagenet_dir).items()
    }


def limit_objects(objects: Sequence[BenchObject], limit: int | None) -> list[BenchObject]:
    """At most ``limit`` objects of each set, in the given order (all for None)."""
    if limit is None:
        return list(objects)
    counts: dict[str, int] = {}
    kept: list[BenchObject] = []
    for item in objects:
        if counts.get(item.set_name, 0) < limit:
            counts[item.set_name] = counts.get(item.set_name, 0) + 1
            kept.append(item)
    return kept


def reshoot_views(
    objects: Sequence[BenchObject], backgrounds: Sequence[Path], work: Path, views: int
) -> list[list[Path]]:
    """The re-shot views of each object: ``views`` files per object, view ``k`` made by
    :func:`training.open_set.write_reshoots` with seed ``k - 1`` into
    ``work/view<k>/<set>/`` (cached: existing files are reused)."""
    from training.open_set import write_reshoots

    paths: list[list[Path]] = [[] for _ in objects]
    for k in range(1, views + 1):
        for set_name in sorted({item.set_name for item in objects}):
            positions = [i for i, item in enumerate(objects) if item.set_name == set_name]
            shots = write_reshoots(
                [objects[i].sample for i in positions],
                backgrounds,
                work / f"view{k}" / set_name,
                seed=k - 1,
            )
            for i, shot in zip(positions, shots, strict=True):
                paths[i].append(shot.path)
    return paths


# ---- predictions and fusion ---------------------------------------------------------------------
def predict_files(
    predictor: Predictor, paths: Sequence[Path], batch: int = BATCH
) -> tuple[list[Prediction], NDArray[np.float64]]:
    """Predict image files as the service does (decode, image checks on the decoded image,
    model, decision), in batches; returns the predictions and the model seconds of each file
    (its batch's time shared equally; decoding is not counted)."""
    predictions: list[Prediction] = []
    seconds: list[float] = []
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        prepared = [predictor.prepare_input(Path(p).read_bytes()) for p in chunk]
        began = time.perf_counter()
        done = predictor.predict_arrays(
            np.stack([array for array, _ in prepared]), checks=[c for _, c in prepared]
        )
        elapsed = time.perf_counter() - began
        predictions.extend(done)
        seconds.extend([elapsed / len(chunk)] * len(chunk))
    return predictions, np.asarray(seconds, dtype=np.float64)


def answer(
    predictor: Predictor,
    clean: tuple[Sequence[Prediction], NDArray[np.float64]],
    shots: Sequence[tuple[Sequence[Prediction], NDArray[np.float64]]],
    variant: Variant,
) -> Answers:
    """``variant``'s answers from the stored predictions: ``clean`` (the photos) or the first
    ``variant.views`` of ``shots`` (one (predictions, seconds) pair per view) fused with
    :meth:`model.predictor.Predictor.fuse` (the service's fusion)."""
    from model.fusion import DEFAULT_OOD_FUSION

    if variant.views == 0:
        predictions, seconds = clean
        return Answers(
            np.stack([np.asarray(p.probabilities, dtype=np.float64) for p in predictions]),
            [p.decision.kind for p in predictions],
            np.asarray(seconds, dtype=np.float64),
        )
    if variant.views > len(shots):
        raise ValueError(f"{variant.name} needs {variant.views} views, {len(shots)} were made")
    used = shots[: variant.views]
    count = len(used[0][0])
    probabilities: list[NDArray[np.float64]] = []
    kinds: list[str] = []
    times: list[float] = []
    for i in range(count):
        began = time.perf_counter()
        fused, _ = predictor.fuse(
            [view[0][i] for view in used], ood_fusion=variant.ood_fusion or DEFAULT_OOD_FUSION
        )
        fuse_seconds = time.perf_counter() - began
        probabilities.append(np.asarray(fused.probabilities, dtype=np.float64))
        kinds.append(fused.decision.kind)
        times.append(sum(float(view[1][i]) for view in used) + fuse_seconds)
    return Answers(np.stack(probabilities), kinds, np.asarray(times, dtype=np.float64))


# ---- figures ------------------------------------------------------------------------------------
def figures(
    objects: Sequence[BenchObject],
    answers: Answers,
    cites_labels: frozenset[int],
    set_names: Sequence[str],
) -> dict[str, Any]:
    """One variant's figures on one split's objects (see the module docstring)."""
    from training.metrics import expected_calibration_error
    from training.open_set import open_set_figures, share

    known = [i for i, item in enumerate(objects) if item.label_index is not None]
    unknown = [i for i, item in enumerate(objects) if item.label_index is None]
    y_true = np.array([objects[i].label_index for i in known], dtype=np.int64)
    probs = answers.probabilities[known]
    correct = (probs.argmax(axis=1) == y_true) if known else np.zeros(0, dtype=bool)
    result: dict[str, Any] = {"accuracy": share(correct)}
    for name in set_names:
        result[f"accuracy_{name}"] = share(
            bool(c) for c, i in zip(correct, known, strict=True) if objects[i].set_name == name
        )
    result["ece"] = round(expected_calibration_error(y_true, probs), 4) if known else None
    open_set = open_set_figures(
        [answers.kinds[i] for i in known], [answers.kinds[i] for i in unknown]
    )
    result["known_flagged"] = open_set["known_flagged"]
    result["known_outside_domain"] = share(
        answers.kinds[i] == "outside_training_domain" for i in known
    )
    result["unknown_flagged"] = open_set["unknown_flagged"]
    result["unknown_all_clear"] = open_set["unknown_all_clear"]
    result["unknown_called_cites"] = open_set["unknown_called_cites"]
    result["all_clear_on_cites"] = share(
        answers.kinds[i] == "lookalike" for i in known if objects[i].label_index in cites_labels
    )
    result["refused"] = share(kind == "unusable_image" for kind in answers.kinds)
    result["model_ms_per_object"] = (
        round(float(answers.seconds.mean()) * 1000, 2) if len(answers.seconds) else None
    )
    return result


def _rate(entry: dict[str, Any]) -> float:
    """A share's rate, 1.0 (the worst) when it has no objects."""
    rate = entry["rate"]
    return 1.0 if rate is None else float(rate)


def choose(validation: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The recommended variant from the **validation** figures (name -> :func:`figures`).

    The unknown-product figures come first, as issue 13 ranks the errors (an all-clear on a
    product the model was never taught is the worst; then a confident answer about one). Among
    the re-shot variants (the clean photo is a reference, not an option): the lowest all-clear
    rate on unknown products; among those, the highest share of unknown products flagged;
    among those, the variants whose known products are flagged at most
    :data:`KNOWN_FLAGGED_LIMIT` when any is (else all of them); among those, the highest
    accuracy. Ties go to fewer known products flagged, then to fewer views (cheaper), then to
    ``max`` (the service's default).
    """
    options = [v for v in VARIANTS if v.views > 0 and v.name in validation]
    if not options:
        raise ValueError("no re-shot variant was measured")
    steps: list[str] = []
    lowest = min(_rate(validation[v.name]["unknown_all_clear"]) for v in options)
    options = [v for v in options if _rate(validation[v.name]["unknown_all_clear"]) == lowest]
    steps.append(
        f"lowest all-clear rate on unknown products ({lowest:.1%}): "
        + ", ".join(v.name for v in options)
    )
    if all("unknown_flagged" in validation[v.name] for v in options):
        most = max(_flagged(validation[v.name]) for v in options)
        options = [v for v in options if _flagged(validation[v.name]) == most]
        steps.append(
            f"highest share of unknown products flagged ({most:.1%}): "
            + ", ".join(v.name for v in options)
        )
    within = [
        v for v in options if _rate(validation[v.name]["known_flagged"]) <= KNOWN_FLAGGED_LIMIT
    ]
    if within:
        options = within
        steps.append(
            f"known products flagged <= {KNOWN_FLAGGED_LIMIT:.0%}: "
            + ", ".join(v.name for v in options)
        )
    else:
        steps.append(
            f"none flags <= {KNOWN_FLAGGED_LIMIT:.0%} of known products (lowest: "
            + f"{min(_rate(validation[v.name]['known_flagged']) for v in options):.1%}); "
            + "all kept"
        )
    best = max(_rate(validation[v.name]["accuracy"]) for v in options)
    options = [v for v in options if _rate(validation[v.name]["accuracy"]) == best]
    steps.append(f"highest accuracy ({best:.1%}): " + ", ".join(v.name for v in options))
    if len(options) > 1:
        steps.append("tie: fewest known products flagged, then fewest views, then OOD max")
    chosen = min(
        options,
        key=lambda v: (_rate(validation[v.name]["known_flagged"]), v.views, v.ood_fusion != "max"),
    )
    return {
        "variant": chosen.name,
        "views": chosen.views,
        "ood_fusion": chosen.ood_fusion,
        "rule": steps,
    }


def _flagged(entry: dict[str, Any]) -> float:
    """The share of unknown products flagged (0.0, the worst, when it has none)."""
    rate = entry["unknown_flagged"]["rate"]
    return 0.0 if rate is None else float(rate)


def _mcnemar(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> dict[str, Any]:
    """Paired accuracy comparison: objects only ``a`` got right, only ``b``, the p-value."""
    from training.metrics import mcnemar

    test = mcnemar(a, b)
    return {"first_only": test.b, "variant_only": test.c, "p_value": round(test.p_value, 4)}


# ---- the run ------------------------------------------------------------------------------------
def run_split(
    predictor: Predictor,
    objects: Sequence[BenchObject],
    backgrounds: Sequence[Path],
    work: Path,
    set_names: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """Every variant's figures on one split's objects (name -> :func:`figures`)."""
    cites = frozenset(label.index for label in predictor.labels if label.kind == "cites")
    clean = predict_files(predictor, [item.sample.path for item in objects])
    view_paths = reshoot_views(objects, backgrounds, work, MAX_VIEWS)
    shots = [predict_files(predictor, [paths[k] for paths in view_paths]) for k in range(MAX_VIEWS)]
    known = [i for i, item in enumerate(objects) if item.label_index is not None]
    y_true = np.array([objects[i].label_index for i in known], dtype=np.int64)
    results: dict[str, dict[str, Any]] = {}
    one_view: NDArray[np.bool_] | None = None
    for variant in VARIANTS:
        answers = answer(predictor, clean, shots, variant)
        result = figures(objects, answers, cites, set_names)
        correct = answers.probabilities[known].argmax(axis=1) == y_true
        if variant.views == 1:
            one_view = correct
        elif variant.views > 1 and one_view is not None:
            result["vs_one_view_mcnemar"] = _mcnemar(one_view, correct)
        results[variant.name] = result
        logger.info(
            "  %s: accuracy %s, known flagged %s, unknown flagged %s, unknown all-clear %s",
            variant.name,
            result["accuracy"]["rate"],
            result["known_flagged"]["rate"],
            result["unknown_flagged"]["rate"],
            result["unknown_all_clear"]["rate"],
        )
    return results


def run(
    bundle_path: Path,
    data_dir: Path,
    *,
    work: Path = DEFAULT_WORK,
    threads: int | None = 2,
    limit: int | None = None,
) -> dict[str, Any]:
    """Measure every variant on both splits of ``bundle_path``; returns the JSON payload."""
    from model.predictor import Predictor
    from training.evaluation import bundle_label_map
    from training.open_set import FLAGGED_KINDS, unrelated_samples

    began = time.perf_counter()
    predictor = Predictor(bundle_path, threads=threads)
    predictor.warmup()
    label_map = bundle_label_map(predictor.bundle)
    imagenet_dir = data_dir / "imagenet-sample"
    known = known_objects(predictor.bundle, data_dir, label_map)
    unknown = unknown_objects(imagenet_dir)
    backgrounds = [sample.path for sample in unrelated_samples(imagenet_dir)]
    set_names = sorted({item.set_name for split in SPLITS for item in known[split]})
    splits: dict[str, dict[str, dict[str, Any]]] = {}
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        objects = limit_objects([*known[split], *unknown[split]], limit)
        counts[split] = {
            name: sum(1 for item in objects if item.set_name == name)
            for name in [*set_names, UNKNOWN_SET]
        }
        logger.info("%s: %s", split, counts[split])
        splits[split] = run_split(predictor, objects, backgrounds, work, set_names)
    chosen = choose(splits["val"])
    chosen["validation"] = splits["val"][chosen["variant"]]
    chosen["test"] = splits["test"][chosen["variant"]]
    return {
        "bundle": predictor.version,
        "precision": predictor.precision,
        "threads": threads,
        "objects": counts,
        "limit": limit,
        "views": (
            "independent software re-shoots of the object's one photo "
            "(training.open_set.reshoot; view k: write_reshoots seed k - 1; backgrounds: the "
            f"{len(backgrounds)} unrelated imagenet-sample photos)"
        ),
        "fusion": "model.fusion.fuse_views via Predictor.fuse: mean of calibrated probabilities",
        "flagged_means": sorted(FLAGGED_KINDS),
        "caveat": CAVEAT,
        "variants": {
            v.name: {"views": v.views, "ood_fusion": v.ood_fusion, "source": _source(v)}
            for v in VARIANTS
        },
        "splits": splits,
        "recommended": chosen,
        "wall_seconds": round(time.perf_counter() - began, 1),
    }


def _source(variant: Variant) -> str:
    """What a variant answers from, in words."""
    if variant.views == 0:
        return "the clean photo"
    return f"re-shot views 1..{variant.views}"


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the variants on the bundle's val and test splits and write the JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bundle", default="weights/default")
    parser.add_argument("--data-dir", help="the shared data folder (default: ../shared/data)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    parser.add_argument("--out", default="docs/benchmarks/multiview.json")
    parser.add_argument("--limit", type=int, help="at most N objects of each set per split")
    parser.add_argument("--work", default=str(DEFAULT_WORK), help="re-shoot cache folder")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data_dir = Path(args.data_dir) if args.data_dir else shared_data_dir()
    payload = {
        "command": " ".join(
            ["python -m bench.multiview", *(sys.argv[1:] if argv is None else argv)]
        ),
        **run(
            Path(args.bundle),
            data_dir,
            work=Path(args.work),
            threads=args.threads,
            limit=args.limit,
        ),
        "machine": machine_info(),
    }
    write_json(Path(args.out), payload)
    chosen = payload["recommended"]
    logger.info(
        "recommended on validation: %s; wrote %s in %.0f s",
        chosen["variant"],
        args.out,
        payload["wall_seconds"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
