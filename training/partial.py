"""Fine-tuning of the last stage on cached activations (mode ``last``).

The backbone up to stage 5 stays frozen, so its output (``[192, 7, 7]`` per 224-pixel image) is
computed once per image and view and kept in memory as float16. Only the last stage, the 1x1
head convolution and the classifier are trained, on those cached maps: each step costs a small
fraction of a full forward and backward pass, which makes a few epochs affordable on two CPU
cores. Augmentation is preserved by caching several augmented views of each training image
(plus the plain evaluation view) and drawing one at random per image and epoch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch import nn
from tqdm import tqdm

from model.preprocess import PreprocessConfig
from training.images import decode_for_training
from training.inputs import batches, load_inputs
from training.train import write_checkpoint

logger = logging.getLogger(__name__)

TimmModel = Any
"""A timm EfficientNet: its stages and head are reached by attribute (``blocks``, ``conv_head``),
which torch's ``nn.Module`` typing cannot describe."""

DEFAULT_TRAINED_STAGES = 1
"""Stages trained in ``last`` mode (counted from the end): stage 6 plus the head."""


def split_index(model: TimmModel, trained_stages: int) -> int:
    """Index of the first trained stage in ``model.blocks``."""
    stages = len(model.blocks)
    if not 1 <= trained_stages <= stages:
        raise ValueError(f"trained_stages must be in 1..{stages}, got {trained_stages}")
    return stages - trained_stages


@torch.no_grad()
def trunk(model: TimmModel, images: torch.Tensor, split: int) -> torch.Tensor:
    """The frozen part: stem and stages ``0..split-1`` (eval mode)."""
    x = model.bn1(model.conv_stem(images.contiguous(memory_format=torch.channels_last)))
    for stage in model.blocks[:split]:
        x = stage(x)
    maps: torch.Tensor = x
    return maps


def top_features(model: TimmModel, maps: torch.Tensor, split: int) -> torch.Tensor:
    """The trained part up to the pooled features ``[N, F]``."""
    x = maps.float().contiguous(memory_format=torch.channels_last)
    for stage in model.blocks[split:]:
        x = stage(x)
    x = model.bn2(model.conv_head(x))
    pooled: torch.Tensor = x.mean(dim=(2, 3))
    return pooled


def top_logits(model: TimmModel, maps: torch.Tensor, split: int) -> torch.Tensor:
    """Logits from cached maps, with the model's dropout before the classifier in training."""
    features = top_features(model, maps, split)
    features = nn.functional.dropout(
        features, p=float(getattr(model, "drop_rate", 0.0)), training=model.training
    )
    logits: torch.Tensor = model.get_classifier()(features)
    return logits


def cache_plain(
    model: TimmModel, paths: Sequence[Path], config: PreprocessConfig, split: int, desc: str
) -> torch.Tensor:
    """Trunk maps of the evaluation view (``preprocess_bytes``), float16 ``[N, C, h, w]``."""
    model.eval()
    chunks = []
    for chunk in tqdm(list(batches(list(paths), 32)), desc=desc, unit="batch", dynamic_ncols=True):
        images = torch.from_numpy(load_inputs(chunk, config))
        chunks.append(trunk(model, images, split).half())
    return torch.cat(chunks)


def cache_augmented(
    model: TimmModel,
    paths: Sequence[Path],
    transform: Callable[[Image.Image], torch.Tensor],
    split: int,
    views: int,
    *,
    seed: int = 0,
) -> torch.Tensor:
    """Trunk maps of ``views`` augmented views per image, float16 ``[views, N, C, h, w]``."""
    model.eval()
    torch.manual_seed(seed)
    images = [decode_for_training(p, 288) for p in tqdm(paths, desc="decode", unit="img")]
    result = []
    for view in range(views):
        chunks = []
        for start in tqdm(
            range(0, len(images), 32),
            desc=f"augmented view {view + 1}/{views}",
            unit="batch",
            dynamic_ncols=True,
        ):
            batch = torch.stack([transform(im) for im in images[start : start + 32]])
            chunks.append(trunk(model, batch, split).half())
        result.append(torch.cat(chunks))
    return torch.stack(result)


@dataclass
class LastStageResult:
    """Progress of ``last``-mode training: per-epoch history and the epoch kept."""

    best_epoch: int = 0
    best_val_loss: float = math.inf
    history: list[dict[str, float]] = field(default_factory=list)


def _trainable(model: TimmModel, split: int) -> list[nn.Parameter]:
    prefixes = (
        *(f"blocks.{i}." for i in range(split, len(model.blocks))),
        "conv_head.",
        "bn2.",
        "classifier.",
    )
    params = []
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))
        if param.requires_grad:
            params.append(param)
    return params


