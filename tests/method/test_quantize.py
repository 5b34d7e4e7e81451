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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dequantization_runs_on_the_device_its_inputs_are_on():
    x = _values((4, 3, 7))
    codes, scales = quantize(x, "int4")
    fmt = ValueFormat("int4", 7)
    on_gpu = dequantize(codes.cuda(), scales.cuda(), fmt)
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), dequantize(codes, scales, fmt))


def _top_magnitudes(shape, k, seed=0):
    """Each vector's k largest-magnitude entries of a heavy-tailed draw, ascending dimension: what `mag` keeps."""
    generator = torch.Generator().manual_seed(seed)
    full = torch.randn(*shape, 4 * k, generator=generator) * torch.rand(*shape, 1, generator=generator) * 8
    full[..., 0] *= 12                                                  # an outlier dimension, as BERT has
    index = full.abs().topk(k, dim=-1).indices.sort(dim=-1).values
    return full.gather(-1, index)


@pytest.mark.parametrize("k", [38, 7, 1])
def test_int4_log_values_lie_within_their_relative_bound_and_empty_slots_stay_zero(k):
    x = _top_magnitudes((4, 3), k)
    x[0, 0] = 0
    codes, scales = quantize(x, "int4-log")
    fmt = ValueFormat("int4-log", k)
    assert codes.shape[-1] == fmt.stored_width == -(-k // 2) and codes.dtype == torch.uint8
    assert scales.shape[-1] == fmt.scales_per_vector == 2 and scales.dtype == torch.float16
    back = dequantize(codes, scales, fmt)
    exact = x.half().float()
    assert torch.all((back - exact).abs() <= error_bound(scales, fmt, back) * (1 + 1e-5) + 1e-7)
    assert torch.all(back[0, 0] == 0) and torch.all(scales[0, 0] == 0)
    assert torch.equal(torch.sign(back[1:]), torch.sign(exact[1:]))       # the sign is exact
    # lo and hi are each vector's smallest and largest magnitude; the largest comes back within float32 rounding
    assert torch.equal(scales[1:, :, 0], exact[1:].abs().amin(-1).half()) and torch.equal(
        scales[1:, :, 1], exact[1:].abs().amax(-1).half())
    torch.testing.assert_close(back[1:].abs().amax(-1), exact[1:].abs().amax(-1), rtol=1e-6, atol=0)


def test_int4_log_on_a_hand_example():
    x = torch.tensor([[1.0, -128.0, 2.0, 10.0, -1.0]])
    codes, scales = quantize(x, "int4-log")
    assert scales.tolist() == [[1.0, 128.0]]               # lo, hi; levels 1, 2, 4, ..., 128 (r = ln 2)
    from hskstore.method.quantize import unpack_nibbles
    # 10 lies at level log2(10) = 3.32 -> 3 (8.0); the sign is the nibble's high bit
    assert unpack_nibbles(codes, 5).tolist() == [[0, 8 + 7, 1, 3, 8 + 0]]
    back = dequantize(codes, scales, ValueFormat("int4-log", 5))
    assert torch.allclose(back, torch.tensor([[1.0, -128.0, 2.0, 8.0, -1.0]]), rtol=1e-6)


def test_int4_log_floors_lo_so_a_zero_among_the_values_keeps_a_bounded_range():
    x = torch.tensor([[0.0, 3.0, -2.0]])
    codes, scales = quantize(x, "int4-log")
    assert scales[0, 0].item() == np.float16(3.0 * 2 ** -14) and scales[0, 1].item() == 3.0
    back = dequantize(codes, scales, ValueFormat("int4-log", 3))
    assert back[0, 0].abs().item() == scales[0, 0].float().item()         # the zero comes back as +-lo
    assert torch.all((back - x).abs() <= error_bound(scales, ValueFormat("int4-log", 3), back) * (1 + 1e-5))


def test_int4_log_keeps_lo_above_zero_when_the_floor_underflows_float16():
    x = torch.tensor([[0.0, 1e-4, -5e-5]])                          # hi * 2^-14 is below float16's least
    codes, scales = quantize(x, "int4-log")
    assert scales[0, 0].item() == 2.0 ** -24 and scales[0, 1].item() == np.float16(1e-4)
    back = dequantize(codes, scales, ValueFormat("int4-log", 3))
    assert torch.all(back[0, 1:] != 0) and torch.equal(torch.sign(back[0, 1:]), torch.sign(x[0, 1:]))
    bound = error_bound(scales, ValueFormat("int4-log", 3), back)
    assert torch.all((back - x.half().float()).abs() <= bound * (1 + 1e-5))


def test_int4_log_errs_less_than_int4_on_the_values_magnitude_selection_keeps():
    x = _top_magnitudes((64, 9), 38, seed=5).half().float()

    def relative_rms(name):
        codes, scales = quantize(x, name)
        back = dequantize(codes, scales, ValueFormat(name, 38))
        return float(((back - x) ** 2).sum().sqrt() / (x ** 2).sum().sqrt())

    assert relative_rms("int4-log") < 0.6 * relative_rms("int4")
    assert relative_rms("int8") < relative_rms("int4-log")


def test_int4_log_quantizes_float32_values_as_their_float16_and_refuses_groups():
    x = _top_magnitudes((5, 2), 9, seed=3)
    a, b = quantize(x, "int4-log"), quantize(x.half(), "int4-log")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="takes no group"):
        quantize(x, "int4-log", group=4)
    with pytest.raises(ValueError, match="takes no group"):
        ValueFormat("int4-log", 9, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_int4_log_decodes_on_the_device_its_codes_are_on():
    x = _top_magnitudes((4, 3), 7)
    codes, scales = quantize(x, "int4-log")
    fmt = ValueFormat("int4-log", 7)
    on_gpu = dequantize(codes.cuda(), scales.cuda(), fmt)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), dequantize(codes, scales, fmt), rtol=1e-6, atol=0)
