"""Fine-tuning: fit a head on cached features, optionally fine-tune the last stages or all.

Modes:
- ``head``: the backbone is frozen; its pooled features are computed once (cached on disk) and a
  linear head is fitted on them (L-BFGS, class-weighted cross-entropy, weight decay chosen on the
  validation split).
- ``last``: the head is fitted as above, then the last two stages, the 1x1 head convolution and
  the classifier are fine-tuned on augmented images (channels_last, AdamW, cosine schedule); the
  epoch with the lowest validation loss is kept.
- ``full``: as ``last`` but every layer is trained.

``main(config)`` runs the whole pipeline and writes a bundle (see :mod:`training.pipeline`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

if TYPE_CHECKING:
    from training.distributed import DistInfo
    from training.images import AugmentedImages

logger = logging.getLogger(__name__)

MODES = ("head", "last", "full")
HEAD_WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1)
LAST_STAGE_PREFIXES = ("blocks.5.", "blocks.6.", "conv_head.", "bn2.", "classifier.")


@dataclass
class HeadFit:
    """A fitted linear head and how it did on validation."""

    weight: torch.Tensor
    bias: torch.Tensor
    weight_decay: float
    val_loss: float
    val_accuracy: float


def _weighted_loss(weights: NDArray[np.float64] | None) -> nn.CrossEntropyLoss:
    tensor = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    return nn.CrossEntropyLoss(weight=tensor)


def fit_linear_head(
    features: NDArray[np.float32],
    targets: NDArray[np.int64],
    num_classes: int,
    *,
    weight_decay: float,
    class_weights: NDArray[np.float64] | None = None,
    iterations: int = 200,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on fixed features with L-BFGS (deterministic).

    Minimises class-weighted cross-entropy plus ``weight_decay * ||W||^2 / 2``.
    Returns ``(weight [C, F], bias [C])``.
    """
    torch.manual_seed(seed)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(targets, dtype=torch.int64)
    head = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    criterion = _weighted_loss(class_weights)
    optimizer = torch.optim.LBFGS(
        head.parameters(),
        lr=1.0,
        max_iter=iterations,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss: torch.Tensor = criterion(head(x), y) + 0.5 * weight_decay * head.weight.pow(2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return head.weight.detach().clone(), head.bias.detach().clone()


def choose_head(
    train_features: NDArray[np.float32],
    train_targets: NDArray[np.int64],
    val_features: NDArray[np.float32],
    val_targets: NDArray[np.int64],
    num_classes: int,
    *,
    class_weights: NDArray[np.float64] | None = None,
    weight_decays: Iterable[float] = HEAD_WEIGHT_DECAYS,
) -> HeadFit:
    """Fit one head per weight decay and keep the one with the lowest validation loss.

    Training is class-weighted; the validation loss is the plain mean negative log-likelihood
    (class weights of a few-image class would make it a noisy criterion). With no validation
    images, 1e-3 is used.
    """
    x_val = torch.as_tensor(val_features, dtype=torch.float32)
    y_val = torch.as_tensor(val_targets, dtype=torch.int64)
    criterion = nn.CrossEntropyLoss()
    best: HeadFit | None = None
    for decay in weight_decays:
        weight, bias = fit_linear_head(
            train_features,
            train_targets,
            num_classes,
            weight_decay=decay,
            class_weights=class_weights,
        )
        if len(y_val) == 0:
            return HeadFit(weight, bias, 1e-3, math.nan, math.nan)
        with torch.no_grad():
            logits = x_val @ weight.T + bias
            loss = float(criterion(logits, y_val))
            acc = float((logits.argmax(1) == y_val).float().mean())
        logger.info("head weight decay %.0e: val loss %.4f, val accuracy %.4f", decay, loss, acc)
        if best is None or loss < best.val_loss:
            best = HeadFit(weight, bias, decay, loss, acc)
    if best is None:
        raise ValueError("no weight decay to try")
    logger.info("chose head weight decay %.0e", best.weight_decay)
    return best


def set_head(model: Any, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Copy a fitted head into the model's classifier."""
    classifier = model.get_classifier()
    with torch.no_grad():
        classifier.weight.copy_(weight)
        classifier.bias.copy_(bias)


def trainable_parameters(model: nn.Module, mode: str) -> list[nn.Parameter]:
    """Freeze what ``mode`` does not train; return the parameters left trainable."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    params = []
    for name, param in model.named_parameters():
        train = (
            mode == "full"
            or (mode == "last" and name.startswith(LAST_STAGE_PREFIXES))
            or (mode == "head" and name.startswith("classifier."))
        )
        param.requires_grad_(train)
        if train:
            params.append(param)
    return params


def set_train_mode(model: nn.Module, mode: str) -> None:
    """Training mode, but batch-norm layers of frozen parts keep their running statistics."""
    model.train()
    if mode == "full":
        return
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d) and not any(
            p.requires_grad for p in module.parameters()
        ):
            logger.debug("batch norm %s stays in eval mode", name)
            module.eval()


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, int]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    criterion: nn.Module,
    *,
    mode: str,
    epoch: int,
    show_progress: bool = True,
) -> float:
    """One pass over ``loader``; returns the mean training loss (of this process's share
    under DDP)."""
    set_train_mode(model, mode)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with tqdm(
        loader, desc=f"epoch {epoch}", unit="batch", dynamic_ncols=True, disable=not show_progress
    ) as bar:
        for images, targets in bar:
            images = images.to(device).contiguous(memory_format=torch.channels_last)
            targets = targets.to(device)
            loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += float(loss.detach()) * len(targets)
            count += len(targets)
            bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    inputs: NDArray[np.float32],
    targets: NDArray[np.int64],
    criterion: nn.Module,
    *,
    batch_size: int = 64,
) -> tuple[float, float, NDArray[np.float32]]:
    """Loss, accuracy and logits of ``model`` on preprocessed inputs ``[N, 3, S, S]``."""
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(inputs), batch_size):
        batch = torch.from_numpy(inputs[start : start + batch_size]).to(device)
        chunks.append(model(batch.contiguous(memory_format=torch.channels_last)).cpu())
    if not chunks:
        return math.nan, math.nan, np.zeros((0, 0), dtype=np.float32)
    logits = torch.cat(chunks)
    y = torch.as_tensor(targets, dtype=torch.int64)
    loss = float(criterion(logits, y))
    accuracy = float((logits.argmax(1) == y).float().mean())
    return loss, accuracy, logits.numpy()


@dataclass
class FineTuneState:
    """What a checkpoint holds besides the weights: progress and the best epoch so far."""

    epoch: int = 0
    best_epoch: int = 0
    best_val_loss: float = math.inf
    history: list[dict[str, float]] = field(default_factory=list)


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    state: FineTuneState,
    best_state: dict[str, torch.Tensor],
) -> None:
    """Write a resumable checkpoint atomically."""
    write_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "state": state.__dict__,
            "best_model": best_state,
        },
    )


def write_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Save ``payload`` with torch.save to a temporary file, then rename it over ``path``.

    A crash mid-write leaves the previous checkpoint intact, so ``--resume`` always finds a
    whole one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def fine_tune(
    model: nn.Module,
    train_set: AugmentedImages,
    val_inputs: NDArray[np.float32],
    val_targets: NDArray[np.int64],
    *,
    mode: str,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    class_weights: NDArray[np.float64] | None,
    checkpoint: Path,
    resume: bool,
    seed: int = 0,
    dist_info: DistInfo | None = None,
) -> FineTuneState:
    """Fine-tune ``model`` in place for ``epochs``; load the best epoch's weights at the end.

    With ``dist_info`` (under torchrun) the model is wrapped in DistributedDataParallel, each
    process draws its share of every epoch from a DistributedSampler (``set_epoch`` each epoch)
    and only rank 0 shows progress and writes the checkpoint; the weights stay identical on
    every process.
    """
    from training.distributed import device_for

    device = device_for(dist_info)
    main = dist_info is None or dist_info.is_main
    params = trainable_parameters(model, mode)
    model.to(device)
    model.to(memory_format=torch.channels_last)
    criterion = _weighted_loss(class_weights).to(device)
    trained: nn.Module = model
    sampler: DistributedSampler[Any] | None = None
    if dist_info is not None:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(
            model, device_ids=[dist_info.local_rank] if device.type == "cuda" else None
        )
        sampler = DistributedSampler(
            train_set,
            num_replicas=dist_info.world_size,
            rank=dist_info.rank,
            shuffle=True,
            seed=seed,
            drop_last=False,
        )
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    per_process = len(train_set) if sampler is None else len(sampler)
    loader: DataLoader[tuple[torch.Tensor, int]] = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=per_process > batch_size,
        generator=generator if sampler is None else None,
        num_workers=0,
    )
    steps = max(1, epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=steps, pct_start=0.15
    )
    state = FineTuneState()
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if resume and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if saved["scheduler"] is not None:
            scheduler.load_state_dict(saved["scheduler"])
        state = FineTuneState(**saved["state"])
        best_state = saved["best_model"]
        # Replay the shuffling of the epochs already done so the order stays reproducible
        # (a DistributedSampler's order depends on set_epoch alone).
        if sampler is None:
            for _ in range(state.epoch):
                torch.randperm(len(train_set), generator=generator)
        logger.info("resumed from %s after epoch %d", checkpoint, state.epoch)
    for epoch in range(state.epoch + 1, epochs + 1):
        started = time.monotonic()
        if sampler is not None:
            sampler.set_epoch(epoch)  # a new shuffle, the same on every process
        train_loss = train_one_epoch(
            trained,
            loader,
            optimizer,
            scheduler,
            criterion,
            mode=mode,
            epoch=epoch,
            show_progress=main,
        )
        val_loss, val_acc, _ = evaluate(model, val_inputs, val_targets, criterion)
        logger.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, val accuracy %.4f (%.0f s)",
            epoch,
            epochs,
            train_loss,
            val_loss,
            val_acc,
            time.monotonic() - started,
        )
        state.history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
            }
        )
        state.epoch = epoch
        if val_loss < state.best_val_loss or math.isnan(val_loss):
            state.best_val_loss, state.best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if main:
            save_checkpoint(checkpoint, model, optimizer, scheduler, state, best_state)
    model.load_state_dict(best_state)
    model.to(torch.device("cpu"))
    model.eval()
    logger.info("kept epoch %d (val loss %.4f)", state.best_epoch, state.best_val_loss)
    return state
