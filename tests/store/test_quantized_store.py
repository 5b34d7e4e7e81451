"""Quantized stores (int8, int4, int4-log) end to end: extract, slice and convert from float16, verify, info, train.

One float16 store and its int8, int4 and int4-log twins are extracted from the tiny teacher at (2, 5, 7): an
odd k, so a 4-bit format's last byte holds one code. Extraction and requantizing the float16 store give the same bytes.
"""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hskstore.cli import cli
from hskstore.errors import StoreError
from hskstore.method.compression import Compression
from hskstore.method.quantize import ValueFormat, dequantize_numpy, error_bound
from hskstore.store import open_store
from hskstore.store.convert import convert_store
from hskstore.store.report import format_info, store_info
from hskstore.store.slicing import slice_store
from hskstore.store.verify import verify_store

TRIPLE = dict(depth=2, length=5, width=7, student_layers=2)


@pytest.fixture(scope="module")
def stores(tiny_teacher, tmp_path_factory):
    """{"float16", "int8", "int4", "int4-log"}: Zarr stores extracted from the tiny teacher at (2, 5, 7)."""
    from hskstore.stages.extract import ExtractConfig, extract

    root = tmp_path_factory.mktemp("quantized")
    paths = {}
    for name in ("float16", "int8", "int4", "int4-log"):
        paths[name] = str(root / f"{name}.zarr")
        extract(ExtractConfig(teacher=tiny_teacher, task="tweets", output=paths[name], limit=120, chunk_rows=32,
                              compression=Compression(**TRIPLE, value_format=name)), progress=False)
    return paths


def _arrays(path, split="train"):
    with open_store(path) as store:
        reader = store.split(split)
        return reader.read_rows(0, len(reader))


@pytest.mark.parametrize("name", ["int8", "int4", "int4-log"])
def test_extraction_and_requantizing_the_float16_store_write_the_same_arrays(stores, name, tmp_path):
    converted, sliced = str(tmp_path / "converted.h5"), str(tmp_path / "sliced.zarr")
    convert_store(stores["float16"], converted, value_format=name)
    slice_store(stores["float16"], sliced, value_format=name)
    for path in (converted, sliced):
        with open_store(path) as store:
            assert store.format_version == 3 and store.compression == Compression(**TRIPLE, value_format=name)
            assert store.attrs["derived_from"]["uuid"] == open_store(stores["float16"]).uuid
        for split in ("train", "validation"):
            want, got = _arrays(stores[name], split), _arrays(path, split)
            assert set(got) == set(want)
            for array in want:
                np.testing.assert_array_equal(got[array], want[array], err_msg=array)


@pytest.mark.parametrize("name", ["int8", "int4", "int4-log"])
def test_dequantized_values_lie_within_the_formats_bound_of_the_float16_values(stores, name):
    exact, quantized = _arrays(stores["float16"]), _arrays(stores[name])
    fmt = ValueFormat(name, 7)
    assert quantized["values"].shape[-1] == (7 if name == "int8" else 4)
    assert quantized["value_scales"].shape[-1] == fmt.scales_per_vector == (2 if name == "int4-log" else 1)
    decoded = dequantize_numpy(quantized["values"], quantized["value_scales"], fmt)
    bound = error_bound(torch.from_numpy(quantized["value_scales"]), fmt, torch.from_numpy(decoded)).numpy()
    error = np.abs(decoded - exact["values"].astype(np.float32))
    assert np.all(error <= bound * (1 + 1e-6) + 1e-7)
    assert 0 < error.max() and np.all(decoded[exact["positions"] < 0] == 0)    # lossy; empty slots stay zero
    for array in ("masks", "positions", "input_ids", "logits"):                 # only the values differ
        np.testing.assert_array_equal(quantized[array], exact[array])


def test_slicing_a_quantized_store_keeps_layers_and_tokens_and_equals_slicing_then_quantizing(stores, tmp_path):
    from_int4, from_float16 = str(tmp_path / "a.zarr"), str(tmp_path / "b.h5")
    slice_store(stores["int4"], from_int4, depth=1, length=3)
    slice_store(stores["float16"], from_float16, depth=1, length=3, value_format="int4")
    a, b = _arrays(from_int4), _arrays(from_float16)
    assert a["values"].shape[1:] == (1, 3, 4) and a["value_scales"].shape[1:] == (1, 3, 1)
    for array in a:
        np.testing.assert_array_equal(a[array], b[array], err_msg=array)


