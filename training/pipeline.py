"""``cites-vision train`` end to end: data -> head/fine-tune -> calibrate -> export -> bundle.

Order of work (everything tuned on the validation split; the test split is only reported):

1. load the datasets and the label map; grouped, deterministic train/val/test split;
2. frozen-backbone features (cached) and a linear head chosen on validation;
3. for ``last``/``full``: fine-tune on augmented images, keep the best validation epoch;
4. temperature and decision thresholds on validation; OOD model fitted on training features;
5. export fp32 (gate: every validation top-1 agrees with PyTorch) and INT8 (gate: <= 1 point);
6. a provisional bundle is evaluated through the real predictor on validation and test (and the
   OOD threshold is set from the served model's validation scores);
7. the final bundle is written with its reports, ``config.json`` and, with ``--base``, a paired
   comparison that decides ``recommended``.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from model.bundle import Bundle, load_bundle, write_bundle
from model.decision import Thresholds
from model.ood import OodModel, fit_ood
from model.predictor import softmax
from training import data as d
from training import export as ex
from training.augment import preset_for
from training.backbone import create_model, describe
from training.calibrate import (
    ThresholdChoice,
    choose_ood_threshold,
    choose_thresholds,
    fit_temperature,
)
from training.compare import judge_against_base
from training.config import TrainConfig
from training.evaluation import evaluate_samples, ood_scores_for
from training.features import extract_features
from training.images import AugmentedImages
from training.inputs import load_inputs
from training.partial import (
    cache_augmented,
    cache_plain,
    features_from_maps,
    split_index,
    train_last_stage,
)
from training.train import choose_head, fine_tune, set_head

logger = logging.getLogger(__name__)

DEFAULT_LIMITATIONS = (
    "Trained on camera photographs only; x-ray images are refused (no x-ray training data).",
)


@dataclass
class SplitArrays:
    """Paths, targets, sources and backbone features of one split."""

    samples: list[d.Sample]
    targets: NDArray[np.int64]
    features: NDArray[np.float32]

    @property
    def paths(self) -> list[Path]:
        """Image files of the split."""
        return [s.path for s in self.samples]


def train_image_shorter(input_size: int) -> int:
    """Shorter side of the in-memory training copies for an input size.

    288 at the backbone's 224 (``AugmentedImages``' default), scaled with larger inputs so that
    random resized crops are not upsampled from a copy smaller than the model sees.
    """
    return max(288, round(input_size * 288 / 224))


def git_commit(cwd: Path | None = None) -> str | None:
    """The current git commit of the working tree (``None`` outside a repository)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def prepare_data(
    config: TrainConfig,
) -> tuple[list[d.Sample], d.LabelMap, dict[str, list[d.Sample]]]:
    """Load ``config.data`` and its label map and split it (grouped, deterministic).

    Returns ``(all samples, label map, {"train", "val", "test": samples})``; raises
    :class:`training.data.DataError` when the split leaves no training or validation images.
    """
    samples = d.load_datasets([Path(p) for p in config.data], modality=config.modality)
    if config.label_map:
        label_map = d.read_label_map(Path(config.label_map))
    else:
        label_map = d.identity_label_map(samples)
        logger.warning("no --label-map: one label per dataset class, taxon id = class name")
    splits = d.split_samples(
        samples, d.SplitFractions(config.val_fraction, config.test_fraction), seed=config.seed
    )
    for name, part in splits.items():
        logger.info("%s split: %d images, %d groups", name, len(part), len({s.group for s in part}))
    if not splits["train"] or not splits["val"]:
        raise d.DataError("the split left no training or no validation images; add images")
    return samples, label_map, splits


def _calibrate(
    val_logits: NDArray[np.float64],
    targets: NDArray[np.int64],
    kinds: Sequence[str],
    config: TrainConfig,
) -> tuple[float, dict[str, ThresholdChoice], Thresholds]:
    """Temperature (minimum validation NLL) and the decision thresholds chosen on the
    temperature-scaled validation probabilities of ``val_logits``."""
    temperature = fit_temperature(val_logits, targets)
    chosen = choose_thresholds(
        softmax(val_logits, temperature, dtype=np.float64),
        targets,
        kinds,
        target_precision=config.target_precision,
    )
    thresholds = Thresholds(
        taxon=chosen["taxon"].threshold, lookalike=chosen["lookalike"].threshold
    )
    return temperature, chosen, thresholds


