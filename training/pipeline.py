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
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from numpy.typing import NDArray

from model.bundle import Bundle, load_bundle, write_bundle
from model.decision import Thresholds
from model.labels import Label
from model.ood import AnyOodModel, fit_knn, fit_ood
from model.predictor import softmax
from training import data as d
from training import export as ex
from training.augment import preset_for
from training.backbone import (
    BACKBONE_NAME,
    add_reference_branch,
    architecture,
    create_model,
    describe,
)
from training.calibrate import (
    AllClearChoice,
    ThresholdChoice,
    ThresholdRule,
    choose_all_clear_thresholds,
    choose_ood_threshold,
    choose_thresholds,
    fit_temperature,
)
from training.compare import judge_against_base
from training.config import TrainConfig
from training.distributed import DistInfo, barrier, broadcast_text, init_from_env, shutdown
from training.evaluation import evaluate_samples, ood_scores_for
from training.features import extract_features, phone_capture_features
from training.images import AugmentedImages
from training.inputs import batches, load_inputs
from training.open_set import evaluate_open_set
from training.partial import (
    cache_augmented,
    cache_plain,
    features_from_maps,
    split_index,
    train_last_stage,
)
from training.seen_images import SEEN_IMAGES_FILE, bundle_split, write_seen_images
from training.train import choose_head, fine_tune, set_head

if TYPE_CHECKING:
    from training.gate import GateOutcome

    Gate = Callable[[Bundle, dict[str, list[d.Sample]]], GateOutcome]

logger = logging.getLogger(__name__)

TORCH_WEIGHTS_FILE = "model.pt"
"""Bundle file with the trained torch weights: ``{"backbone", "labels", "state_dict"}``."""

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
    config: TrainConfig, recorded: Bundle | None = None
) -> tuple[list[d.Sample], d.LabelMap, dict[str, list[d.Sample]]]:
    """Load ``config.data`` and its label map and split it (grouped, deterministic), or, for
    a ``recorded`` bundle with a digest file, as that bundle was split: a bundle that is
    reused (``--from-bundle``) or studied is calibrated and measured on its own held-out
    images, whatever grouping or seed today's code would use.

    Returns ``(all samples, label map, {"train", "val", "test": samples})``; raises
    :class:`training.data.DataError` when the split leaves no training or validation images.
    """
    samples = d.load_datasets([Path(p) for p in config.data], modality=config.modality)
    if config.label_map:
        label_map = d.read_label_map(Path(config.label_map))
    else:
        label_map = d.identity_label_map(samples)
        logger.warning("no --label-map: one label per dataset class, taxon id = class name")
    splits = bundle_split(
        recorded,
        samples,
        d.SplitFractions(config.val_fraction, config.test_fraction),
        config.seed,
    )
    for name, part in splits.items():
        logger.info("%s split: %d images, %d groups", name, len(part), len({s.group for s in part}))
    if not splits["train"] or not splits["val"]:
        raise d.DataError("the split left no training or no validation images; add images")
    return samples, label_map, splits


def _calibrate(
    val_logits: NDArray[np.float64],
    targets: NDArray[np.int64],
    labels: Sequence[Label],
    config: TrainConfig,
) -> tuple[float, dict[str, ThresholdChoice], Thresholds, dict[str, AllClearChoice]]:
    """Temperature (minimum validation NLL) and the decision thresholds chosen on the
    temperature-scaled validation probabilities of ``val_logits``, with each look-alike label's
    own stricter threshold where its shared one gives too many false all-clears."""
    kinds = [label.kind for label in labels]
    temperature = fit_temperature(val_logits, targets)
    probs = softmax(val_logits, temperature, dtype=np.float64)
    chosen = choose_thresholds(
        probs,
        targets,
        kinds,
        target_precision=config.target_precision,
        rule=cast(ThresholdRule, config.threshold_rule),
        spread=True,
    )
    base = chosen["lookalike"].threshold
    all_clear = choose_all_clear_thresholds(
        probs,
        targets,
        kinds,
        [label.id for label in labels],
        base,
        max_all_clear=config.max_all_clear,
        min_guarded_images=config.all_clear_min_images,
        weak_evidence_floor=config.all_clear_floor,
    )
    thresholds = Thresholds(
        taxon=chosen["taxon"].threshold,
        lookalike=base,
        lookalike_by_label={
            label_id: choice.threshold
            for label_id, choice in all_clear.items()
            if choice.threshold > base
        },
    )
    return temperature, chosen, thresholds, all_clear


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


