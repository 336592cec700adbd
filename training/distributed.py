"""Distributed fine-tuning with DistributedDataParallel (gloo on CPU, NCCL on GPUs).

``cites-vision train --mode full --nproc N ...`` re-launches itself under ``torchrun``
(``python -m torch.distributed.run --standalone --nproc-per-node N``); a multi-node job runs
``torchrun --nnodes ... --rdzv-endpoint ... -m model.cli train ...`` on every node (see
docs/retraining.md). Inside each process :func:`init_from_env` reads the ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` variables torchrun sets and joins the process group.

Only the ``full`` fine-tuning epochs are distributed: each process trains on its share of every
epoch (a :class:`~torch.utils.data.DistributedSampler`, reshuffled with ``set_epoch`` every
epoch) and DDP averages the gradients, so the step is that of one process with
``batch_size * world_size`` images. Everything else (features, head, calibration, export, gates,
evaluation) is deterministic; rank 0 alone does it after training and alone writes the bundle.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs progress, checkpoints and writes the bundle."""
        return self.rank == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the manifest's ``training.distributed``)."""
        return {"world_size": self.world_size, "backend": self.backend}


def init_from_env() -> DistInfo | None:
    """Join the process group torchrun describes in the environment; None outside torchrun or
    with a world of one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend)
    logger.info(
        "distributed: rank %d of %d (%s, local rank %d)",
        info.rank,
        info.world_size,
        backend,
        local_rank,
    )
    return info


def barrier(info: DistInfo | None) -> None:
    """Wait for every process (no-op outside a distributed job)."""
    if info is not None:
        import torch.distributed as dist

        dist.barrier()


def broadcast_text(info: DistInfo | None, text: str) -> str:
    """Rank 0's ``text`` on every process (e.g. a timestamp version)."""
    if info is None:
        return text
    import torch.distributed as dist

    box = [text]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


def shutdown(info: DistInfo | None) -> None:
    """Leave the process group."""
    if info is not None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def device_for(info: DistInfo | None) -> torch.device:
    """The device this process trains on: its GPU under NCCL, else the CPU."""
    if info is not None and info.backend == "nccl":
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def torchrun_command(nproc: int, cli_args: Sequence[str]) -> list[str]:
    """The single-node ``torchrun`` command running ``cites-vision CLI_ARGS`` in ``nproc``
    processes (``--standalone``: a local rendezvous on a free port)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "model.cli",
        *cli_args,
    ]