def backbone_features(
    model: torch.nn.Module, samples: list[d.Sample], config: TrainConfig, cache: bool, desc: str
) -> NDArray[np.float32]:
    """Pooled features ``[N, 1280]`` of ``samples`` through the evaluation preprocessing.

    With ``cache`` (and ``config.cache_dir``) they are read from and written to the on-disk
    feature cache, whose file is keyed by a fingerprint of the weights and the preprocessing;
    the pipeline caches only the pretrained backbone's features.
    """
    if not samples:
        return np.zeros((0, 1280), dtype=np.float32)
    cache_dir = Path(config.cache_dir) if (cache and config.cache_dir) else None
    return extract_features(
        model, [s.path for s in samples], config.preprocess(), cache_dir=cache_dir, desc=desc
    )


def _train_last(
    model: torch.nn.Module,
    arrays: dict[str, SplitArrays],
    config: TrainConfig,
    weights: NDArray[np.float64],
    work: Path,
) -> tuple[list[dict[str, float]], int]:
    """``last`` mode: cache trunk maps, train the last stage and head, refresh the features."""
    split = split_index(model, config.trained_stages)
    preprocess = config.preprocess()
    plain = {
        name: cache_plain(model, part.paths, preprocess, split, f"{name} maps")
        for name, part in arrays.items()
        if part.samples
    }
    transform = preset_for(config.augment).build(preprocess)
    views = [plain["train"][None]]
    if config.views:
        views.append(
            cache_augmented(
                model, arrays["train"].paths, transform, split, config.views, seed=config.seed
            )
        )
    result = train_last_stage(
        model,
        torch.cat(views),
        arrays["train"].targets,
        plain["val"],
        arrays["val"].targets,
        split,
        epochs=config.epochs,
        lr=config.lr,
        weight_decay=config.weight_decay,
        batch_size=config.batch_size,
        class_weights=weights,
        seed=config.seed,
        checkpoint=work / "checkpoint.pt",
        resume=config.resume,
    )
    for name, part in arrays.items():
        if part.samples:
            part.features = features_from_maps(model, plain[name], split)
    return result.history, result.best_epoch


@dataclass(frozen=True)
class RunSetup:
    """Where and under which name a run writes: the first stage's result."""

    version: str
    out_dir: Path
    work: Path
    command: str
    started: float


@dataclass(frozen=True)
class TrainedModel:
    """The fine-tuned network with its data: what training hands to calibration and export.

    ``arrays`` hold each split's features through the final network.
    """

    model: Any
    samples: list[d.Sample]
    label_map: d.LabelMap
    arrays: dict[str, SplitArrays]
    class_weights: NDArray[np.float64]
    head_weight_decay: float
    history: list[dict[str, float]]
    best_epoch: int


@dataclass(frozen=True)
class ExportedModel:
    """The ONNX files that passed their gates, and the calibration fitted on the served model."""

    fp32_path: Path
    fp32_check: ex.Fp32Check
    int8_path: Path | None
    int8_gate: ex.Int8Gate | None
    temperature: float
    chosen: dict[str, ThresholdChoice]
    thresholds: Thresholds
    calibrated_on: str
    ood_model: OodModel
    provisional_ood_threshold: float
    backbone: str

    def bundle_arguments(self, trained: TrainedModel, config: TrainConfig) -> dict[str, Any]:
        """The :func:`write_bundle` arguments shared by the provisional and the final bundle."""
        return {
            "onnx_fp32": self.fp32_path,
            "onnx_int8": self.int8_path,
            "labels": trained.label_map.labels,
            "preprocess": config.preprocess(),
            "temperature": self.temperature,
            "thresholds": self.thresholds,
            "modalities": [config.modality],
            "ood": self.ood_model,
            "backbone": self.backbone,
        }


@dataclass(frozen=True)
class Evaluation:
    """The served model's figures on validation and test, its OOD threshold and reports."""

    metrics: dict[str, Any]
    reports: dict[str, Path]
    ood_threshold: float
    recommended: bool
    parent_version: str | None


