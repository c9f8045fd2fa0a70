"""Data-parallel training across processes (``torchrun``): which process does what.

``torchrun --nproc-per-node N -m spikereveal train ...`` starts N copies of the command; each learns its
place from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``)
and joins one process group: ``gloo`` on CPU, ``nccl`` on GPUs (rank ``r`` of a node on ``cuda:LOCAL_RANK``).

What the training loop (``training.train``) does with it:

- ``--batch-size`` stays the **global** batch (crops per optimiser step); every step's items are split into
  contiguous per-rank shares (:func:`rank_batches`). Each rank scales its mean loss by its share of the
  batch, so DistributedDataParallel's gradient average is the gradient of the whole batch's mean loss: the
  same optimiser steps as one process with the same batch, up to float rounding (no network here has a
  cross-sample layer such as BatchNorm). A rank whose share of a short last batch is empty runs one item at
  weight 0 (every rank must take part in the gradient all-reduce).
- The teacher targets are sharded by cache file (:func:`shard`): each rank computes and writes only its own
  files, then all ranks wait and read the union (``datasets.TeacherCache``).
- Rank 0 alone writes checkpoints and reports progress; stop requests (time limit, Ctrl-C) and the loss
  are agreed over all ranks, so every rank stops after the same step.

A single process uses the same code through :class:`LocalGroup` (rank 0 of 1, every collective a no-op).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence

import torch

from spikereveal.errors import ConfigError

log = logging.getLogger(__name__)

#: the torchrun variables a rank reads (``init_method="env://"`` reads MASTER_ADDR/MASTER_PORT too)
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: how long a rank waits for the others at a collective before failing (teacher targets on a slow rank
#: included: the stage ends in a barrier)
COLLECTIVE_TIMEOUT_S = 2 * 3600
TORCHRUN_HINT = "torchrun --nproc-per-node N -m spikereveal train ..."


def launched_by_torchrun(environ: os._Environ | dict | None = None) -> bool:
    """True when torchrun (or another launcher) set ``WORLD_SIZE`` > 1 for this process."""
    environ = os.environ if environ is None else environ
    try:
        return int(environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


@dataclass(frozen=True)
class RankPlace:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, environ: os._Environ | dict | None = None) -> "RankPlace":
        environ = os.environ if environ is None else environ
        missing = [name for name in RANK_VARIABLES if name not in environ]
        if missing:
            raise ConfigError(
                f"--distributed needs the variables torchrun sets ({', '.join(missing)} missing): start the "
                f"command with {TORCHRUN_HINT}"
            )
        try:
            rank, world, local = (int(environ[name]) for name in RANK_VARIABLES)
        except ValueError as exc:
            raise ConfigError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {exc}") from exc
        if not (world >= 1 and 0 <= rank < world and local >= 0):
            raise ConfigError(f"inconsistent torchrun variables RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
        return cls(rank, world, local)


def shard(count: int, rank: int, world_size: int) -> range:
    """The items of ``count`` that ``rank`` owns: every ``world_size``-th from ``rank`` (disjoint, complete)."""
    return range(rank, count, world_size)


def rank_batches(first_item: int, stop: int, batch_size: int, rank: int,
                 world_size: int) -> list[tuple[list[int], float]]:
    """This rank's part of every global batch of items ``[first_item, stop)``: ``(indices, weight)`` per step.

    Global batch ``s`` holds items ``first_item + s·B …`` (B = ``batch_size``, the last one may be short);
    rank ``r`` takes a contiguous share of ``n_r`` of its ``n`` items (sizes differ by at most one) and
    ``weight = n_r · world_size / n``: a rank's mean loss times its weight, averaged over the ranks, is the
    mean loss of the whole batch. An empty share holds the batch's first item at weight 0.
    """
    plan = []
    for start in range(first_item, stop, batch_size):
        n = min(batch_size, stop - start)
        base, extra = divmod(n, world_size)
        size = base + (1 if rank < extra else 0)
        offset = start + rank * base + min(rank, extra)
        if size:
            plan.append((list(range(offset, offset + size)), size * world_size / n))
        else:
            plan.append(([start], 0.0))
    return plan


class LocalGroup:
    """One process: rank 0 of 1. The collectives return their input."""

    place = RankPlace(0, 1, 0)
    backend = None

    def __init__(self, device: torch.device):
        self.device = device

    @property
    def is_main(self) -> bool:
        return True

    @property
    def world_size(self) -> int:
        return 1

    def wrap(self, model):
        return model

    def barrier(self) -> None:
        pass

    def sum(self, values: Sequence[float]) -> list[float]:
        return [float(v) for v in values]

    def gather(self, value: float) -> list[float]:
        return [float(value)]

    def close(self) -> None:
        pass


class ProcessGroup(LocalGroup):
    """This process's membership of torchrun's process group (joined by :func:`join`)."""

    def __init__(self, place: RankPlace, device: torch.device, backend: str, owned: bool):
        super().__init__(device)
        self.place = place
        self.backend = backend
        self._owned = owned

    @property
    def is_main(self) -> bool:
        return self.place.is_main

    @property
    def world_size(self) -> int:
        return self.place.world_size

    def wrap(self, model):
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def sum(self, values: Sequence[float]) -> list[float]:
        import torch.distributed as dist

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().tolist()

    def gather(self, value: float) -> list[float]:
        """``value`` of every rank, in rank order."""
        values = [0.0] * self.world_size
        values[self.place.rank] = float(value)
        return self.sum(values)

    def close(self) -> None:
        import torch.distributed as dist

        if self._owned and dist.is_initialized():
            dist.destroy_process_group()


def join(device: str, environ: os._Environ | dict | None = None) -> ProcessGroup:
    """Join torchrun's process group: ``gloo`` for ``device`` "cpu", ``nccl`` for "cuda" (this rank on
    ``cuda:LOCAL_RANK``). A group that is already initialised (e.g. by a caller) is used as it is."""
    import torch.distributed as dist

    place = RankPlace.from_environment(environ)
    try:
        asked = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r} (use cpu or cuda)") from exc
    if asked.type == "cuda":
        if asked.index is not None:
            raise ConfigError(
                f"--device {device} with torchrun: each rank takes the GPU of its LOCAL_RANK; pass --device cuda "
                f"(and CUDA_VISIBLE_DEVICES to choose the GPUs)"
            )
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but PyTorch sees no CUDA device; use --device cpu")
        if place.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"rank {place.rank} has LOCAL_RANK {place.local_rank} but only {torch.cuda.device_count()} CUDA "
                f"device(s) are visible: start at most that many processes per node (--nproc-per-node)"
            )
        if not dist.is_nccl_available():
            raise ConfigError("this PyTorch build has no NCCL; distributed GPU training needs it")
        resolved, backend = torch.device("cuda", place.local_rank), "nccl"
        torch.cuda.set_device(resolved)
    elif asked.type == "cpu":
        resolved, backend = torch.device("cpu"), "gloo"
    else:
        raise ConfigError(f"distributed training runs on cpu (gloo) or cuda (nccl), not {device!r}")
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend=backend, init_method="env://", rank=place.rank,
                                world_size=place.world_size, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    elif (dist.get_rank(), dist.get_world_size()) != (place.rank, place.world_size):
        raise ConfigError("the process group already initialised here disagrees with RANK/WORLD_SIZE")
    log.info("rank %d of %d (local rank %d) on %s, backend %s", place.rank, place.world_size, place.local_rank,
             resolved, backend)
    return ProcessGroup(place, resolved, backend, owned)


__all__ = ["LocalGroup", "ProcessGroup", "RankPlace", "join", "launched_by_torchrun", "rank_batches", "shard"]