def _check_same_labels(old: Sequence[Label], new: Sequence[Label], where: str) -> None:
    """``--from-bundle`` keeps the trained outputs: the label ids must be the same, in order
    (names, taxa and kinds may change, e.g. a look-alike label becoming a CITES one)."""
    if [label.id for label in old] != [label.id for label in new]:
        raise d.DataError(
            f"{where}: its labels ({', '.join(label.id for label in old)}) differ from the label "
            f"map's ({', '.join(label.id for label in new)}); --from-bundle needs the same "
            "label ids in the same order"
        )


def _has_output(path: Path, name: str) -> bool:
    """Whether the ONNX file at ``path`` has an output called ``name`` (a bundle that already
    carries the frozen reference branch keeps it as it is)."""
    import onnx

    return any(
        output.name == name
        for output in onnx.load(str(path), load_external_data=False).graph.output
    )


def _onnx_features(path: Path, paths: Sequence[Path], preprocess: Any) -> NDArray[np.float32]:
    """Pooled ``features`` output of an ONNX model for image files, in batches."""
    chunks = [
        ex.onnx_outputs(path, load_inputs(chunk, preprocess))[1]
        for chunk in batches(list(paths), 64)
    ]
    return np.concatenate(chunks).astype(np.float32)


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
    head_weight_decay: float | None
    history: list[dict[str, float]]
    best_epoch: int
    reference_model: Any = None
    """The frozen ImageNet backbone (``--ood-method knn-reference``), else None."""
    reference_features: dict[str, NDArray[np.float32]] = field(default_factory=dict)
    """Each split's pooled features through the ImageNet backbone, before any training."""
    base_bundle: Bundle | None = None
    """``--from-bundle``: the bundle whose trained model is reused (``model`` is then None)."""
    val_logits: NDArray[np.float64] | None = None
    """``--from-bundle``: the reused model's fp32 validation logits."""

    @property
    def mode(self) -> str:
        """How the model was obtained, as the manifest records it."""
        return f"from bundle {self.base_bundle.version}" if self.base_bundle else ""


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
    ood_model: AnyOodModel
    provisional_ood_threshold: float
    backbone: str
    all_clear: dict[str, AllClearChoice]
    ood_features: str
    fp32_storage: ex.Fp32Storage | None = None

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
            "ood_features": self.ood_features,
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
    gate_override: dict[str, Any] | None = None


def warm_start_model(bundle_path: Path, num_classes: int) -> torch.nn.Module:
    """The backbone of a bundle's ``model.pt`` with a fresh ``num_classes``-way classifier
    (the pipeline fits the head on the warm-started features next).

    Raises :class:`training.data.DataError` for a bundle without torch weights or with weights
    of another architecture.
    """
    path = Path(bundle_path) / TORCH_WEIGHTS_FILE
    if not path.is_file():
        raise d.DataError(
            f"{bundle_path} has no {TORCH_WEIGHTS_FILE}: bundles written before retraining "
            "existed carry only ONNX; rebuild it once with `cites-vision train --config "
            f"{Path(bundle_path) / 'config.json'} --overwrite`"
        )
    saved = torch.load(path, map_location="cpu", weights_only=True)
    state = saved.get("state_dict") if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        raise d.DataError(f"{path}: not a CITES Vision torch weights file")
    model = create_model(
        num_classes, pretrained=False, backbone=str(saved.get("backbone") or BACKBONE_NAME)
    )
    backbone = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    result = model.load_state_dict(backbone, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("classifier.")]
    if missing or result.unexpected_keys:
        raise d.DataError(
            f"{path}: the weights do not fit the backbone (missing {missing[:3]}, unexpected "
            f"{result.unexpected_keys[:3]})"
        )
    logger.info("warm start from %s", path)
    return model.eval()


