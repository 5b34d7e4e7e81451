"""Several processes under `torchrun`: who this process is, which device it runs on, how ranks agree.

Nothing home-made: torchrun starts the processes and sets RANK, WORLD_SIZE and LOCAL_RANK; this module
reads them, picks the rank's device (CUDA device LOCAL_RANK) and opens torch.distributed's process
group (nccl on CUDA, gloo on the CPU) with a collective timeout long enough for a real run
(HSKSTORE_DIST_TIMEOUT). Without torchrun the world is one process and nothing is opened.

How ranks agree, beyond barriers and sums:
- `run_on_main`: rank 0 alone does something (prepares --output, reads a checkpoint) and every rank
  gets its result, or a one-line error when it failed;
- `broadcast_object` / `share_state`: rank 0's JSON-like value or `state_dict()` on every rank, without
  pickle (a JSON header and raw tensor bytes), since another machine may not see rank 0's files;
- `Lockstep`: ranks working through their own items meet after each one, so an error on any rank
  (out of memory...) stops them all at the next item instead of at a timeout.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import numbers
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePath

import torch

from .device import pick_device, mps_available
from ..errors import ConfigError, HskError

__all__ = ["World", "world_from_env", "rank_device", "setup", "process_group", "barrier", "all_reduce_sum",
           "raise_if_any_failed", "collective_timeout", "TIMEOUT_ENV", "DEFAULT_TIMEOUT_S", "broadcast_object",
           "run_on_main", "share_state", "Lockstep"]

TIMEOUT_ENV = "HSKSTORE_DIST_TIMEOUT"
# How long a rank waits at a collective before failing. NCCL's own default, 10 minutes, is shorter than
# what ranks wait for in a healthy run: the slowest rank's last chunks at the end of an extraction,
# rank 0's evaluation and checkpoint at the end of a training epoch.
DEFAULT_TIMEOUT_S = 2 * 3600


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


def collective_timeout(env=None) -> datetime.timedelta:
    """The process group's timeout: HSKSTORE_DIST_TIMEOUT seconds, else 2 hours (pure: `env` is an argument).

    Raises:
        ConfigError: HSKSTORE_DIST_TIMEOUT is not a positive number of seconds.
    """
    env = os.environ if env is None else env
    raw = env.get(TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return datetime.timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds > 0: set it to how long a rank may "
                          f"wait for the others at a collective (default {DEFAULT_TIMEOUT_S})")
    return datetime.timedelta(seconds=seconds)


def setup(request: str) -> tuple[World, torch.device]:
    """This process's World and device; opens the process group under torchrun (once per process)."""
    world = world_from_env()
    device = rank_device(request, world, cuda_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
                         mps_available=mps_available())
    if world.distributed and not torch.distributed.is_initialized():
        timeout = collective_timeout()
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.distributed.init_process_group("nccl", device_id=device, timeout=timeout)
        else:
            torch.distributed.init_process_group("gloo", timeout=timeout)
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
    if error is not None:
        _print_failure(world, error, what)
    flag = torch.tensor([0 if error is None else world.rank + 1], dtype=torch.int64, device=_wire(device))
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if error is not None:
        raise error
    failed = int(flag.item())
    if failed:
        raise HskError(f"rank {failed - 1} failed at {what}; its error is printed above")


def _print_failure(world: World, error: BaseException, what: str) -> None:
    """The failing rank's error on its stderr before the others hear of it: once they stop, torchrun's agent
    stops this rank too, maybe before its traceback is printed, and their one-line error says "printed above"."""
    message = " ".join(f"{type(error).__name__}: {error}".split())
    print(f"rank {world.rank} failed at {what}: {message}", file=sys.stderr, flush=True)


def _wire(device=None) -> torch.device:
    """Where collective tensors live: the rank's GPU under NCCL, else the CPU (gloo)."""
    if device is not None and torch.device(device).type == "cuda":
        return torch.device(device)
    if torch.distributed.is_initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------ rank 0 decides, the others follow

def _encode(value, tensors: list) -> object:
    """A JSON-able form of `value`; its tensors are appended to `tensors` and replaced by their index.

    Scalars stay themselves; a dict, list, tuple or path becomes a one-key object naming its kind (a
    dict as [key, value] pairs, so int keys stay ints), a tensor an object with its index, dtype and shape.
    """
    if torch.is_tensor(value):
        tensors.append(value)
        return {"tensor": len(tensors) - 1, "dtype": str(value.dtype).removeprefix("torch."),
                "shape": list(value.shape)}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):  # numpy integers too
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, dict):
        return {"dict": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"tuple" if isinstance(value, tuple) else "list": [_encode(v, tensors) for v in value]}
    if isinstance(value, PurePath):
        return {"path": str(value)}
    raise TypeError(f"cannot broadcast a {type(value).__name__}: only JSON values, paths and tensors")


def _decode(form, tensors: list):
    if not isinstance(form, dict):
        return form
    if "tensor" in form:
        return tensors[form["tensor"]]
    (kind, body), = form.items()
    if kind == "dict":
        return {_decode(k, tensors): _decode(v, tensors) for k, v in body}
    if kind == "list":
        return [_decode(v, tensors) for v in body]
    if kind == "tuple":
        return tuple(_decode(v, tensors) for v in body)
    return Path(body)


