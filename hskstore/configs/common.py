"""Options that several configs and commands share, declared once."""

from __future__ import annotations

from ..options import Option, key_values

__all__ = ["DEVICE", "OVERWRITE", "STORAGE_OPTIONS", "SEED_RANGE", "check_device"]

SEED_RANGE = {"min": 0, "max": 2**32 - 1}  # numpy and torch generators take 0..2**32-1


def check_device(device: str) -> str:
    """Fail when the command line is parsed, before any data or weights load: a typo or a missing GPU is a
    one-line usage error. Only a device that needs checking imports torch."""
    if device in ("auto", "cpu"):
        return device
    from ..runtime.device import resolve_device

    resolve_device(device)
    return device


DEVICE = Option("auto (CUDA, else mps, else CPU), cpu, cuda, cuda:N or mps.", parse=check_device)
OVERWRITE = Option("Replace an existing output of this command (never another kind of directory).")
STORAGE_OPTIONS = Option(
    "fsspec option for a store URL, KEY=VALUE (repeatable), e.g. endpoint_url=http://host:9000. "
    "Credentials: the backend's usual environment (AWS_ACCESS_KEY_ID, ...).",
    flag="--storage-option", multiple=True, parse=key_values)
