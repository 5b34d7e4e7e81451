"""Device and precision choices, with the hardware as an input: what a CUDA box, a Mac or a laptop gets."""

import ast
import contextlib
from pathlib import Path

import pytest
import torch

from hskstore.runtime.device import (FP32, autocast, inference_precision, non_blocking_for, pick_device,
                                     training_precision)
from hskstore.runtime.distributed import World, rank_device, world_from_env
from hskstore.errors import ConfigError


@pytest.mark.parametrize("cuda_count, mps, expected", [(2, True, "cuda:0"), (0, True, "mps"), (0, False, "cpu")])
def test_auto_picks_cuda_then_mps_then_cpu(cuda_count, mps, expected):
    assert pick_device("auto", cuda_count=cuda_count, mps_available=mps) == torch.device(expected)


def test_named_devices_are_checked_against_the_machine():
    assert pick_device("cuda:1", cuda_count=2, mps_available=False) == torch.device("cuda", 1)
    assert pick_device("cuda", cuda_count=1, mps_available=False) == torch.device("cuda", 0)
    assert pick_device("mps", cuda_count=0, mps_available=True) == torch.device("mps")
    with pytest.raises(ConfigError, match=r"cuda:2.*has 2 CUDA device\(s\), cuda:0..cuda:1"):
        pick_device("cuda:2", cuda_count=2, mps_available=False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        pick_device("cuda", cuda_count=0, mps_available=True)
    with pytest.raises(ConfigError, match="MPS backend is not available"):
        pick_device("mps", cuda_count=1, mps_available=False)
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        pick_device("gpu0", cuda_count=1, mps_available=False)


@pytest.mark.parametrize("capability, expected, scaler", [
    ((9, 0), torch.bfloat16, False),   # H100
    ((8, 0), torch.bfloat16, False),   # A100: native bf16 from here on
    ((8, 6), torch.bfloat16, False),   # RTX 30xx / A10
    ((7, 5), torch.float16, True),     # T4: bf16 only emulated, slower than fp32
    ((7, 0), torch.float16, True),     # V100: fp16 from here on (tensor cores)
    ((6, 1), None, False),             # P40, P4, GTX 10xx: fp16 at 1/64 of the fp32 rate
    ((6, 0), None, False),
])
def test_training_uses_bf16_from_capability_8_fp16_with_a_grad_scaler_from_7_and_fp32_below(
        capability, expected, scaler):
    precision = training_precision("cuda", capability, amp=True)
    assert precision.autocast_dtype == expected
    assert precision.grad_scaler is scaler
    assert precision.name == {torch.bfloat16: "bf16-autocast", torch.float16: "fp16-autocast", None: "fp32"}[expected]


@pytest.mark.parametrize("capability, expected", [((8, 0), "fp16-autocast"), ((7, 0), "fp16-autocast"),
                                                  ((6, 1), "fp32"), (None, "fp16-autocast")])
def test_the_teacher_runs_in_fp16_from_capability_7_and_fp32_below(capability, expected):
    assert inference_precision("cuda", capability).name == expected


@pytest.mark.parametrize("device_type", ["cpu", "mps"])
def test_cpu_and_mps_train_in_fp32_and_amp_off_means_fp32_everywhere(device_type):
    assert training_precision(device_type, None).name == "fp32"
    assert training_precision("cuda", (9, 0), amp=False).name == "fp32"
    assert not training_precision(device_type, None).scaler(torch.device("cpu")).is_enabled()


def test_the_teacher_runs_in_fp16_on_cuda_and_fp32_elsewhere():
    assert inference_precision("cuda").autocast_dtype == torch.float16
    assert inference_precision("cuda").grad_scaler is False  # inference: nothing to scale
    assert inference_precision("cpu").name == inference_precision("mps").name == "fp32"


def test_each_torchrun_rank_takes_the_gpu_of_its_local_rank():
    world = World(rank=5, world_size=8, local_rank=1)
    assert rank_device("auto", world, cuda_count=4, mps_available=False) == torch.device("cuda", 1)
    assert rank_device("cuda", world, cuda_count=4, mps_available=False) == torch.device("cuda", 1)
    assert rank_device("auto", world, cuda_count=0, mps_available=True) == torch.device("cpu")
    with pytest.raises(ConfigError, match="cuda:LOCAL_RANK"):
        rank_device("cuda:0", world, cuda_count=4, mps_available=False)
    with pytest.raises(ConfigError, match="--nproc-per-node <= 1"):
        rank_device("cuda", world, cuda_count=1, mps_available=False)
    with pytest.raises(ConfigError, match="mps is not supported"):
        rank_device("mps", world, cuda_count=0, mps_available=True)
    # One process: the plain choice, cuda:N included.
    assert rank_device("cuda:3", World(), cuda_count=4, mps_available=False) == torch.device("cuda", 3)


def test_the_world_comes_from_torchruns_environment():
    assert world_from_env({}) == World(0, 1, 0)
    assert world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == World(3, 4, 1)
    with pytest.raises(ConfigError, match="inconsistent"):
        world_from_env({"RANK": "4", "WORLD_SIZE": "4"})


class _Torch24Autocast:
    """torch.autocast as torch 2.4 has it on a Mac: `mps` raises even with enabled=False."""

    def __init__(self, device_type, *args, **kwargs):
        if device_type == "mps":
            raise RuntimeError("User specified an unsupported autocast device_type 'mps'")


def test_fp32_never_builds_an_autocast_so_mps_runs_on_torch_2_4(monkeypatch):
    monkeypatch.setattr(torch, "autocast", _Torch24Autocast)
    mps = torch.device("mps")
    for context in (FP32.autocast(mps), training_precision("mps", None).autocast(mps),
                    inference_precision("mps").autocast(mps), autocast(mps, None), autocast("cpu", None)):
        assert isinstance(context, contextlib.nullcontext)
        with context:
            pass


def test_a_device_without_autocast_on_this_torch_gets_none(monkeypatch):
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: device_type != "mps")
    assert isinstance(autocast("mps", torch.float16), contextlib.nullcontext)
    real = autocast("cpu", torch.bfloat16)
    assert isinstance(real, torch.autocast)
    with real:
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


