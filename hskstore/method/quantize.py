"""Quantization of stored HSK values: symmetric absmax int8 and int4, and int4-log, 4 bits packed two a byte.

The exact rule (docs/store-format.md, "Quantized values"), for each group of `group` consecutive kept values
of one vector (the whole vector when `group` is None), in their stored order (ascending dimension):

    x      = the values rounded to float16 first (what a float16 store holds: extraction and requantizing a
             float16 store with `hskstore slice`/`convert` give the same bytes), computed in float32
    scale  = float16(max |x| / Q)                Q = 127 (int8) or 7 (int4); round to nearest even
    q      = clamp(round_half_even(x / scale), -Q, Q)   (q = 0 where scale is 0)
    x_hat  = q * float32(scale)                  what every reader trains on

so |x - x_hat| <= scale / 2 for every value. int4 codes are 4-bit two's complement (-7..7; -8 is never
written), two to a byte: value 2j in the low nibble of byte j, value 2j+1 in the high nibble; an odd k
leaves the last high nibble 0. Scales are (..., ceil(k / group)) float16. Dequantization runs where its
inputs are (the training device); everything here is a tensor function, with numpy wrappers for the store.

int4-log is made for the values `mag` keeps: each vector's k largest magnitudes, so every |x| lies in
[lo, hi] = [min |x|, max |x|] and a linear code wastes its levels on (-lo, lo), where no value is. Per
vector (docs/store-format.md, "int4-log"):

    hi     = float16(max |x|);  lo = float16(max(min |x|, hi * 2^-14))   (the floor bounds the range a code spans;
                                                                         lo >= 2^-24, float16's least, if hi > 0)
    r      = ln(hi / lo) / 7                                          (0 when hi = lo; the code is 0 when hi = 0)
    j      = clamp(round_half_even(ln(|x| / lo) / r), 0, 7)           (the nearest level in log space)
    code   = 8 * (x < 0) + j                                          (sign and magnitude, one nibble)
    x_hat  = sign * lo * exp(j * r)                                   (0 where hi = 0)

The levels are geometric between lo and hi, so the error is relative: |x - x_hat| <= |x_hat| * (e^(r/2) - 1).
On the demo teacher's (1, 9, 0.1) values its RMS error is 3.9% of the values' (int4's: 10.4%, int8's: 0.6%)
for one more float16 a vector (scales (..., 2): lo, hi).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["VALUE_FORMATS", "QUANTIZED_FORMATS", "QMAX", "ValueFormat", "quantize", "dequantize", "pack_int4",
           "unpack_int4", "unpack_nibbles", "quantize_log4", "dequantize_log4", "quantize_numpy", "dequantize_numpy",
           "error_bound"]

VALUE_FORMATS = ("float16", "int8", "int4", "int4-log")
QUANTIZED_FORMATS = ("int8", "int4", "int4-log")
QMAX = {"int8": 127, "int4": 7}           # the symmetric absmax formats' largest code
LOG_LEVELS = 8                            # int4-log: 3 bits of magnitude, one of sign
LOG_FLOOR = 2.0 ** -14                    # int4-log: lo >= hi * LOG_FLOOR
# The finer the format, the larger its number: requantizing may only go down this order.
PRECISION = {"float16": 3, "int8": 2, "int4-log": 1, "int4": 0}


@dataclass(frozen=True)
class ValueFormat:
    """How a store's `values` array encodes the kept activations: what a reader needs to decode them.

    name: float16 | int8 | int4 | int4-log; width: k, the kept values per vector (4-bit codes need it: an odd
    k is padded); group: values per scale, None for one scale per vector (int4-log: always None).
    """

    name: str = "float16"
    width: int = 0
    group: int | None = None

    def __post_init__(self):
        if self.name not in VALUE_FORMATS:
            raise ValueError(f"value format must be one of {list(VALUE_FORMATS)}, got {self.name!r}")
        if self.group is not None and self.group < 1:
            raise ValueError(f"a quantization group holds >= 1 value, got {self.group}")
        if self.group is not None and self.log:
            raise ValueError("int4-log keeps one (lo, hi) pair per vector: it takes no group")

    @property
    def quantized(self) -> bool:
        return self.name in QUANTIZED_FORMATS

    @property
    def log(self) -> bool:
        return self.name == "int4-log"

    @property
    def groups(self) -> int:
        """Scale groups per vector."""
        return 1 if self.group is None else -(-self.width // self.group)

    @property
    def scales_per_vector(self) -> int:
        """float16 scales stored per vector: one per group, or int4-log's (lo, hi)."""
        return 2 if self.log else self.groups

    @property
    def stored_width(self) -> int:
        """Entries of `values` per vector: k, or ceil(k/2) bytes for the 4-bit formats."""
        return -(-self.width // 2) if self.name in ("int4", "int4-log") else self.width

    @property
    def dtype(self) -> str:
        return {"int8": "int8", "int4": "uint8", "int4-log": "uint8"}.get(self.name, "float16")


def _grouped(x, group: int | None):
    """(..., k) -> (..., G, g) with zero padding (zeros never raise an absmax), and the padding added."""
    import torch

    k = x.shape[-1]
    g = k if group is None else group
    pad = (-k) % g if k else 0
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], -1, max(g, 1)), pad