def _tensor_forms(form) -> list[dict]:
    """The tensor entries of an encoded value, in index order."""
    found, todo = [], [form]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            if "tensor" in item:
                found.append(item)
            else:
                todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return sorted(found, key=lambda entry: entry["tensor"])


def _broadcast_bytes(data: bytes | None, wire: torch.device) -> bytes:
    size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64, device=wire)
    torch.distributed.broadcast(size, src=0)
    buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(wire) if data is not None
              else torch.empty(int(size.item()), dtype=torch.uint8, device=wire))
    if len(buffer):
        torch.distributed.broadcast(buffer, src=0)
    return bytes(buffer.cpu().numpy())


def broadcast_object(value, world: World, device=None):
    """Rank 0's `value` on every rank (rank 0 gets its own object back; the others' argument is ignored).

    `value` is made of None, bools, numbers, strings, paths, tensors, and dicts (any of those as keys,
    ints included), lists and tuples of them: a JSON header, then each tensor's raw bytes. No pickle.
    Received tensors are on the CPU, as a checkpoint read from disk would be.
    """
    if not world.distributed:
        return value
    wire = _wire(device)
    tensors: list = []
    header = json.dumps(_encode(value, tensors)).encode() if world.is_main else None
    form = json.loads(_broadcast_bytes(header, wire))
    if world.is_main:
        for tensor in tensors:
            if tensor.numel():
                torch.distributed.broadcast(tensor.detach().contiguous().reshape(-1).view(torch.uint8).to(wire), src=0)
        return value
    received = []
    for entry in _tensor_forms(form):
        dtype = getattr(torch, entry["dtype"])
        count = math.prod(entry["shape"])
        raw = torch.empty(count * dtype.itemsize, dtype=torch.uint8, device=wire)
        if count:
            torch.distributed.broadcast(raw, src=0)
        received.append(raw.cpu().view(dtype).reshape(entry["shape"]))
    return _decode(form, received)


def run_on_main(world: World, what: str, fn, device=None):
    """`fn()` on rank 0 alone, its result on every rank.

    For what one process must do for all (delete and prepare --output, read a checkpoint that another
    machine may not see): the other ranks wait, then take rank 0's result; if `fn` raised, rank 0
    re-raises its error and the others raise a one-line HskError naming it.
    """
    if not world.distributed:
        return fn()
    result, error = None, None
    if world.is_main:
        try:
            result = fn()
        except Exception as exc:
            error = exc
    raise_if_any_failed(world, error, what, device)
    return broadcast_object(result, world, device)


def share_state(stateful, world: World, device=None) -> None:
    """Rank 0's `state_dict()` loaded into `stateful` (a module, an optimizer, a GradScaler) on every rank."""
    if not world.distributed:
        return
    state = broadcast_object(stateful.state_dict() if world.is_main else None, world, device)
    if not world.is_main:
        stateful.load_state_dict(state)


# ------------------------------------------------------------------ failures reach every rank

class Lockstep:
    """Ranks that work through their own items meet after each item, so a failure on one stops them all.

        with Lockstep(world, "extracting its chunks", device) as lockstep:
            for item in lockstep.each(my_items):
                work(item)

    A meeting is one tiny all-reduce of (failed rank + 1, still working). A rank out of items keeps
    meeting until every rank is, so ranks with different item counts stay matched. When `work` raises,
    leaving the block posts the failure at the others' next meeting: they raise a one-line HskError
    ("rank 1 failed at extracting its chunks") within one item's time, instead of waiting at the final
    barrier until the collective timeout; the failing rank's own error propagates unchanged. Only
    Exceptions are posted: on Ctrl-C torchrun stops every rank itself. One process: no meetings.
    """

    def __init__(self, world: World, what: str, device=None):
        self.world, self.what, self.device = world, what, device
        self._quiet = False  # a meeting failed or reported a failed peer: post nothing more

    def __enter__(self) -> "Lockstep":
        return self

    def each(self, items):
        for item in items:
            yield item
            self._meet(working=True)
        while self._meet(working=False):
            pass

    def _meet(self, working: bool) -> bool:
        if not self.world.distributed:
            return False
        self._quiet = True  # until this collective returns: a meeting that raised must not be followed by another
        flag = torch.tensor([0, int(working)], dtype=torch.int64, device=_wire(self.device))
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        failed_rank, anyone_working = (int(v) for v in flag.tolist())
        if failed_rank:
            raise HskError(f"rank {failed_rank - 1} failed at {self.what}; its error is printed above")
        self._quiet = False
        return bool(anyone_working)

    def __exit__(self, kind, error, traceback) -> bool:
        if error is not None and isinstance(error, Exception) and self.world.distributed and not self._quiet:
            self._quiet = True
            _print_failure(self.world, error, self.what)
            flag = torch.tensor([self.world.rank + 1, 0], dtype=torch.int64, device=_wire(self.device))
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return False