def save_torch_weights(model: torch.nn.Module, labels: Sequence[Any], path: Path) -> Path:
    """Write the trained weights (what ``retrain`` warm-starts from) as ``model.pt``."""
    torch.save(
        {
            "backbone": describe(model)["name"],
            "labels": [label.id for label in labels],
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        },
        path,
    )
    return path


def run(
    config: TrainConfig,
    command: str | None = None,
    *,
    gate: Gate | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Train, calibrate, export and write a bundle; returns the bundle folder.

    ``gate`` (``retrain``) judges the provisional bundle against its base and decides
    ``recommended`` instead of the plain ``--base`` comparison; ``extra`` is recorded under the
    manifest's ``training.retrain``. Under torchrun (``WORLD_SIZE`` > 1) the ``full`` epochs run
    in every process and rank 0 alone does the rest and writes the bundle.
    """
    dist_info = init_from_env()
    if dist_info is not None and config.mode != "full":
        shutdown(dist_info)
        raise d.DataError(
            f"distributed training (torchrun / --nproc) applies to --mode full, not {config.mode}"
        )
    setup = start_run(config, command, dist_info)
    trained = train_model(config, setup.work, dist_info)
    shutdown(dist_info)
    if dist_info is not None and not dist_info.is_main:
        logger.info("rank %d done; rank 0 writes the bundle", dist_info.rank)
        return setup.out_dir / setup.version
    exported = export_and_calibrate(config, trained, setup.work)
    evaluation = evaluate_served(config, trained, exported, setup.work, gate)
    final = write_final_bundle(
        config, setup, trained, exported, evaluation, extra=extra, dist_info=dist_info
    )
    _cleanup(setup.work)
    logger.info("bundle %s written in %.0f s", final, time.monotonic() - setup.started)
    return final


def start_run(
    config: TrainConfig, command: str | None = None, dist_info: DistInfo | None = None
) -> RunSetup:
    """Seed torch, name the version and make the work folder (refuses an existing version);
    every process of a distributed run gets rank 0's version."""
    started = time.monotonic()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    preprocess = config.preprocess()
    logger.info(
        "input %d px (shorter side resized to %d)", preprocess.input_size, preprocess.resize_shorter
    )
    version = broadcast_text(
        dist_info, config.version or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    )
    out_dir = Path(config.out)
    if (out_dir / version).exists() and not config.overwrite:
        raise d.DataError(f"{out_dir / version} exists; pass --overwrite or another --version")
    work = Path(config.work_dir) if config.work_dir else out_dir.parent / "runs" / version
    work.mkdir(parents=True, exist_ok=True)
    return RunSetup(version, out_dir, work, command or config.command(), started)


def train_model(config: TrainConfig, work: Path, dist_info: DistInfo | None = None) -> TrainedModel:
    """Load and split the data, choose a head on frozen features (of the ImageNet backbone, or
    of ``config.init_from``'s), then fine-tune (``last`` or ``full``); the splits' features are
    refreshed through the fine-tuned network."""
    recorded = load_bundle(Path(config.from_bundle)) if config.from_bundle else None
    samples, label_map, splits = prepare_data(config, recorded)
    d.check_taxa(label_map)
    num_classes = len(label_map.labels)
    model: Any = (
        warm_start_model(Path(config.init_from), num_classes)
        if config.init_from
        else create_model(num_classes, pretrained=config.pretrained, backbone=config.backbone)
    )
    cacheable = config.pretrained or config.init_from is not None
    if dist_info is not None and not dist_info.is_main:
        barrier(dist_info)  # rank 0 fills the feature cache first; the others then read it
    arrays = {
        name: SplitArrays(
            part,
            d.encode_labels(part, label_map),
            backbone_features(model, part, config, cache=cacheable, desc=f"{name} features"),
        )
        for name, part in splits.items()
    }
    if dist_info is not None and dist_info.is_main:
        barrier(dist_info)
    train, val = arrays["train"], arrays["val"]
    weights = d.class_weights(train.targets, num_classes, config.class_weight_power)
    # The ImageNet backbone: its pooled features are what the kNN OOD score compares, so a
    # knn-reference bundle carries a frozen copy of it.
    reference_model = reference_backbone(model, num_classes, config)
    if reference_model is None or not config.init_from:
        reference_features = {name: a.features.copy() for name, a in arrays.items()}
    else:
        # a warm start's features are the base's fine-tuned ones, not the reference's
        reference_features = {
            name: backbone_features(
                reference_model,
                part,
                config,
                cache=dist_info is None or dist_info.is_main,  # one writer of the cache file
                desc=f"{name} reference features",
            )
            for name, part in splits.items()
        }
    if recorded is not None:
        return _reuse_bundle(
            config,
            recorded,
            samples,
            label_map,
            arrays,
            weights,
            reference_model,
            reference_features,
        )
    head = choose_head(
        train.features, train.targets, val.features, val.targets, num_classes, class_weights=weights
    )
    set_head(model, head.weight, head.bias)
    history: list[dict[str, float]] = []
    best_epoch = 0
    if config.mode == "last" and config.epochs > 0:
        history, best_epoch = _train_last(model, arrays, config, weights, work)
    elif config.mode == "full" and config.epochs > 0:
        history, best_epoch = _train_full(model, arrays, config, weights, work, dist_info)
    model.eval()
    return TrainedModel(
        model,
        samples,
        label_map,
        arrays,
        weights,
        head.weight_decay,
        history,
        best_epoch,
        reference_model,
        reference_features,
    )


def reference_backbone(model: Any, num_classes: int, config: TrainConfig) -> Any:
    """The frozen ImageNet backbone a ``knn-reference`` bundle carries, or None for the other
    OOD method. Before any training ``model`` holds the ImageNet weights and is copied; a warm
    start (``config.init_from``, as ``retrain`` does) holds the base's fine-tuned weights, so the
    ImageNet backbone is built afresh: the kNN check must keep scoring the features it was
    chosen for (model card, "Open set")."""
    if config.ood_method != "knn-reference":
        return None
    if config.init_from:
        return _frozen_copy(
            create_model(num_classes, pretrained=True, backbone=architecture(model)), num_classes
        )
    return _frozen_copy(model, num_classes)


def _frozen_copy(model: Any, num_classes: int) -> Any:
    """A fresh network holding ``model``'s current weights, frozen (no gradients), in eval mode:
    the reference backbone a knn-reference bundle carries."""
    frozen: Any = create_model(num_classes, pretrained=False, backbone=architecture(model))
    frozen.load_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()})
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    return frozen.eval()