def pack_int4(q):
    """(..., k) int codes in -8..7 -> (..., ceil(k/2)) uint8: value 2j low nibble, 2j+1 high nibble of byte j."""
    import torch

    k = q.shape[-1]
    if k % 2:
        q = torch.nn.functional.pad(q, (0, 1))
    nibbles = (q.to(torch.int16) & 0xF).reshape(*q.shape[:-1], -1, 2)
    return (nibbles[..., 0] | (nibbles[..., 1] << 4)).to(torch.uint8)


def unpack_nibbles(packed, width: int):
    """(..., ceil(k/2)) uint8 -> (..., k) int16 nibbles 0..15 (value 2j low nibble of byte j), on its device."""
    import torch

    b = packed.to(torch.int16)
    return torch.stack((b & 0xF, b >> 4), dim=-1).reshape(*packed.shape[:-1], -1)[..., :width]


def unpack_int4(packed, width: int):
    """(..., ceil(k/2)) uint8 -> (..., k) int8 codes (4-bit two's complement, sign-extended), on its device."""
    import torch

    return ((unpack_nibbles(packed, width) ^ 8) - 8).to(torch.int8)


def _log_ranges(lo, hi):
    """float16 (lo, hi) -> float32 (lo, r) with r = ln(hi/lo) / 7: zero where hi = lo or hi = 0."""
    import torch

    lo32, hi32 = lo.to(torch.float32), hi.to(torch.float32)
    return lo32, torch.where(lo32 > 0, torch.log(hi32 / lo32), 0.0) / (LOG_LEVELS - 1)   # 0/0 where lo = 0: dropped


def quantize_log4(values):
    """(..., k) float values -> int4-log (codes (..., ceil(k/2)) uint8, scales (..., 2) float16 lo, hi)."""
    import torch

    x = values.to(torch.float16).to(torch.float32)
    a = x.abs()
    hi = a.amax(-1, keepdim=True).to(torch.float16)
    floor = hi.to(torch.float32) * LOG_FLOOR
    lo = torch.maximum(a.amin(-1, keepdim=True), floor).to(torch.float16)
    lo = torch.minimum(lo, hi)                                       # rounding the floor may not pass hi
    # A floor below float16's range (hi < ~1e-3 with a zero among the values) would round to 0: keep lo > 0.
    lo = torch.where((lo == 0) & (hi > 0), torch.full_like(lo, 2.0 ** -24), lo)
    lo32, r = _log_ranges(lo, hi)
    safe_lo = torch.where(lo32 > 0, lo32, torch.ones_like(lo32))
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    level = torch.log(torch.clamp(a, min=1e-30) / safe_lo) / safe_r
    j = torch.where(r > 0, torch.round(level), torch.zeros_like(level)).clamp(0, LOG_LEVELS - 1)
    code = j.to(torch.int16) + 8 * (x < 0).to(torch.int16)
    code = torch.where(hi.to(torch.float32) > 0, code, torch.zeros_like(code))
    return pack_int4(code), torch.cat((lo, hi), dim=-1)


