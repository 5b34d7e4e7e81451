"""Bit packing of width masks and mantissa rounding of values: the method's bit-level encodings.

The store format (`store/format.py`) adopts these as its bit layout; they live here, below the store,
because selection and strategies use them while choosing what to keep.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BIT_ORDER", "pack_bits", "unpack_bits", "unpack_bits_numpy", "round_mantissa", "set_entries"]

BIT_ORDER = "little"            # bit j of mask byte i is dimension 8i+j (np.packbits(bitorder="little"))

_BIT_WEIGHTS: dict = {}


def _bit_weights(device):
    """The bit weights on `device`, made there once: a new tensor per call is a host->device copy per batch."""
    import torch

    key = str(device)
    if key not in _BIT_WEIGHTS:
        _BIT_WEIGHTS[key] = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=device)
    return _BIT_WEIGHTS[key]


def pack_bits(mask):
    """(..., d) bool tensor -> (..., ceil(d/8)) uint8, little bit order (bit j of byte i is dimension 8i+j).

    Same bytes as `np.packbits(mask, axis=-1, bitorder="little")`, computed where the mask lives (GPU too).
    """
    import torch

    d = mask.shape[-1]
    pad = (-d) % 8
    if pad:
        mask = torch.nn.functional.pad(mask, (0, pad))
    grouped = mask.reshape(*mask.shape[:-1], -1, 8).to(torch.uint8)
    return (grouped * _bit_weights(mask.device)).sum(-1, dtype=torch.uint8)


def unpack_bits(packed, hidden_size: int):
    """(..., ceil(d/8)) uint8 tensor -> (..., d) bool, on the tensor's device (use numpy on CPU: 20x faster)."""
    bits = (packed.unsqueeze(-1) & _bit_weights(packed.device)) != 0  # (..., d/8, 8)
    return bits.reshape(*packed.shape[:-1], -1)[..., :hidden_size]


def unpack_bits_numpy(packed: np.ndarray, hidden_size: int) -> np.ndarray:
    return np.unpackbits(packed, axis=-1, count=hidden_size, bitorder=BIT_ORDER).astype(bool)


def round_mantissa(values, bits: int):
    """Round float16 values to `bits` of their 10 mantissa bits, to nearest, ties to even.

    Lossy, but it lets the codec find the zeroed low bits: 392 instead of 520 bytes per row at 7 bits,
    0.39% worst relative error (docs/benchmarks.md). numcodecs' BitRound rejects float16.
    """
    import torch

    drop = 10 - bits
    raw = values.to(torch.float16).view(torch.int16).to(torch.int32) & 0xFFFF
    keep_lsb = (raw >> drop) & 1
    rounded = (raw + (1 << (drop - 1)) - 1 + keep_lsb) & ~((1 << drop) - 1) & 0xFFFF
    out = rounded.to(torch.uint16).view(torch.float16) if hasattr(torch, "uint16") else \
        rounded.to(torch.int32).where(rounded < 0x8000, rounded - 0x10000).to(torch.int16).view(torch.float16)
    # A carry into the exponent past the largest float16 would give inf: keep those values as they were.
    return torch.where(torch.isinf(out) & ~torch.isinf(values.to(torch.float16)), values.to(torch.float16), out)


def set_entries(flat: np.ndarray) -> np.ndarray:
    """np.flatnonzero of a 1-d bool array, 2-3x faster at the <= 10% density of a width-0.1 mask.

    numpy's nonzero takes a memchr loop, one unpredictable branch per set entry, when at most 10% of a
    bool array is set, and a branch-free loop above that (numpy/_core/src/multiarray/item_selection.c).
    A tail of set entries lifts the density just past 10%; the indices inside `flat` come out the same.
    """
    count, n = np.count_nonzero(flat), flat.size
    if count * 10 > n:
        return np.flatnonzero(flat)
    padded = np.ones(n + (n - 10 * count) // 9 + 1, dtype=bool)          # count + tail > 10% of the whole
    padded[:n] = flat
    return np.flatnonzero(padded)[:count]