def _reuse_bundle(
    config: TrainConfig,
    base: Bundle,
    samples: list[d.Sample],
    label_map: d.LabelMap,
    arrays: dict[str, SplitArrays],
    weights: NDArray[np.float64],
    reference_model: Any,
    reference_features: dict[str, NDArray[np.float32]],
) -> TrainedModel:
    """``--from-bundle`` (``base``, loaded once by the caller): no training; the bundle's fp32
    model gives the validation logits and (for the Mahalanobis OOD model) the fine-tuned
    features."""
    _check_same_labels(base.labels, label_map.labels, config.from_bundle or "")
    base_fp32 = base.model_path("fp32")
    preprocess = config.preprocess()
    val = arrays["val"]
    base_logits, val.features = ex.onnx_outputs(base_fp32, load_inputs(val.paths, preprocess))
    if reference_model is None:
        arrays["train"].features = _onnx_features(base_fp32, arrays["train"].paths, preprocess)
    # The reused model's own training record (its epochs and loss curve) stays true of it.
    recorded = base.manifest.training
    epochs = recorded.get("epochs")
    history = [dict(e) for e in epochs if isinstance(e, dict)] if isinstance(epochs, list) else []
    best_epoch = recorded.get("best_epoch")
    return TrainedModel(
        None,
        samples,
        label_map,
        arrays,
        weights,
        None,
        history,
        best_epoch if isinstance(best_epoch, int) else 0,
        reference_model,
        reference_features,
        base,
        base_logits.astype(np.float64),
    )