def run(config: TrainConfig, command: str | None = None) -> Path:
    """Train, calibrate, export and write a bundle; returns the bundle folder."""
    setup = start_run(config, command)
    trained = train_model(config, setup.work)
    exported = export_and_calibrate(config, trained, setup.work)
    evaluation = evaluate_served(config, trained, exported, setup.work)
    final = write_final_bundle(config, setup, trained, exported, evaluation)
    _cleanup(setup.work)
    logger.info("bundle %s written in %.0f s", final, time.monotonic() - setup.started)
    return final


def start_run(config: TrainConfig, command: str | None = None) -> RunSetup:
    """Seed torch, name the version and make the work folder (refuses an existing version)."""
    started = time.monotonic()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    preprocess = config.preprocess()
    logger.info(
        "input %d px (shorter side resized to %d)", preprocess.input_size, preprocess.resize_shorter
    )
    version = config.version or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out_dir = Path(config.out)
    if (out_dir / version).exists() and not config.overwrite:
        raise d.DataError(f"{out_dir / version} exists; pass --overwrite or another --version")
    work = Path(config.work_dir) if config.work_dir else out_dir.parent / "runs" / version
    work.mkdir(parents=True, exist_ok=True)
    return RunSetup(version, out_dir, work, command or config.command(), started)


def train_model(config: TrainConfig, work: Path) -> TrainedModel:
    """Load and split the data, choose a head on frozen features, then fine-tune (``last`` or
    ``full``); the splits' features are refreshed through the fine-tuned network."""
    samples, label_map, splits = prepare_data(config)
    d.check_taxa(label_map)
    num_classes = len(label_map.labels)
    model: Any = create_model(num_classes, pretrained=config.pretrained)
    arrays = {
        name: SplitArrays(
            part,
            d.encode_labels(part, label_map),
            backbone_features(
                model, part, config, cache=config.pretrained, desc=f"{name} features"
            ),
        )
        for name, part in splits.items()
    }
    train, val = arrays["train"], arrays["val"]
    weights = d.class_weights(train.targets, num_classes, config.class_weight_power)
    head = choose_head(
        train.features, train.targets, val.features, val.targets, num_classes, class_weights=weights
    )
    set_head(model, head.weight, head.bias)
    history: list[dict[str, float]] = []
    best_epoch = 0
    if config.mode == "last" and config.epochs > 0:
        history, best_epoch = _train_last(model, arrays, config, weights, work)
    elif config.mode == "full" and config.epochs > 0:
        history, best_epoch = _train_full(model, arrays, config, weights, work)
    model.eval()
    return TrainedModel(
        model, samples, label_map, arrays, weights, head.weight_decay, history, best_epoch
    )


def _train_full(
    model: torch.nn.Module,
    arrays: dict[str, SplitArrays],
    config: TrainConfig,
    weights: NDArray[np.float64],
    work: Path,
) -> tuple[list[dict[str, float]], int]:
    """``full`` mode: fine-tune every layer on augmented images, then refresh the features."""
    preprocess = config.preprocess()
    train, val = arrays["train"], arrays["val"]
    train_set = AugmentedImages(
        train.paths,
        train.targets,
        preset_for(config.augment).build(preprocess),
        keep_shorter=train_image_shorter(preprocess.input_size),
    )
    state = fine_tune(
        model,
        train_set,
        load_inputs(val.paths, preprocess),
        val.targets,
        mode=config.mode,
        epochs=config.epochs,
        lr=config.lr,
        weight_decay=config.weight_decay,
        batch_size=config.batch_size,
        class_weights=weights,
        checkpoint=work / "checkpoint.pt",
        resume=config.resume,
        seed=config.seed,
    )
    for name, split_arrays in arrays.items():
        split_arrays.features = backbone_features(
            model, split_arrays.samples, config, cache=False, desc=f"{name} features (fine-tuned)"
        )
    return state.history, state.best_epoch