def test_int8_requantizes_to_int4_within_both_bounds(stores, tmp_path):
    path = str(tmp_path / "coarser.zarr")
    convert_store(stores["int8"], path, value_format="int4")
    exact = _arrays(stores["float16"])["values"].astype(np.float32)
    int8, int4 = _arrays(stores["int8"]), _arrays(path)
    bound = sum(error_bound(torch.from_numpy(a["value_scales"]), ValueFormat(n, 7)).numpy()
                for a, n in ((int8, "int8"), (int4, "int4")))
    decoded = dequantize_numpy(int4["values"], int4["value_scales"], ValueFormat("int4", 7))
    assert np.all(np.abs(decoded - exact) <= bound * (1 + 1e-3) + 1e-6)


@pytest.mark.parametrize("source, kwargs, message", [
    ("int4", {"value_format": "int8"}, "cannot be requantized to the finer int8"),
    ("int4", {"value_format": "int4-log"}, "cannot be requantized to the finer int4-log"),
    ("int4-log", {"value_format": "int8"}, "cannot be requantized to the finer int8"),
    ("int8", {"value_format": "float16"}, "cannot be requantized to the finer float16"),
    ("int8", {"width": 5}, "cannot cut the width of a int8 store"),
])
def test_requantizing_finer_or_cutting_a_quantized_width_is_a_one_line_error(stores, tmp_path, source, kwargs,
                                                                            message):
    with pytest.raises(StoreError, match=message):
        slice_store(stores[source], str(tmp_path / "x.zarr"), **kwargs)
    assert not (tmp_path / "x.zarr").exists()


def test_int8_requantizes_to_int4_log_within_its_relative_bound(stores, tmp_path):
    path = str(tmp_path / "log.zarr")
    convert_store(stores["int8"], path, value_format="int4-log")
    int8, log = _arrays(stores["int8"]), _arrays(path)
    fmt = ValueFormat("int4-log", 7)
    source = dequantize_numpy(int8["values"], int8["value_scales"], ValueFormat("int8", 7)).astype(np.float16)
    decoded = dequantize_numpy(log["values"], log["value_scales"], fmt)
    bound = error_bound(torch.from_numpy(log["value_scales"]), fmt, torch.from_numpy(decoded)).numpy()
    assert np.all(np.abs(decoded - source.astype(np.float32)) <= bound * (1 + 1e-5) + 1e-7)


def test_a_store_of_rounded_mantissas_is_not_quantized(tiny_teacher, tmp_path):
    from hskstore.stages.extract import ExtractConfig, extract

    rounded = str(tmp_path / "bits7.zarr")
    extract(ExtractConfig(teacher=tiny_teacher, task="tweets", output=rounded, limit=40, chunk_rows=32,
                          compression=Compression(**TRIPLE, value_bits=7)), progress=False)
    with pytest.raises(StoreError, match="quantize an exact float16 store"):
        convert_store(rounded, str(tmp_path / "x.zarr"), value_format="int8")


def test_a_quantized_store_converts_between_backends_losslessly_and_verifies(stores, tmp_path):
    h5, back = str(tmp_path / "int4.h5"), str(tmp_path / "back.zarr")
    convert_store(stores["int4"], h5)
    convert_store(h5, back)
    with open_store(stores["int4"]) as a, open_store(h5) as b, open_store(back) as c:
        assert a.uuid == b.uuid == c.uuid and b.format_version == c.format_version == 3
    for path in (h5, back):
        assert verify_store(path)["complete"]
        for array, data in _arrays(stores["int4"]).items():
            np.testing.assert_array_equal(_arrays(path)[array], data, err_msg=array)
    meta = json.loads((tmp_path / "back.zarr" / "train" / "values" / "zarr.json").read_text())
    assert meta["data_type"] == "uint8" and meta["dimension_names"][-1] == "kept_byte"


def test_info_names_the_format_and_counts_the_scales(stores):
    info = store_info(stores["int4"])
    assert info["format_version"] == 3 and info["value_format"]["name"] == "int4"
    assert info["value_format"]["raw_bytes_per_vector"] == 4 + 2
    assert info["bytes"]["scales"] > 0
    assert info["bytes"]["hsk"] == sum(info["bytes"][c] for c in ("values", "scales", "masks", "positions"))
    text = format_info(info)
    assert "values int4 + float16 per vector scale" in text and "scales" in text
    log = store_info(stores["int4-log"])
    assert log["value_format"]["raw_bytes_per_vector"] == 4 + 2 * 2 and "values int4-log + float16 lo, hi per vector" \
        in format_info(log)
    plain = store_info(stores["float16"])
    assert plain["format_version"] == 2 and plain["bytes"]["scales"] == 0 and "scales" not in format_info(plain)