@torch.no_grad()
def _evaluate(
    model: TimmModel,
    maps: torch.Tensor,
    targets: torch.Tensor,
    split: int,
    criterion: nn.Module,
) -> tuple[float, float]:
    model.eval()
    logits = torch.cat(
        [top_logits(model, maps[s : s + 128], split) for s in range(0, len(maps), 128)]
    )
    return float(criterion(logits, targets)), float((logits.argmax(1) == targets).float().mean())


def train_last_stage(
    model: TimmModel,
    train_views: torch.Tensor,
    train_targets: NDArray[np.int64],
    val_maps: torch.Tensor,
    val_targets: NDArray[np.int64],
    split: int,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    class_weights: NDArray[np.float64] | None,
    seed: int = 0,
    checkpoint: Path | None = None,
    resume: bool = False,
) -> LastStageResult:
    """Train the stages after ``split`` and the head on cached views; keep the best epoch.

    ``train_views`` is ``[V, N, C, h, w]``: each epoch draws one view per image. The epoch with
    the lowest (unweighted) validation loss is restored at the end. After every epoch the state
    is saved to ``checkpoint``; with ``resume`` a run continues after the last saved epoch.
    """
    params = _trainable(model, split)
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    criterion = nn.CrossEntropyLoss(weight=weight)
    plain = nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    n = train_views.shape[1]
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch), pct_start=0.15
    )
    generator = torch.Generator().manual_seed(seed)
    y = torch.as_tensor(train_targets, dtype=torch.int64)
    y_val = torch.as_tensor(val_targets, dtype=torch.int64)
    result = LastStageResult()
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    first = 1
    if resume and checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if saved.get("epochs") != epochs:
            raise ValueError(
                f"{checkpoint} was made for {saved.get('epochs')} epochs; resume with the same "
                "--epochs or start afresh without --resume"
            )
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"])
        result = LastStageResult(**saved["result"])
        best_state = saved["best_model"]
        first = len(result.history) + 1
        logger.info("resumed from %s after epoch %d", checkpoint, first - 1)
    for epoch in range(first, epochs + 1):
        started = time.monotonic()
        model.train()
        for module in model.modules():  # frozen batch norms keep their statistics
            if isinstance(module, nn.BatchNorm2d) and not module.weight.requires_grad:
                module.eval()
        order = torch.randperm(n, generator=generator)
        view = torch.randint(0, train_views.shape[0], (n,), generator=generator)
        total = 0.0
        bar = tqdm(
            range(0, n, batch_size),
            desc=f"epoch {epoch}/{epochs}",
            unit="batch",
            dynamic_ncols=True,
        )
        for start in bar:
            idx = order[start : start + batch_size]
            maps = train_views[view[idx], idx]
            loss = criterion(top_logits(model, maps, split), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
            bar.set_postfix(loss=f"{total / min(n, start + batch_size):.4f}")
        val_loss, val_acc = _evaluate(model, val_maps, y_val, split, plain)
        result.history.append(
            {"epoch": epoch, "train_loss": total / n, "val_loss": val_loss, "val_accuracy": val_acc}
        )
        logger.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, val accuracy %.4f (%.0f s)",
            epoch,
            epochs,
            total / n,
            val_loss,
            val_acc,
            time.monotonic() - started,
        )
        if val_loss < result.best_val_loss:
            result.best_val_loss, result.best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if checkpoint is not None:
            _save(checkpoint, model, optimizer, scheduler, generator, result, best_state, epochs)
    model.load_state_dict(best_state)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    logger.info("kept epoch %d (val loss %.4f)", result.best_epoch, result.best_val_loss)
    return result


def _save(
    path: Path,
    model: TimmModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    result: LastStageResult,
    best_state: dict[str, torch.Tensor],
    epochs: int,
) -> None:
    """Write a resumable checkpoint atomically."""
    write_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(),
            "result": result.__dict__,
            "best_model": best_state,
            "epochs": epochs,
        },
    )


@torch.no_grad()
def features_from_maps(model: TimmModel, maps: torch.Tensor, split: int) -> NDArray[np.float32]:
    """Pooled features ``[N, F]`` of the (eval-mode) model from cached trunk maps."""
    model.eval()
    if len(maps) == 0:
        return np.zeros((0, model.num_features), dtype=np.float32)
    out = [top_features(model, maps[s : s + 128], split) for s in range(0, len(maps), 128)]
    return torch.cat(out).numpy().astype(np.float32)
