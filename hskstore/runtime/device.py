"""Which device and numeric precision a run uses: pure choices, unit-tested with the hardware as input.

`auto` picks CUDA, then Apple's `mps`, then the CPU. Precision follows the chosen device: bf16 autocast
only where the GPU has native bf16 (compute capability >= 8.0, Ampere on). `torch.cuda.is_bf16_supported()`
also says yes on T4/V100 (7.x), where bf16 is emulated and slower than fp32, so it is not asked; those
GPUs train in fp16 with a GradScaler. The teacher always runs inference in fp16 on CUDA (no gradients,
so no loss scaling), and everything on the CPU and on `mps` runs in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError

__all__ = ["resolve_device", "pick_device", "Precision", "training_precision", "inference_precision",
           "precision_for", "describe_device", "DEVICE_CHOICES"]

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


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
        """The autocast context for this precision on `device` (disabled for fp32)."""
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(device.type if self.grad_scaler else "cpu", enabled=self.grad_scaler)


FP32 = Precision("fp32", None, False)
BF16 = Precision("bf16-autocast", torch.bfloat16, False)
FP16 = Precision("fp16-autocast", torch.float16, True)


def training_precision(device_type: str, capability: tuple[int, int] | None, amp: bool = True) -> Precision:
    """Mixed precision for training (pure): bf16 on CUDA capability >= 8.0, fp16 + GradScaler below, fp32
    on the CPU, on `mps` and with amp off."""
    if device_type != "cuda" or not amp:
        return FP32
    if capability is not None and tuple(capability) >= (8, 0):
        return BF16
    return FP16


def inference_precision(device_type: str) -> Precision:
    """The teacher's precision at extraction (and online): fp16 autocast on CUDA, fp32 elsewhere."""
    return Precision("fp16-autocast", torch.float16, False) if device_type == "cuda" else FP32


def precision_for(device: torch.device, amp: bool = True) -> Precision:
    """`training_precision` with the chosen device's own compute capability."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return training_precision(device.type, capability, amp)


def describe_device(device: torch.device) -> str:
    """'cuda:0 (NVIDIA A100-SXM4-40GB, capability 8.0)', 'mps' or 'cpu': what a store or run records."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{device} ({torch.cuda.get_device_name(device)}, capability {major}.{minor})"
    return str(device)
