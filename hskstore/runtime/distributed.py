"""Several processes under `torchrun`: who this process is, which device it runs on, how ranks agree.

Nothing home-made: torchrun starts the processes and sets RANK, WORLD_SIZE and LOCAL_RANK; this module
reads them, picks the rank's device (CUDA device LOCAL_RANK) and opens torch.distributed's process
group (nccl on CUDA, gloo on the CPU). Without torchrun the world is one process and nothing is opened.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from .device import pick_device, mps_available
from ..errors import ConfigError, HskError

__all__ = ["World", "world_from_env", "rank_device", "setup", "process_group", "barrier", "all_reduce_sum",
           "raise_if_any_failed"]


@dataclass(frozen=True)
class World:
    rank: int = 0          # RANK: this process among all of them
    world_size: int = 1    # WORLD_SIZE: processes in the run, over every node
    local_rank: int = 0    # LOCAL_RANK: this process on its node; picks its GPU

    def __post_init__(self):
        if not (0 <= self.rank < self.world_size and 0 <= self.local_rank < self.world_size):
            raise ConfigError(f"torchrun environment is inconsistent: RANK={self.rank}, LOCAL_RANK={self.local_rank}, "
                              f"WORLD_SIZE={self.world_size}; start the processes with torchrun")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 creates the store, writes checkpoints and metrics; the others only compute."""
        return self.rank == 0


def world_from_env(env=None) -> World:
    env = os.environ if env is None else env
    try:
        return World(rank=int(env.get("RANK", 0)), world_size=int(env.get("WORLD_SIZE", 1)),
                     local_rank=int(env.get("LOCAL_RANK", 0)))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None


def rank_device(request: str, world: World, *, cuda_count: int, mps_available: bool) -> torch.device:
    """The device of one rank (pure): as `pick_device` alone; under torchrun CUDA device LOCAL_RANK.

    Raises:
        ConfigError: a fixed `cuda:N` under torchrun, more ranks on a node than GPUs, or `mps`.
    """
    if not world.distributed:
        return pick_device(request, cuda_count=cuda_count, mps_available=mps_available)
    if request == "auto":
        request = "cuda" if cuda_count else "cpu"  # one Apple GPU cannot be shared out: several CPU ranks
    device = pick_device(request, cuda_count=cuda_count, mps_available=mps_available)
    if device.type == "mps":
        raise ConfigError("torchrun with --device mps is not supported (one Apple GPU, no collective backend): "
                          "run a single process, or use --device cpu")
    if device.type == "cuda":
        if request != "cuda":
            raise ConfigError(f"under torchrun each rank uses cuda:LOCAL_RANK: pass --device cuda or auto, "
                              f"not {request!r} (choose GPUs with CUDA_VISIBLE_DEVICES)")
        if world.local_rank >= cuda_count:
            raise ConfigError(f"LOCAL_RANK {world.local_rank} needs a GPU but this node has {cuda_count}: "
                              f"use --nproc-per-node <= {cuda_count}")
        return torch.device("cuda", world.local_rank)
    return device


def setup(request: str) -> tuple[World, torch.device]:
    """This process's World and device; opens the process group under torchrun (once per process)."""
    world = world_from_env()
    device = rank_device(request, world, cuda_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
                         mps_available=mps_available())
    if world.distributed and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.distributed.init_process_group("nccl", device_id=device)
        else:
            torch.distributed.init_process_group("gloo")
    return world, device


@contextlib.contextmanager
def process_group(request: str):
    """`setup`, and close the process group on the way out when this call opened it."""
    opened = not torch.distributed.is_initialized()
    world, device = setup(request)
    try:
        yield world, device
    finally:
        if opened and world.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        torch.distributed.barrier()


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        torch.distributed.all_reduce(tensor)
    return tensor


def raise_if_any_failed(world: World, error: BaseException | None, what: str, device=None) -> None:
    """All ranks learn whether any rank failed at `what`: the failing rank re-raises its own error, the
    others raise a one-line error pointing to it, instead of waiting forever at the next collective."""
    if not world.distributed:
        if error is not None:
            raise error
        return
    flag = torch.tensor([0 if error is None else world.rank + 1], dtype=torch.int64,
                        device=device if device is not None and device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if error is not None:
        raise error
    failed = int(flag.item())
    if failed:
        raise HskError(f"rank {failed - 1} failed at {what}; its error is printed above")
