"""Quantized values, pinned to the formula of docs/store-format.md: symmetric absmax, round to nearest even,
one float16 scale per vector (or per group), int4 two to a byte."""

import numpy as np
import pytest
import torch

from hskstore.method.quantize import (QMAX, ValueFormat, dequantize, error_bound, pack_int4, quantize,
                                      quantize_numpy, unpack_int4)


def _values(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator) * torch.rand(*shape[:-1], 1, generator=generator) * 8
    x[0, 0] = 0          # an empty slot: zeros, scale 0
    return x


@pytest.mark.parametrize("name", ["int8", "int4"])
@pytest.mark.parametrize("k, group", [(38, None), (7, None), (38, 8), (5, 2)])
def test_dequantized_values_lie_within_half_a_scale_of_the_float16_values(name, k, group):
    x = _values((4, 3, k))
    codes, scales = quantize(x, name, group)
    fmt = ValueFormat(name, k, group)
    assert codes.shape[-1] == fmt.stored_width and scales.shape[-1] == fmt.groups and scales.dtype == torch.float16
    assert codes.dtype == (torch.uint8 if name == "int4" else torch.int8)
    back = dequantize(codes, scales, fmt)
    assert back.shape == x.shape and back.dtype == torch.float32
    error = (back - x.half().float()).abs()
    assert torch.all(error <= error_bound(scales, fmt) * (1 + 1e-6) + 1e-7)
    assert torch.all(back[0, 0] == 0) and torch.all(scales[0, 0] == 0)
    # the scale is the float16 of the group's absmax over Q, and the absmax value comes back within rounding
    top = x.half().float().abs().amax(-1)
    if group is None:
        assert torch.equal(scales[..., 0], (top / QMAX[name]).half())


def test_the_formula_on_a_hand_example():
    x = torch.tensor([[0.0, 1.0, -0.5, 2.5, -7.0]])
    codes, scales = quantize(x, "int4")
    assert scales.tolist() == [[1.0]]                               # float16(7 / 7)
    assert unpack_int4(codes, 5).tolist() == [[0, 1, 0, 2, -7]]     # -0.5 -> -0 and 2.5 -> 2: ties to even
    assert codes.tolist() == [[0x10, 0x20, 0x09]]                   # value 2j low nibble; -7 = 0x9; odd k pads 0
    codes8, scales8 = quantize(x, "int8")
    assert scales8.item() == np.float16(7 / 127) and codes8[0, -1].item() == -127


@pytest.mark.parametrize("k", [1, 2, 7, 38])
def test_int4_packs_two_codes_a_byte_and_unpacks_them_exactly_for_odd_k(k):
    codes = torch.randint(-8, 8, (3, k), generator=torch.Generator().manual_seed(k), dtype=torch.int8)
    packed = pack_int4(codes)
    assert packed.shape == (3, -(-k // 2)) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed, k), codes)
    if k % 2:
        assert torch.all(packed[:, -1] >> 4 == 0)                    # the padding nibble is 0


def test_quantizing_float32_values_gives_the_bytes_of_quantizing_their_float16():
    # extraction quantizes what a float16 store would hold: requantizing that store gives the same bytes
    x = _values((5, 2, 9), seed=3)
    for name in ("int8", "int4"):
        a, b = quantize(x, name), quantize(x.half(), name)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        codes, scales = quantize_numpy(x.half().numpy(), name)
        assert np.array_equal(codes, a[0].numpy()) and np.array_equal(scales, a[1].numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dequantization_runs_on_the_device_its_inputs_are_on():
    x = _values((4, 3, 7))
    codes, scales = quantize(x, "int4")
    fmt = ValueFormat("int4", 7)
    on_gpu = dequantize(codes.cuda(), scales.cuda(), fmt)
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), dequantize(codes, scales, fmt))
