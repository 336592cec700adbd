"""Training cost: images/s of each fine-tuning mode, and the time to rebuild the default bundle.

The modes are the product's own (:data:`training.train.MODES`, with its
:func:`~training.train.trainable_parameters` and :func:`~training.train.set_train_mode`):

* ``head``: the backbone is frozen and its pooled features are computed once, so the cost per
  image is one forward pass (:func:`training.features.pooled_features`); fitting the linear
  head on cached features is negligible.
* ``last`` / ``full``: one AdamW step per batch, channels_last, as :func:`training.train.fine_tune`
  runs it (forward, loss, backward, step).

Both are timed on ready tensors (batch 32, 224x224), so the numbers are the model's compute; the
decode and augmentation of real files come on top (see the preprocessing table).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from bench.common import cpu_count, median

logger = logging.getLogger(__name__)


def _step_runner(mode: str, batch: int, size: int) -> Any:
    import torch
    from torch import nn

    from training.backbone import create_model
    from training.features import pooled_features
    from training.train import set_train_mode, trainable_parameters

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).contiguous(
        memory_format=torch.channels_last
    )
    targets = torch.randint(0, 2, (batch,), generator=generator)
    model = create_model(2, pretrained=False).to(memory_format=torch.channels_last)
    if mode == "head":
        model.eval()

        def forward_only() -> None:
            pooled_features(model, images)

        return forward_only
    params = trainable_parameters(model, mode)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        set_train_mode(model, mode)
        loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def mode_throughput(
    *, batch: int = 32, size: int = 224, steps: int = 3, rounds: int = 2
) -> dict[str, Any]:
    """Images/s of every fine-tuning mode, interleaved over ``rounds`` (median reported)."""
    import torch

    from training.train import MODES

    torch.set_num_threads(cpu_count())
    runners = {mode: _step_runner(mode, batch, size) for mode in MODES}
    per_round: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_index in range(rounds):
        for mode, runner in runners.items():
            if round_index == 0:
                runner()  # warm-up (allocations, oneDNN primitives)
            start = time.perf_counter()
            for _ in range(steps):
                runner()
            per_round[mode].append(batch * steps / (time.perf_counter() - start))
    return {
        "batch": batch,
        "size": size,
        "threads": cpu_count(),
        "modes": {
            mode: {"images_per_s": median(values), "per_round": values}
            for mode, values in per_round.items()
        },
    }


def recorded_rebuild(bundle_dir: Path) -> dict[str, Any]:
    """What the bundle's manifest records about how it was built (command, duration, data)."""
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    provenance = manifest.get("provenance", {}) or {}
    training = manifest.get("training", {}) or {}
    seconds = None
    for source in (provenance, training):
        for key in ("duration_s", "seconds", "wall_s", "elapsed_s", "train_seconds"):
            if isinstance(source.get(key), int | float):
                seconds = float(source[key])
                break
        if seconds is not None:
            break
    return {
        "version": manifest.get("version"),
        "command": provenance.get("command"),
        "recorded_seconds": seconds,
        "images": training.get("images") or training.get("train_images"),
        "mode": training.get("mode"),
    }


def measure_rebuild(out_dir: Path, timeout_s: float = 3600.0) -> dict[str, Any]:
    """Run ``training/build_default.sh`` into ``out_dir`` and time it (10-25 min on 2 cores)."""
    import subprocess

    from bench.common import REPO_ROOT

    script = REPO_ROOT / "training" / "build_default.sh"
    argv = ["bash", str(script), "--out", str(out_dir), "--version", "bench-rebuild"]
    start = time.perf_counter()
    done = subprocess.run(
        argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"rebuild failed ({done.returncode}): {done.stderr[-2000:]}")
    return {"command": "training/build_default.sh", "measured_seconds": seconds}
