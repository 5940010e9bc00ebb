"""The torchrun process group of a training run and the few collectives the loop needs.

One process (no ``WORLD_SIZE`` above 1) needs no process group, and every helper here is then a
no-op; under torchrun, :func:`setup_distributed` joins the group (nccl on CUDA, gloo otherwise).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lotsim.train.checkpoint import rng_state


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, number of processes, local rank (its GPU)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owner: bool = False  # this call created the process group (and destroys it at the end)

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> Dist:
    """Join the torchrun process group if there is one (nccl on CUDA, gloo otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owner = not dist.is_initialized()
    if owner:
        cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(rank, world, local, owner)


def gather_rng(ddp: Dist) -> list:
    """Every process's RNG state, on rank 0 (a collective: all ranks call it at the same step)."""
    mine = rng_state()
    if ddp.world_size == 1:
        return [mine]
    states: list = [None] * ddp.world_size
    dist.all_gather_object(states, mine)
    return states


def mean_over_ranks(value: float, ddp: Dist) -> float:
    """The mean of ``value`` over all processes (a collective)."""
    if ddp.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / ddp.world_size


def stop_requested(flag: bool, ddp: Dist) -> bool:
    """Whether any process was asked to stop (a collective), so all stop at the same step."""
    if ddp.world_size == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t)


def barrier(ddp: Dist) -> None:
    """Wait for every process (a collective)."""
    if ddp.world_size > 1:
        dist.barrier()