def dequantize_log4(codes, scales, width: int):
    """int4-log codes and (lo, hi) scales -> (..., k) float32, on the codes' device."""
    import torch

    nibbles = unpack_nibbles(codes, width).long()
    scales = scales.to(device=nibbles.device, dtype=torch.float32)
    lo32, r = _log_ranges(scales[..., :1], scales[..., 1:2])
    # Each vector's 8 levels, then its 16 signed values looked up by nibble: 16 exps a vector, not k (the
    # same float32 products, so the same values; ~1.6x faster on the CPU reader's batches).
    levels = lo32 * torch.exp(torch.arange(LOG_LEVELS, dtype=torch.float32, device=lo32.device) * r)
    return torch.cat((levels, -levels), dim=-1).gather(-1, nibbles)


def quantize(values, name: str, group: int | None = None):
    """(..., k) float values -> (codes, scales): int8 (..., k) or packed uint8 (..., ceil(k/2)); float16 (..., G)."""
    import torch

    if name == "int4-log":
        if group is not None:
            raise ValueError("int4-log keeps one (lo, hi) pair per vector: it takes no group")
        return quantize_log4(values)
    if name not in QMAX:
        raise ValueError(f"quantize takes one of {list(QUANTIZED_FORMATS)}, got {name!r}")
    k = values.shape[-1]
    x = values.to(torch.float16).to(torch.float32)
    grouped, _ = _grouped(x, group)
    scale = (grouped.abs().amax(-1) / QMAX[name]).to(torch.float16)            # (..., G)
    s = scale.to(torch.float32).unsqueeze(-1)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.where(s > 0, torch.round(grouped / safe), torch.zeros_like(grouped))  # round half to even
    q = q.clamp(-QMAX[name], QMAX[name]).reshape(*x.shape[:-1], -1)[..., :k].to(torch.int8)
    return (pack_int4(q) if name == "int4" else q), scale


def dequantize(codes, scales, value_format: ValueFormat):
    """Stored codes and scales -> (..., k) float32 values, computed on the codes' device (the training device).

    A float16 store's values pass through as float32 (`scales` is None there).
    """
    import torch

    if not value_format.quantized:
        return codes.to(torch.float32)
    if value_format.log:
        return dequantize_log4(codes, scales, value_format.width)
    k = value_format.width
    q = unpack_int4(codes, k) if value_format.name == "int4" else codes
    grouped, _ = _grouped(q.to(torch.float32), value_format.group)
    out = grouped * scales.to(device=grouped.device, dtype=torch.float32).unsqueeze(-1)
    return out.reshape(*q.shape[:-1], -1)[..., :k]


def quantize_numpy(values: np.ndarray, name: str, group: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    import torch

    codes, scales = quantize(torch.from_numpy(np.ascontiguousarray(values)), name, group)
    return codes.numpy(), scales.numpy()


def dequantize_numpy(codes: np.ndarray, scales: np.ndarray | None, value_format: ValueFormat) -> np.ndarray:
    import torch

    return dequantize(torch.from_numpy(np.ascontiguousarray(codes)),
                      None if scales is None else torch.from_numpy(np.ascontiguousarray(scales)),
                      value_format).numpy()


def error_bound(scales, value_format: ValueFormat, decoded=None):
    """(..., k) largest |x - x_hat| the format allows for each value: half its group's scale; for int4-log,
    relative to the decoded value x_hat (pass it): |x_hat| * (e^(r/2) - 1), r the vector's log step, or lo
    itself at the lowest level (a value under a floored lo, e.g. a zero, decodes to +-lo)."""
    import torch

    if value_format.log:
        lo, r = _log_ranges(scales[..., :1], scales[..., 1:2])
        relative = decoded.abs() * torch.expm1(r / 2)
        lowest = decoded.abs() <= lo * (1 + 1e-6)
        return torch.where(lowest, torch.maximum(relative, lo.expand_as(relative)), relative)
    s = scales.to(torch.float32)
    g = value_format.width if value_format.group is None else value_format.group
    return (s.repeat_interleave(max(g, 1), dim=-1)[..., :value_format.width]) / 2