def _train_full(
    model: torch.nn.Module,
    arrays: dict[str, SplitArrays],
    config: TrainConfig,
    weights: NDArray[np.float64],
    work: Path,
    dist_info: DistInfo | None = None,
) -> tuple[list[dict[str, float]], int]:
    """``full`` mode: fine-tune every layer on augmented images (in every process of a
    distributed run), then refresh the features (rank 0 only: the others stop there)."""
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
        dist_info=dist_info,
    )
    if dist_info is not None and not dist_info.is_main:
        return state.history, state.best_epoch
    for name, split_arrays in arrays.items():
        split_arrays.features = backbone_features(
            model, split_arrays.samples, config, cache=False, desc=f"{name} features (fine-tuned)"
        )
    return state.history, state.best_epoch


def export_and_calibrate(config: TrainConfig, trained: TrainedModel, work: Path) -> ExportedModel:
    """Calibrate on validation logits, export fp32 and INT8 through their gates, and fit the OOD
    model; when the INT8 model ships, temperature and thresholds are refitted on its logits."""
    train, val = trained.arrays["train"], trained.arrays["val"]
    if trained.val_logits is not None:
        val_logits = trained.val_logits
    else:
        classifier: Any = trained.model.get_classifier()
        w = classifier.weight.detach().numpy().astype(np.float64)
        b = classifier.bias.detach().numpy().astype(np.float64)
        val_logits = val.features.astype(np.float64) @ w.T + b
    labels = trained.label_map.labels
    temperature, chosen, thresholds, all_clear = _calibrate(val_logits, val.targets, labels, config)
    calibrated_on = "fp32 validation logits"
    ood_model: AnyOodModel
    if trained.reference_model is not None:
        bank = trained.reference_features["train"]
        if config.ood_bank_phone > 0:
            captures = phone_capture_features(
                trained.reference_model,
                train.paths,
                config.preprocess(),
                share=config.ood_bank_phone,
                seed=config.seed,
            )
            if len(captures):
                bank = np.concatenate([bank, captures])
        ood_model = fit_knn(bank, k=config.ood_k)
        ood_features, val_ood = "reference_features", trained.reference_features["val"]
    else:
        ood_model = fit_ood(train.features, train.targets)
        ood_features, val_ood = "features", val.features
    provisional_ood = choose_ood_threshold(
        ood_model.score(val_ood).astype(np.float64), config.ood_flag_rate
    )

    preprocess = config.preprocess()
    val_inputs = load_inputs(val.paths, preprocess)
    if trained.base_bundle is not None:
        base_fp32 = trained.base_bundle.model_path("fp32")
        fp32_path = work / ex.FP32_FILE
        if trained.reference_model is not None and not _has_output(base_fp32, "reference_features"):
            add_reference_branch(
                base_fp32, trained.reference_model, fp32_path, input_size=preprocess.input_size
            )
        else:
            shutil.copyfile(base_fp32, fp32_path)
        fp32_check = ex.check_fp32(base_fp32, fp32_path, val_inputs)
        backbone = trained.base_bundle.manifest.backbone
    else:
        fp32_path = ex.export_fp32(
            trained.model, work, val_inputs[:4], reference=trained.reference_model
        )
        fp32_check = ex.check_fp32(trained.model, fp32_path, val_inputs)
        backbone = describe(trained.model)["name"]
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
            temperature, chosen, thresholds, all_clear = _calibrate(
                int8_gate.val_logits.astype(np.float64), val.targets, labels, config
            )
            calibrated_on = "INT8 validation logits (the served model)"
    fp32_storage: ex.Fp32Storage | None = None
    if ood_features == "reference_features":
        # Two backbones: the fp32 file keeps its weights as float16 (arithmetic in float32),
        # so that fp32 and INT8 together stay within the bundle budget (docs/training.md).
        compact = work / "model.float16-weights.onnx"
        fp32_storage = ex.store_fp32_compactly(fp32_path, compact, val_inputs)
        fp32_path = compact
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
        backbone,
        all_clear,
        ood_features,
        fp32_storage,
    )


