"""Which device and numeric precision a run uses: pure choices, unit-tested with the hardware as input.

`auto` picks CUDA, then Apple's `mps`, then the CPU. Precision follows the chosen device and its compute
capability: bf16 autocast only where the GPU has native bf16 (>= 8.0, Ampere on).
`torch.cuda.is_bf16_supported()` also says yes on T4/V100 (7.x), where bf16 is emulated and slower than
fp32, so it is not asked; those GPUs train in fp16 with a GradScaler. Below 7.0 (P40, P4, GTX 10xx: 6.1)
fp16 runs at 1/64 of the fp32 rate, so they train in fp32. The teacher runs inference in fp16 on CUDA
(no gradients, so no loss scaling; `inference_precision` with a capability below 7.0 says fp32), and
everything on the CPU and on `mps` runs in fp32.

Two host/device rules live here too, so every caller gets them right: an autocast context is only
constructed when it does something (`autocast`), and a copy is asynchronous only where that is safe
(`non_blocking_for`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..errors import ConfigError

__all__ = ["resolve_device", "pick_device", "Precision", "training_precision", "inference_precision",
           "precision_for", "inference_precision_for", "describe_device", "autocast", "autocast_available",
           "non_blocking_for", "DEVICE_CHOICES", "FP16_FROM", "BF16_FROM"]

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
FP16_FROM = (7, 0)  # tensor cores (V100 on); 6.1 (P40, P4, GTX 10xx) runs fp16 at 1/64 of its fp32 rate
BF16_FROM = (8, 0)  # native bf16 (A100 on); 7.x only emulates it


def pick_device(device: str, *, cuda_count: int, mps_available: bool) -> torch.device:
    """The device a request names, given what the machine has (pure: the hardware is an argument).

    Raises:
        ConfigError: an unknown name, or a device this machine does not have (one line, with the fix).
    """
    if device == "auto":
        if cuda_count > 0:
            return torch.device("cuda", 0)
        return torch.device("mps" if mps_available else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {device!r}: use {DEVICE_CHOICES}") from None
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {device!r} is not supported: use {DEVICE_CHOICES}")
    if resolved.type == "cuda":
        if cuda_count == 0:
            raise ConfigError(f"device {device!r} asked for but CUDA is not available here: use --device cpu or auto")
        index = 0 if resolved.index is None else resolved.index
        if index >= cuda_count:
            raise ConfigError(f"device {device!r} does not exist: this machine has {cuda_count} CUDA device(s), "
                              f"cuda:0..cuda:{cuda_count - 1}")
        return torch.device("cuda", index)
    if resolved.type == "mps" and not mps_available:
        raise ConfigError(f"device {device!r} asked for but Apple's MPS backend is not available here: "
                          "use --device cpu or auto")
    return resolved


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_device(device: str) -> torch.device:
    """`pick_device` against this machine's hardware."""
    return pick_device(device, cuda_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
                       mps_available=mps_available())


@dataclass(frozen=True)
class Precision:
    name: str                          # what the store or run records: "bf16-autocast", "fp16-autocast", "fp32"
    autocast_dtype: torch.dtype | None  # None: no autocast
    grad_scaler: bool                  # fp16 training needs loss scaling; bf16 and fp32 do not

    def autocast(self, device: torch.device):
        """The autocast context for this precision on `device`: a no-op context for fp32."""
        return autocast(device, self.autocast_dtype)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(device.type if self.grad_scaler else "cpu", enabled=self.grad_scaler)


FP32 = Precision("fp32", None, False)
BF16 = Precision("bf16-autocast", torch.bfloat16, False)
FP16 = Precision("fp16-autocast", torch.float16, True)


FP16_INFERENCE = Precision("fp16-autocast", torch.float16, False)  # no gradients: nothing to scale


def training_precision(device_type: str, capability: tuple[int, int] | None, amp: bool = True) -> Precision:
    """Mixed precision for training (pure): on CUDA bf16 from capability 8.0, fp16 + GradScaler from 7.0,
    fp32 below; fp32 on the CPU, on `mps` and with amp off. An unknown capability (None) counts as 7.x."""
    if device_type != "cuda" or not amp:
        return FP32
    if capability is None:
        return FP16
    if tuple(capability) >= BF16_FROM:
        return BF16
    return FP16 if tuple(capability) >= FP16_FROM else FP32


def inference_precision(device_type: str, capability: tuple[int, int] | None = None) -> Precision:
    """The teacher's precision at extraction (and online) (pure): fp16 autocast on CUDA, fp32 elsewhere and
    on CUDA below capability 7.0. Without a capability, any CUDA device counts as fp16-capable."""
    if device_type != "cuda" or (capability is not None and tuple(capability) < FP16_FROM):
        return FP32
    return FP16_INFERENCE


def _capability(device: torch.device) -> tuple[int, int] | None:
    return tuple(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None


def precision_for(device: torch.device, amp: bool = True) -> Precision:
    """`training_precision` with the chosen device's own compute capability."""
    return training_precision(device.type, _capability(device), amp)


def inference_precision_for(device: torch.device) -> Precision:
    """`inference_precision` with the chosen device's own compute capability."""
    return inference_precision(device.type, _capability(device))


def autocast_available(device_type: str) -> bool:
    """Whether the running torch has autocast for `device_type` (mps only from torch 2.5)."""
    probe = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
    if probe is None:
        return device_type in ("cuda", "cpu")
    return bool(probe(device_type))


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """`torch.autocast(device, dtype)`, or a no-op context when `dtype` is None (fp32) or the running torch
    has no autocast for the device.

    The only place that constructs an autocast: torch before 2.5 raises on `torch.autocast("mps")` even
    with `enabled=False`, so a run in fp32 must not build one at all.
    """
    device_type = torch.device(device).type
    if dtype is None or not autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def non_blocking_for(device: torch.device | str, pinned: bool) -> bool:
    """Whether a copy between the host and `device` may be asynchronous (pure).

    An asynchronous copy returns before it has read its source, so its source must stay alive and
    unchanged until the device reads it. Only CUDA with page-locked (pinned) host memory gives that:
    from pageable memory CUDA stages the copy itself, and on `mps` a temporary source (a fresh numpy
    slice) can be freed and reused before the copy reads it, corrupting the input silently. A CUDA
    tensor copied to the CPU with `non_blocking=True` lands in memory torch pins itself: pass
    `pinned=True` for it, and synchronize before reading the result.
    """
    return torch.device(device).type == "cuda" and pinned


def describe_device(device: torch.device) -> str:
    """'cuda:0 (NVIDIA A100-SXM4-40GB, capability 8.0)', 'mps' or 'cpu': what a store or run records."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{device} ({torch.cuda.get_device_name(device)}, capability {major}.{minor})"
    return str(device)