def export_and_calibrate(config: TrainConfig, trained: TrainedModel, work: Path) -> ExportedModel:
    """Calibrate on validation logits, export fp32 and INT8 through their gates, and fit the OOD
    model; when the INT8 model ships, temperature and thresholds are refitted on its logits."""
    train, val = trained.arrays["train"], trained.arrays["val"]
    classifier: Any = trained.model.get_classifier()
    w = classifier.weight.detach().numpy().astype(np.float64)
    b = classifier.bias.detach().numpy().astype(np.float64)
    val_logits = val.features.astype(np.float64) @ w.T + b
    kinds = [label.kind for label in trained.label_map.labels]
    temperature, chosen, thresholds = _calibrate(val_logits, val.targets, kinds, config)
    calibrated_on = "fp32 validation logits"
    ood_model = fit_ood(train.features, train.targets)
    provisional_ood = choose_ood_threshold(
        ood_model.score(val.features).astype(np.float64), config.ood_flag_rate
    )

    preprocess = config.preprocess()
    val_inputs = load_inputs(val.paths, preprocess)
    fp32_path = ex.export_fp32(trained.model, work, val_inputs[:4])
    fp32_check = ex.check_fp32(trained.model, fp32_path, val_inputs)
    int8_path: Path | None = None
    int8_gate = None
    if config.int8:
        calibration = ex.calibration_paths(train.paths, config.calibration_images, config.seed)
        int8_gate = ex.export_int8(
            fp32_path,
            work,
            calibration,
            preprocess,
            val_inputs,
            val.targets,
            max_drop=config.int8_max_drop,
        )
        int8_path = work / ex.INT8_FILE if int8_gate.written else None
        if int8_path is not None and int8_gate.val_logits is not None:
            # The service runs the INT8 model: calibrate what it serves (on the validation
            # logits its gate computed), as the OOD threshold is chosen on it too.
            temperature, chosen, thresholds = _calibrate(
                int8_gate.val_logits.astype(np.float64), val.targets, kinds, config
            )
            calibrated_on = "INT8 validation logits (the served model)"
    return ExportedModel(
        fp32_path,
        fp32_check,
        int8_path,
        int8_gate,
        temperature,
        chosen,
        thresholds,
        calibrated_on,
        ood_model,
        provisional_ood,
        describe(trained.model)["name"],
    )


def evaluate_served(
    config: TrainConfig, trained: TrainedModel, exported: ExportedModel, work: Path
) -> Evaluation:
    """Evaluate the served model through the real predictor on validation and test, set the OOD
    threshold from its validation scores, and compare with ``--base`` when given."""
    val, test = trained.arrays["val"], trained.arrays["test"]
    provisional = write_bundle(
        work,
        version="provisional",
        metrics={},
        training={},
        provenance={},
        limitations=[],
        ood_threshold=exported.provisional_ood_threshold,
        overwrite=True,
        **exported.bundle_arguments(trained, config),
    )
    bundle = load_bundle(provisional)
    # OOD threshold from the served model's validation scores (INT8 when it ships).
    served_val_scores = ood_scores_for(bundle, val.paths).astype(np.float64)
    ood_threshold = choose_ood_threshold(served_val_scores, config.ood_flag_rate)

    reports: dict[str, Path] = {}
    metrics: dict[str, Any] = {}
    for name, evaluated in (("validation", val), ("test", test)):
        if not evaluated.samples:
            continue
        result = evaluate_samples(
            bundle, evaluated.samples, trained.label_map, ood_threshold=ood_threshold
        )
        metrics[name] = result.report
        for path in result.write(work / "reports", name):
            reports[path.name] = path
    metrics["ood"] = _ood_summary(config, bundle, served_val_scores, ood_threshold, metrics)
    metrics["fp32_check"] = exported.fp32_check.__dict__
    metrics["int8"] = (
        exported.int8_gate.to_dict()
        if exported.int8_gate
        else {"written": False, "reason": "--no-int8"}
    )
    metrics["calibration"] = {
        "fitted_on": exported.calibrated_on,
        "temperature": exported.temperature,
        "thresholds": {k: v.__dict__ for k, v in exported.chosen.items()},
    }
    recommended, parent_version = True, None
    if config.base:
        base = load_bundle(Path(config.base))
        parent_version = base.version
        recommended, comparison = judge_against_base(base, bundle, test.samples or val.samples)
        metrics["comparison_with_base"] = comparison
    return Evaluation(metrics, reports, ood_threshold, recommended, parent_version)