@pytest.mark.parametrize("name", ["int4", "int4-log"])
@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_training_dequantizes_on_the_device_and_matches_the_own_loop_api(stores, tiny_student, tmp_path, backend,
                                                                        name):
    from hskstore.stages.train import TrainConfig, Trainer
    from hskstore.store.dataset import HskDataset, collate_hsk

    path = stores[name]
    if backend == "hdf5":
        path = str(tmp_path / f"{name}.h5")
        convert_store(stores[name], path)
    trainer = Trainer(TrainConfig(store=path, student=tiny_student, output=str(tmp_path / "run"), device="cpu"),
                      progress=False)
    data = _arrays(path)
    rows = list(range(16))
    moved = trainer.targets.to_device({name: array[rows] for name, array in data.items()})
    decoded = dequantize_numpy(data["values"][rows], data["value_scales"][rows], ValueFormat(name, 7))
    np.testing.assert_array_equal(moved.values.numpy(), decoded)
    assert moved.kept.shape == moved.values.shape   # per-vector kept dimensions, one per decoded value
    reference = trainer.loss_on("hsk", {name: array[rows] for name, array in data.items()})
    dataset = HskDataset(path, "train")
    batch = collate_hsk([dataset[i] for i in rows])
    assert batch["values"].dtype == torch.uint8 and batch["kept"].shape[-1] == 7
    np.testing.assert_array_equal(dataset.values(batch).numpy(), decoded)
    trainer.student.eval()
    with torch.no_grad():
        out = trainer.student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        ours = dataset.hsk_loss(out.hidden_states, batch, trainer.projection)
    assert float(ours) == pytest.approx(reference, rel=1e-5)
    losses = [trainer.loss_on("hsk", b) for b in trainer.stream("train", 16, "hsk", shuffle=False)]
    assert all(np.isfinite(losses))


def test_the_command_line_slices_and_converts_to_a_value_format(stores, tmp_path):
    runner = CliRunner()
    sliced, converted = str(tmp_path / "s.zarr"), str(tmp_path / "c.h5")
    result = runner.invoke(cli, ["slice", stores["float16"], sliced, "--length", "3", "--value-format", "int4",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["value_format"] == "int4"
    result = runner.invoke(cli, ["convert", stores["float16"], converted, "--value-format", "int8"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["info", converted])
    assert result.exit_code == 0 and "values int8 + float16 per vector scale" in result.output
    result = runner.invoke(cli, ["convert", stores["int4"], str(tmp_path / "x.zarr"), "--value-format", "int8"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "finer int8" in result.output


@pytest.mark.parametrize("name", ["int8", "int4", "int4-log"])
def test_online_training_distils_from_the_values_a_quantized_store_holds(stores, tiny_student, tiny_teacher,
                                                                          tmp_path, name):
    from hskstore.stages.train import TrainConfig, Trainer
    from hskstore.store.stream import StoreStream

    def targets(teacher):
        config = TrainConfig(store=stores[name], student=tiny_student, output=str(tmp_path / f"run-{teacher is None}"),
                             device="cpu", teacher=teacher)
        return Trainer(config, progress=False).targets

    offline, online = targets(None), targets(tiny_teacher)
    batch = next(iter(StoreStream(stores[name], "train", 16, seed=0)))
    a, b = offline(offline.to_device(batch)), online(online.to_device(batch))
    assert torch.equal(a.kept, b.kept)
    # The teacher recomputed in the loop is encoded and decoded as the store holds it: the same codes, up to
    # a float32 rounding that moves a value across a rounding boundary (one step of that vector's scale;
    # int4-log's steps are relative: one level is a factor (max/min)^(1/7) of the vector's decoded values).
    top = a.values.abs().amax(-1, keepdim=True)
    if name == "int4-log":
        low = a.values.abs().amin(-1, keepdim=True)
        ratio = torch.where(low > 0, top / low.clamp(min=1e-30), torch.ones_like(top)) ** (1 / 7)
        step = a.values.abs() * (ratio - 1)
    else:
        step = top / {"int8": 127, "int4": 7}[name]
    assert ((a.values - b.values).abs() <= step * 1.001 + 1e-6).all()
    assert (a.values == b.values).float().mean() > 0.99