@pytest.mark.parametrize("device, pinned, expected", [
    ("cuda", True, True),       # page-locked host memory: the copy may run while the host goes on
    ("cuda:1", True, True),
    ("cuda", False, False),     # pageable: CUDA would stage it synchronously anyway
    ("mps", True, False),       # mps reads a temporary source after it may have been freed
    ("mps", False, False),
    ("cpu", True, False),
])
def test_copies_are_asynchronous_only_between_cuda_and_pinned_memory(device, pinned, expected):
    assert non_blocking_for(torch.device(device), pinned) is expected
    assert non_blocking_for(device, pinned) is expected


PACKAGE = Path(__file__).resolve().parents[2] / "hskstore"


def _calls(predicate):
    """(file, line) of every call in the package that `predicate(call)` flags."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and predicate(node):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return found


def test_no_copy_in_the_package_is_asynchronous_unconditionally():
    def literal_true(call):
        return any(k.arg == "non_blocking" and isinstance(k.value, ast.Constant) and k.value.value is True
                   for k in call.keywords)

    assert _calls(literal_true) == []


def test_only_runtime_device_constructs_an_autocast():
    def builds_autocast(call):
        name = ast.unparse(call.func)
        return name in ("torch.autocast", "torch.amp.autocast", "torch.cuda.amp.autocast", "torch.cpu.amp.autocast")

    assert [where for where in _calls(builds_autocast) if not where.startswith("hskstore/runtime/device.py")] == []


@pytest.mark.parametrize("capability, expected", [((6, 1), "fp32"), ((6, 0), "fp32"), ((7, 0), "fp16-autocast"),
                                                  ((8, 6), "fp16-autocast")])
def test_a_gpus_own_capability_picks_the_teachers_precision(monkeypatch, capability, expected):
    from hskstore.runtime.device import inference_precision_for

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert inference_precision_for(torch.device("cuda", 0)).name == expected
    assert inference_precision_for(torch.device("cpu")).name == "fp32"


def test_extraction_and_the_online_teacher_ask_the_devices_capability_not_only_its_type():
    """`inference_precision(device.type)` would run a P40 (6.1) in fp16 at 1/64 speed: callers use `_for(device)`."""
    def by_type_alone(call):
        return ast.unparse(call.func).endswith("inference_precision") and len(call.args) == 1 and not call.keywords

    assert _calls(by_type_alone) == []