def _ood_summary(
    config: TrainConfig,
    bundle: Bundle,
    served_val_scores: NDArray[np.float64],
    ood_threshold: float,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """How the OOD threshold was chosen and what share of each set it flags."""
    summary: dict[str, Any] = {
        "method": "mahalanobis_pca",
        "fitted_on": "training split features",
        "threshold_rule": f"validation quantile {1 - config.ood_flag_rate:.2f} (served model)",
        "threshold": ood_threshold,
        "validation_flagged": float(np.mean(served_val_scores > ood_threshold)),
    }
    if "test" in metrics:
        summary["test_flagged"] = metrics["test"].get("ood_flagged")
    if config.ood_data:
        outside = d.load_dataset(Path(config.ood_data))
        scores = ood_scores_for(bundle, [s.path for s in outside])
        summary["outside_images"] = len(outside)
        summary["outside_data"] = Path(config.ood_data).name
        summary["outside_flagged"] = float(np.mean(scores > ood_threshold))
        logger.info(
            "OOD: %.1f%% of %s flagged (validation %.1f%%)",
            100 * summary["outside_flagged"],
            config.ood_data,
            100 * summary["validation_flagged"],
        )
    return summary


def write_final_bundle(
    config: TrainConfig,
    setup: RunSetup,
    trained: TrainedModel,
    exported: ExportedModel,
    evaluation: Evaluation,
) -> Path:
    """Write ``out/<version>/`` with the figures, the training summary, ``config.json``,
    provenance and the reports."""
    training_info: dict[str, Any] = {
        "data": d.summarise(trained.samples),
        "splits": {name: d.summarise(a.samples) for name, a in trained.arrays.items()},
        "split_rule": (
            f"deterministic grouped split by case_id (seed {config.seed}); per class, groups "
            f"ordered by sha256 of their key: {config.val_fraction:.0%} validation, "
            f"{config.test_fraction:.0%} test, rest training"
        ),
        "label_map": trained.label_map.to_dict(),
        "mode": config.mode,
        "head_weight_decay": trained.head_weight_decay,
        "epochs": trained.history,
        "best_epoch": trained.best_epoch,
        "class_weights": [round(float(x), 4) for x in trained.class_weights],
        "duration_s": round(time.monotonic() - setup.started, 1),
    }
    synthetic = synthetic_sources(config.data)
    if synthetic:
        training_info["synthetic_data"] = synthetic
    config_file = setup.work / "config.json"
    config_file.write_text(
        json.dumps({"command": setup.command, "config": config.to_dict()}, indent=2) + "\n",
        encoding="utf-8",
    )
    provenance = {
        "command": setup.command,
        "git_commit": git_commit(),
        "parent_version": evaluation.parent_version,
        "host": platform.node(),
        "torch": torch.__version__,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return write_bundle(
        setup.out_dir,
        version=setup.version,
        metrics=evaluation.metrics,
        training=training_info,
        provenance=provenance,
        limitations=list(config.limitations) or list(DEFAULT_LIMITATIONS),
        ood_threshold=evaluation.ood_threshold,
        extra_files={"config.json": config_file, **evaluation.reports},
        recommended=evaluation.recommended,
        parent_version=evaluation.parent_version,
        overwrite=config.overwrite,
        **exported.bundle_arguments(trained, config),
    )


def synthetic_sources(data: Sequence[str]) -> list[dict[str, Any]]:
    """For each training manifest written by ``cites-vision xray synth`` (a ``synth.json``
    beside it): what the synthetic images were made from, for the bundle's manifest."""
    found = []
    for item in data:
        summary_file = Path(item).parent / "synth.json" if Path(item).is_file() else None
        if summary_file is None or not summary_file.is_file():
            continue
        try:
            summary = json.loads(summary_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        found.append(
            {
                "manifest": item,
                "kind": "synthetic x-ray composites by projection (cites-vision xray synth)",
                "images": summary.get("images"),
                "backgrounds": summary.get("backgrounds"),
                "backgrounds_excluded_as_matching": len(
                    summary.get("backgrounds_excluded_as_matching", [])
                ),
                "exclusion_checked_against": summary.get("exclusion_checked_against"),
                "source_objects": summary.get("source_objects"),
                "energies_kev": summary.get("energies_kev"),
                "seed": summary.get("seed"),
            }
        )
    return found


def _cleanup(work: Path) -> None:
    """Remove the work folder (exports, provisional bundle, checkpoint) after a finished run."""
    import shutil

    shutil.rmtree(work, ignore_errors=True)
