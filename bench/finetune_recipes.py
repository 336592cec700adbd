"""Fine-tuning recipe experiments: variants of ``--mode full`` judged on the validation split only.

``cites-vision train`` ships one recipe (AdamW, one-cycle schedule, the ``camera`` preset,
class-weighted cross-entropy; :func:`training.train.fine_tune`). This script runs the same data,
split, head and fine-tuning loop with one or more changes switched on, so that a recipe can be
tried without adding an option to the product for every idea. It never looks at the test split.

Per epoch it logs the validation loss and the accuracy on each dataset source (``met-ivory``,
``wood-trade-groups``); ``OUT/NAME/result.json`` keeps them, and ``OUT/NAME/last.pt`` the final
weights. ``--combine A,B,C`` then scores the average of the runs' logits (an ensemble) and of
their weights (a "model soup", with the batch-norm statistics recomputed on the training images).

    python -m bench.finetune_recipes --name base
    python -m bench.finetune_recipes --name ema --ema 0.99
    python -m bench.finetune_recipes --combine base,seed1,seed2

The results of the sweep on the default data are in docs/model-card.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.utils.data import DataLoader

from training import data as d
from training.augment import AugmentPreset
from training.config import TrainConfig
from training.images import AugmentedImages
from training.inputs import load_inputs
from training.pipeline import SplitArrays, backbone_features, prepare_data, train_image_shorter
from training.train import choose_head, evaluate, set_head, trainable_parameters

logger = logging.getLogger(__name__)

DEFAULT_DATA = ("../shared/data/met-ivory", "../shared/data/wood-trade-groups")
DEFAULT_LABEL_MAP = "training/label_maps/default.tsv"
BLOCK_DEPTH = 8  # stem = 0, blocks.0..6 = 1..7, head convolution and classifier = 8


@dataclass(frozen=True)
class Validation:
    """The validation split of a run: inputs, targets and the dataset source of each image."""

    inputs: NDArray[np.float32]
    targets: NDArray[np.int64]
    sources: NDArray[np.str_]

    def accuracy_by_source(self, logits: NDArray[np.float32]) -> dict[str, float]:
        """Top-1 accuracy of ``logits`` on each source, and on all images (``all``)."""
        correct = logits.argmax(1) == self.targets
        scores = {"all": float(correct.mean())}
        for source in sorted(set(self.sources.tolist())):
            scores[source] = float(correct[self.sources == source].mean())
        return scores


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", help="dataset folder (repeatable)")
    parser.add_argument("--label-map", default=DEFAULT_LABEL_MAP)
    parser.add_argument("--out", default="runs/recipes", help="results folder")
    parser.add_argument("--name", help="this run's name (a subfolder of --out)")
    parser.add_argument("--combine", help="comma-separated runs to ensemble and average instead")
    parser.add_argument("--seed", type=int, default=0, help="training seed (the split stays)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--weight-decay", type=float, default=0.02)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--class-weight-power", type=float, default=0.5)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--ema", type=float, default=0.0, help="EMA decay per step (0: off)")
    parser.add_argument("--llrd", type=float, default=1.0, help="learning rate factor per block")
    parser.add_argument("--sgd", action="store_true", help="SGD with Nesterov momentum 0.9")
    parser.add_argument("--freeze-bn", action="store_true", help="batch norm stays in eval mode")
    parser.add_argument("--scale-min", type=float, default=0.35, help="random crop: least area")
    parser.add_argument("--jitter", default="0.3,0.3,0.2,0.03", help="brightness,contrast,sat,hue")
    parser.add_argument("--trivial-augment", action="store_true")
    parser.add_argument("--grayscale", type=float, default=0.0, help="random grayscale chance")
    parser.add_argument("--mix", type=float, default=0.0, help="mixup/cutmix beta (0: off)")
    parser.add_argument("--sam", type=float, default=0.0, help="sharpness-aware rho (0: off)")
    parser.add_argument("--cache-dir", default=None, help="backbone feature cache")
    args = parser.parse_args(argv)
    if bool(args.name) == bool(args.combine):
        parser.error("give either --name (train one recipe) or --combine (score finished runs)")
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    args.data = tuple(args.data or DEFAULT_DATA)
    return args


def _config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=args.data,
        label_map=args.label_map,
        input_size=args.input_size,
        class_weight_power=args.class_weight_power,
        cache_dir=args.cache_dir,
    )


def _transform(args: argparse.Namespace, config: TrainConfig) -> Callable[[Any], torch.Tensor]:
    from torchvision.transforms import v2

    jitter = tuple(float(x) for x in args.jitter.split(","))
    if len(jitter) != 4:
        raise SystemExit("--jitter takes four numbers: brightness,contrast,saturation,hue")
    preset = AugmentPreset(
        name="recipe",
        description="the camera preset with this run's changes",
        scale=(args.scale_min, 1.0),
        hflip=0.5,
        vflip=0.2,
        rotation=15.0,
        color_jitter=(jitter[0], jitter[1], jitter[2], jitter[3]),
    )
    transform: Any = preset.build(config.preprocess())
    extra: list[Any] = []
    if args.trivial_augment:
        extra.append(v2.TrivialAugmentWide())
    if args.grayscale:
        extra.append(v2.RandomGrayscale(args.grayscale))
    transform.transforms[2:2] = extra  # after RGB() and the random crop, on the PIL image
    built: Callable[[Any], torch.Tensor] = transform
    return built


def _block_depth(name: str) -> int:
    if name.startswith(("conv_stem.", "bn1.")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return BLOCK_DEPTH


def _optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    trainable_parameters(model, "full")
    groups: dict[int, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        groups.setdefault(_block_depth(name), []).append(param)
    param_groups: list[dict[str, Any]] = [
        {"params": params, "lr": args.lr * args.llrd ** (BLOCK_DEPTH - depth)}
        for depth, params in sorted(groups.items())
    ]
    if args.sgd:
        return torch.optim.SGD(
            param_groups, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay
        )
    return torch.optim.AdamW(param_groups, lr=args.lr, weight_decay=args.weight_decay)


def _mixed_loss(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    criterion: nn.Module,
    beta: float,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Half the batches plain; the other half mixup or cutmix (even odds), mixing ratio ~ Beta."""
    if not beta or rng.random() < 0.5:
        loss: torch.Tensor = criterion(model(images), targets)
        return loss
    lam = float(rng.beta(beta, beta))
    perm = torch.from_numpy(rng.permutation(len(targets)))
    if rng.random() < 0.5:
        images = lam * images + (1 - lam) * images[perm]
    else:
        side = images.shape[2]
        half = int(side * math.sqrt(1 - lam)) // 2
        cy, cx = int(rng.integers(side)), int(rng.integers(side))
        y0, y1 = max(cy - half, 0), min(cy + half, side)
        x0, x1 = max(cx - half, 0), min(cx + half, side)
        images = images.clone()
        images[:, :, y0:y1, x0:x1] = images[perm][:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / side**2
    logits = model(images)
    mixed: torch.Tensor = lam * criterion(logits, targets) + (1 - lam) * criterion(
        logits, targets[perm]
    )
    return mixed


def _sharpness_aware_gradient(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, criterion: nn.Module, rho: float
) -> None:
    """Replace the gradients with those at the worst nearby weights (SAM, Foret et al. 2021).

    Climbs ``rho`` along the normalised gradient, recomputes the loss's gradient there, and
    steps back; batch-norm running statistics are not updated by the second pass.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
    scale = rho / (float(norm) + 1e-12)
    steps = []
    with torch.no_grad():
        for param in params:
            assert param.grad is not None
            step = param.grad * scale
            param.add_(step)
            steps.append(step)
    momenta = {}
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            momenta[module] = module.momentum
            module.momentum = 0.0
    model.zero_grad(set_to_none=True)
    criterion(model(images), targets).backward()
    for module, momentum in momenta.items():
        module.momentum = momentum
    with torch.no_grad():
        for param, step in zip(params, steps, strict=True):
            param.sub_(step)


def _validation(config: TrainConfig, samples: list[d.Sample], label_map: d.LabelMap) -> Validation:
    return Validation(
        load_inputs([s.path for s in samples], config.preprocess()),
        d.encode_labels(samples, label_map),
        np.array([s.source for s in samples]),
    )


def train_recipe(args: argparse.Namespace) -> dict[str, Any]:
    """Train one recipe; write ``OUT/NAME/result.json``, ``last.pt`` and validation logits."""
    from training.backbone import create_model

    out = Path(args.out) / args.name
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    config = _config(args)
    _, label_map, splits = prepare_data(config)
    num_classes = len(label_map.labels)
    model: Any = create_model(num_classes, pretrained=True)
    arrays = {
        name: SplitArrays(
            splits[name],
            d.encode_labels(splits[name], label_map),
            backbone_features(model, splits[name], config, cache=True, desc=f"{name} features"),
        )
        for name in ("train", "val")  # never the test split
    }
    train, val = arrays["train"], arrays["val"]
    weights = d.class_weights(train.targets, num_classes, args.class_weight_power)
    head = choose_head(
        train.features, train.targets, val.features, val.targets, num_classes, class_weights=weights
    )
    set_head(model, head.weight, head.bias)
    validation = _validation(config, val.samples, label_map)
    images = AugmentedImages(
        train.paths,
        train.targets,
        _transform(args, config),
        keep_shorter=train_image_shorter(args.input_size),
    )
    model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(model, args)
    loader: DataLoader[tuple[torch.Tensor, int]] = DataLoader(
        images,
        batch_size=32,
        shuffle=True,
        drop_last=len(images) > 32,
        generator=torch.Generator().manual_seed(args.seed),
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=max(1, args.epochs * len(loader)),
        pct_start=0.15,
    )
    criterion = nn.CrossEntropyLoss(
        weight=torch.as_tensor(weights, dtype=torch.float32), label_smoothing=args.label_smoothing
    )
    plain = nn.CrossEntropyLoss()
    ema = None
    if args.ema:
        ema = torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema),  # type: ignore[no-untyped-call]
            use_buffers=True,
        )
    result: dict[str, Any] = {"args": vars(args), "epochs": []}
    for epoch in range(1, args.epochs + 1):
        started = time.monotonic()
        model.train()
        if args.freeze_bn:
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        for batch, targets in loader:
            batch = batch.contiguous(memory_format=torch.channels_last)
            loss = _mixed_loss(model, batch, targets, criterion, args.mix, rng)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if args.sam:
                _sharpness_aware_gradient(model, batch, targets, criterion, args.sam)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
        row: dict[str, Any] = {"epoch": epoch, "seconds": round(time.monotonic() - started)}
        val_loss, _, logits = evaluate(model, validation.inputs, validation.targets, plain)
        row.update(val_loss=val_loss, accuracy=validation.accuracy_by_source(logits))
        if ema is not None:
            ema_loss, _, ema_logits = evaluate(
                ema.module, validation.inputs, validation.targets, plain
            )
            row.update(ema_loss=ema_loss, ema_accuracy=validation.accuracy_by_source(ema_logits))
        logger.info("%s", json.dumps(row))
        result["epochs"].append(row)
    np.save(out / "val_logits.npy", logits)
    torch.save(model.state_dict(), out / "last.pt")
    if ema is not None:
        np.save(out / "val_logits_ema.npy", ema_logits)
        torch.save(ema.module.state_dict(), out / "ema.pt")
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def combine_runs(args: argparse.Namespace) -> dict[str, Any]:
    """Score the logit ensemble and the weight average ("soup") of finished runs."""
    from training.backbone import create_model

    names = [n for n in args.combine.split(",") if n]
    runs = [Path(args.out) / name for name in names]
    for run in runs:
        if not (run / "last.pt").is_file():
            raise SystemExit(f"{run}: no last.pt (train it with --name {run.name} first)")
    config = _config(args)
    _, label_map, splits = prepare_data(config)
    validation = _validation(config, splits["val"], label_map)
    logits = [np.load(run / "val_logits.npy") for run in runs]
    result: dict[str, Any] = {
        "runs": {
            name: validation.accuracy_by_source(x) for name, x in zip(names, logits, strict=True)
        },
        "ensemble": validation.accuracy_by_source(np.mean(logits, axis=0)),
    }
    states = [torch.load(run / "last.pt", map_location="cpu") for run in runs]
    averaged = {
        key: (sum(s[key].double() for s in states) / len(states)).to(tensor.dtype)
        if tensor.is_floating_point()
        else tensor
        for key, tensor in states[0].items()
    }
    model: Any = create_model(len(label_map.labels), pretrained=False)
    model.load_state_dict(averaged)
    train_inputs = load_inputs([s.path for s in splits["train"]], config.preprocess())
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over every batch
    model.train()
    with torch.no_grad():
        for start in range(0, len(train_inputs), 64):
            model(torch.from_numpy(train_inputs[start : start + 64]))
    _, _, soup_logits = evaluate(
        model, validation.inputs, validation.targets, nn.CrossEntropyLoss()
    )
    result["soup"] = validation.accuracy_by_source(soup_logits)
    logger.info("%s", json.dumps(result))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m bench.finetune_recipes ...``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        if args.combine:
            print(json.dumps(combine_runs(args)))
        else:
            print(json.dumps(train_recipe(args)["epochs"][-1]))
    except d.DataError as exc:
        print(f"finetune_recipes: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