def evaluate_served(
    config: TrainConfig,
    trained: TrainedModel,
    exported: ExportedModel,
    work: Path,
    gate: Gate | None = None,
) -> Evaluation:
    """Evaluate the served model through the real predictor on validation and test, set the OOD
    threshold from its validation scores, and compare with ``--base`` when given (through
    ``gate`` when ``retrain`` gives one)."""
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
    evaluated_splits: dict[str, tuple[list[d.Sample], Any]] = {}
    for name, evaluated in (("validation", val), ("test", test)):
        if not evaluated.samples:
            continue
        result = evaluate_samples(
            bundle, evaluated.samples, trained.label_map, ood_threshold=ood_threshold
        )
        metrics[name] = result.report
        evaluated_splits[name] = (evaluated.samples, result)
        for path in result.write(work / "reports", name):
            reports[path.name] = path
    metrics["ood"] = _ood_summary(config, bundle, served_val_scores, ood_threshold, metrics)
    metrics["open_set"] = evaluate_open_set(
        bundle,
        evaluated_splits,
        Path(config.ood_data) if config.ood_data else None,
        work,
        trained.label_map,
    )
    metrics["fp32_check"] = exported.fp32_check.__dict__
    if exported.fp32_storage is not None:
        metrics["fp32_storage"] = exported.fp32_storage.__dict__
    metrics["int8"] = (
        exported.int8_gate.to_dict()
        if exported.int8_gate
        else {"written": False, "reason": "--no-int8"}
    )
    metrics["calibration"] = {
        "fitted_on": exported.calibrated_on,
        "temperature": exported.temperature,
        "thresholds": {k: asdict(v) for k, v in exported.chosen.items()},
        "all_clear": {
            "max_all_clear": config.max_all_clear,
            "min_guarded_images": config.all_clear_min_images,
            "floor": config.all_clear_floor,
            "rule": (
                "each look-alike label's threshold is the smallest >= the shared one at which at "
                "most max_all_clear of the validation images of the CITES labels it guards are "
                "answered with it; with fewer than min_guarded_images such images, at least floor"
            ),
            "labels": {k: v.to_dict() for k, v in exported.all_clear.items()},
        },
    }
    recommended, parent_version, override = True, None, None
    if config.base and gate is not None:
        parent_version = load_bundle(Path(config.base)).version
        splits = {name: part.samples for name, part in trained.arrays.items()}
        outcome = gate(bundle, splits)
        recommended, override = outcome.recommended, outcome.override
        metrics["gate"] = outcome.to_dict()
        gate_file = work / "reports" / "gate.md"
        gate_file.parent.mkdir(parents=True, exist_ok=True)
        gate_file.write_text(outcome.table, encoding="utf-8")
        reports[gate_file.name] = gate_file
    elif config.base:
        base = load_bundle(Path(config.base))
        parent_version = base.version
        recommended, comparison = judge_against_base(
            base, bundle, test.samples or val.samples, trained.label_map
        )
        metrics["comparison_with_base"] = comparison
    return Evaluation(metrics, reports, ood_threshold, recommended, parent_version, override)


def _ood_summary(
    config: TrainConfig,
    bundle: Bundle,
    served_val_scores: NDArray[np.float64],
    ood_threshold: float,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """How the OOD threshold was chosen and what share of each set it flags."""
    spec = bundle.manifest.ood
    knn = spec is not None and spec.features == "reference_features"
    summary: dict[str, Any] = {
        "method": spec.method if spec else None,
        "features": spec.features if spec else None,
        "k": config.ood_k if knn else None,
        "fitted_on": (
            "training split, frozen ImageNet backbone's features (reference_features)"
            + (
                f", plus phone captures of {config.ood_bank_phone:.0%} of its photos"
                if config.ood_bank_phone > 0
                else ""
            )
            if knn
            else "training split, fine-tuned features"
        ),
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
    *,
    extra: dict[str, Any] | None = None,
    dist_info: DistInfo | None = None,
) -> Path:
    """Write ``out/<version>/`` with the figures, the training summary (``extra`` under
    ``retrain``), ``config.json``, provenance, the reports, the loss curve and ``model.pt``."""
    training_info: dict[str, Any] = {
        "data": d.summarise(trained.samples),
        "splits": {name: d.summarise(a.samples) for name, a in trained.arrays.items()},
        "split_rule": (
            f"deterministic grouped split by case_id (seed {config.seed}); per class, groups "
            f"ordered by sha256 of their key: {config.val_fraction:.0%} validation, "
            f"{config.test_fraction:.0%} test, rest training"
        ),
        "label_map": trained.label_map.to_dict(),
        "mode": trained.mode or config.mode,
        "head_weight_decay": trained.head_weight_decay,
        "epochs": trained.history,
        "best_epoch": trained.best_epoch,
        "class_weights": [round(float(x), 4) for x in trained.class_weights],
        "duration_s": round(time.monotonic() - setup.started, 1),
    }
    synthetic = synthetic_sources(config.data)
    if synthetic:
        training_info["synthetic_data"] = synthetic
    reports = dict(evaluation.reports)
    if extra:
        training_info["retrain"] = extra
    if dist_info is not None:
        training_info["distributed"] = dist_info.to_dict()
    if trained.history:
        from training.report import write_loss_curve

        curve = write_loss_curve(trained.history, setup.work / "reports" / "training-loss.png")
        reports[curve.name] = curve
    torch_weights: dict[str, Path] = {}
    if trained.model is not None:
        torch_weights[TORCH_WEIGHTS_FILE] = save_torch_weights(
            trained.model, trained.label_map.labels, setup.work / TORCH_WEIGHTS_FILE
        )
    elif (
        trained.base_bundle is not None and TORCH_WEIGHTS_FILE in trained.base_bundle.manifest.files
    ):
        # --from-bundle: the reused model's torch weights, unchanged
        torch_weights[TORCH_WEIGHTS_FILE] = trained.base_bundle.path / TORCH_WEIGHTS_FILE
    config_file = setup.work / "config.json"
    config_file.write_text(
        json.dumps({"command": setup.command, "config": config.to_dict()}, indent=2) + "\n",
        encoding="utf-8",
    )
    provenance: dict[str, Any] = {
        "command": setup.command,
        "git_commit": git_commit(),
        "parent_version": evaluation.parent_version,
        "host": platform.node(),
        "torch": torch.__version__,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    seen_images = write_seen_images(
        setup.work / SEEN_IMAGES_FILE,
        {name: split.samples for name, split in trained.arrays.items()},
    )
    if evaluation.gate_override is not None:
        provenance["gate_override"] = evaluation.gate_override
    return write_bundle(
        setup.out_dir,
        version=setup.version,
        metrics=evaluation.metrics,
        training=training_info,
        provenance=provenance,
        limitations=list(config.limitations) or list(DEFAULT_LIMITATIONS),
        ood_threshold=evaluation.ood_threshold,
        extra_files={
            "config.json": config_file,
            **torch_weights,
            SEEN_IMAGES_FILE: seen_images,
            **reports,
        },
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
