"""A store's mask codec is chosen at extraction (`extract --mask-codec`) or when a store is derived from
another (`slice --mask-codec`, `convert --mask-codec`); left out, a derived store keeps its source's.

Re-encoding the masks changes only their bytes on disk: the decoded masks, every other array and the
batches training reads are the source's. A store whose masks were re-encoded to zstd19 is the store that
`extract --mask-codec zstd19` writes: the same root attribute `codecs`, the same codec chain, the same
chunk bytes.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hskstore.cli import cli
from hskstore.errors import StoreError
from hskstore.store import open_store
from hskstore.store.convert import convert_store
from hskstore.store.slicing import slice_store
from hskstore.store.verify import verify_store


@pytest.fixture(scope="module")
def zstd19_store(tiny_teacher, tmp_path_factory) -> str:
    """tiny_store's run (same teacher, data, triple and chunks) extracted with --mask-codec zstd19."""
    from hskstore.method.compression import Compression
    from hskstore.stages.extract import ExtractConfig, extract

    path = tmp_path_factory.mktemp("zstd19") / "tweets.zarr"
    extract(ExtractConfig(teacher=tiny_teacher, task="tweets", output=str(path), limit=120, chunk_rows=32,
                          compression=Compression(depth=2, length=5, width=0.25, student_layers=2),
                          mask_codec="zstd19"), progress=False)
    return str(path)


def _arrays(path: str) -> dict[str, dict[str, np.ndarray]]:
    with open_store(path) as store:
        return {split: store.split(split).read_rows(0, store.split(split).num_examples) for split in store.splits}


def _assert_same_arrays(a: str, b: str) -> None:
    x, y = _arrays(a), _arrays(b)
    assert x.keys() == y.keys()
    for split in x:
        assert x[split].keys() == y[split].keys()
        for name in x[split]:
            np.testing.assert_array_equal(x[split][name], y[split][name], err_msg=f"{split}/{name}")


def _recorded(path: str) -> str:
    with open_store(path) as store:
        return store.attrs["codecs"]["masks"]


def _mask_filters(path: str) -> list:
    """The masks' codec as the backend stores it: the Zarr codec chain, or the HDF5 filters."""
    if path.endswith(".h5"):
        import h5py

        with h5py.File(path, "r") as f:
            masks = f["train"]["masks"]
            return [masks.compression, masks.compression_opts, masks.fletcher32]
    return json.loads((Path(path) / "train" / "masks" / "zarr.json").read_text())["codecs"]


def _mask_bytes(path: str) -> int:
    with open_store(path) as store:
        sizes = store.nbytes()
        return sum(sizes[f"{split}/masks"] for split in store.splits)


ZSTD19_ZARR = [{"name": "bytes"}, {"name": "zstd", "configuration": {"level": 19, "checksum": False}},
               {"name": "crc32c"}]


@pytest.mark.parametrize("derive", ["slice", "convert"])
@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_derived_zstd19_store_has_the_sources_masks_recorded_and_encoded_as_zstd19(tiny_store, tmp_path, derive,
                                                                                    suffix):
    path = str(tmp_path / f"masks19{suffix}")
    (slice_store if derive == "slice" else convert_store)(tiny_store, path, mask_codec="zstd19")
    _assert_same_arrays(path, tiny_store)
    assert _recorded(path) == "zstd19"
    assert _mask_filters(path) == (["gzip", 9, True] if suffix == ".h5" else ZSTD19_ZARR)
    assert verify_store(path)["complete"]


def test_zstd19_masks_take_fewer_bytes_on_disk_than_the_zstd1_masks_they_came_from(tiny_store, tmp_path):
    path = str(tmp_path / "masks19.zarr")
    convert_store(tiny_store, path, mask_codec="zstd19")
    assert _recorded(tiny_store) == "zstd1"
    assert _mask_bytes(path) < _mask_bytes(tiny_store)


def test_info_names_the_mask_codec_beside_the_masks_bytes(tiny_store, tmp_path):
    from hskstore.store.report import format_info, store_info

    path = str(tmp_path / "masks19.zarr")
    convert_store(tiny_store, path, mask_codec="zstd19")
    for store, codec in ((tiny_store, "zstd1"), (path, "zstd19")):
        info = store_info(store)
        assert info["mask_codec"] == codec
        masks_line = next(line for line in format_info(info).splitlines() if line.strip().startswith("masks"))
        assert masks_line.endswith(f"B  ({codec})")


def test_re_encoding_zstd1_masks_to_zstd19_writes_what_extract_mask_codec_zstd19_writes(tiny_store, zstd19_store,
                                                                                          tmp_path):
    converted, sliced = str(tmp_path / "converted.zarr"), str(tmp_path / "sliced.zarr")
    convert_store(tiny_store, converted, mask_codec="zstd19")
    slice_store(tiny_store, sliced, mask_codec="zstd19")
    extracted = json.loads((Path(zstd19_store) / "zarr.json").read_text())["attributes"]
    for path in (converted, sliced):
        _assert_same_arrays(path, zstd19_store)
        attrs = json.loads((Path(path) / "zarr.json").read_text())["attributes"]
        assert attrs["codecs"] == extracted["codecs"]
        for split in ("train", "validation"):
            chunks = sorted(p.relative_to(Path(zstd19_store)) for p in (Path(zstd19_store) / split / "masks").rglob("*")
                            if p.is_file())
            assert chunks, split
            for chunk in chunks:   # the same chunk objects, byte for byte (zarr.json included)
                assert (Path(path) / chunk).read_bytes() == (Path(zstd19_store) / chunk).read_bytes(), chunk


@pytest.mark.parametrize("derive", ["slice", "convert"])
def test_without_the_option_a_derived_store_keeps_its_sources_mask_codec(tiny_store, zstd19_store, tmp_path, derive):
    write = slice_store if derive == "slice" else convert_store
    from_zstd1, from_zstd19 = str(tmp_path / "a.zarr"), str(tmp_path / "b.h5")
    write(tiny_store, from_zstd1)
    write(zstd19_store, from_zstd19)
    assert _recorded(from_zstd1) == "zstd1" and _mask_filters(from_zstd1) == _mask_filters(tiny_store)
    assert _recorded(from_zstd19) == "zstd19" and _mask_filters(from_zstd19) == ["gzip", 9, True]
    again = str(tmp_path / "c.zarr")   # and from an HDF5 source back to Zarr
    write(from_zstd19, again)
    assert _recorded(again) == "zstd19" and _mask_filters(again) == ZSTD19_ZARR


def test_extract_mask_codec_zstd19_then_slice_and_requantize_keeps_zstd19(zstd19_store, tmp_path):
    sliced, requantized = str(tmp_path / "small.zarr"), str(tmp_path / "int4.zarr")
    slice_store(zstd19_store, sliced, depth=1, length=3, width=4)
    convert_store(zstd19_store, requantized, value_format="int4")
    for path in (sliced, requantized):
        assert _recorded(path) == "zstd19" and _mask_filters(path) == ZSTD19_ZARR
        assert verify_store(path)["complete"]
    back = str(tmp_path / "back.zarr")
    slice_store(zstd19_store, back, depth=1, length=3, width=4, mask_codec="zstd1")
    _assert_same_arrays(back, sliced)
    assert _recorded(back) == "zstd1" and _mask_bytes(back) > _mask_bytes(sliced)


def test_requantizing_to_int4_with_zstd19_masks_changes_only_the_masks_bytes(tiny_store, tmp_path):
    plain, smaller = str(tmp_path / "int4.zarr"), str(tmp_path / "int4-masks19.zarr")
    convert_store(tiny_store, plain, value_format="int4")
    convert_store(tiny_store, smaller, value_format="int4", mask_codec="zstd19")
    _assert_same_arrays(smaller, plain)
    assert (_recorded(plain), _recorded(smaller)) == ("zstd1", "zstd19")
    with open_store(plain) as a, open_store(smaller) as b:
        x, y = a.nbytes(), b.nbytes()
    assert {k: v for k, v in x.items() if "masks" not in k and k != "total"} == \
        {k: v for k, v in y.items() if "masks" not in k and k != "total"}
    assert y["train/masks"] < x["train/masks"]


def test_training_reads_the_same_batches_and_losses_from_re_encoded_masks(tiny_store, tiny_student, tmp_path):
    from hskstore.stages.train import TrainConfig, Trainer

    path = str(tmp_path / "masks19.h5")
    slice_store(tiny_store, path, mask_codec="zstd19")
    trainers = [Trainer(TrainConfig(store=store, student=tiny_student, output=str(tmp_path / f"run{i}"), device="cpu"),
                        progress=False) for i, store in enumerate((tiny_store, path))]
    batches = [list(t.stream("train", 16, "hsk", shuffle=True, seed=5)) for t in trainers]
    assert len(batches[0]) == len(batches[1]) > 1
    for a, b in zip(*batches):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert trainers[0].loss_on("hsk", batches[0][0]) == trainers[1].loss_on("hsk", batches[1][0])


@pytest.mark.parametrize("derive", [slice_store, convert_store])
def test_an_unknown_mask_codec_is_a_one_line_error_before_anything_is_written(tiny_store, tmp_path, derive):
    with pytest.raises(StoreError, match="unknown mask codec 'gzip': expected one of zstd1, zstd3, zstd19") as info:
        derive(tiny_store, str(tmp_path / "x.zarr"), mask_codec="gzip")
    assert "\n" not in str(info.value) and not (tmp_path / "x.zarr").exists()


def test_the_command_line_takes_mask_codec_on_slice_and_convert(tiny_store, tmp_path):
    runner = CliRunner()
    sliced, converted = str(tmp_path / "s.zarr"), str(tmp_path / "c.h5")
    result = runner.invoke(cli, ["slice", tiny_store, sliced, "--value-format", "int4", "--mask-codec", "zstd19"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["convert", tiny_store, converted, "--mask-codec", "zstd3"])
    assert result.exit_code == 0, result.output
    assert (_recorded(sliced), _recorded(converted)) == ("zstd19", "zstd3")
    assert _mask_filters(converted) == ["gzip", 4, True]
    result = runner.invoke(cli, ["slice", tiny_store, str(tmp_path / "x.zarr"), "--mask-codec", "gzip"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "'gzip' is not one of 'zstd1', 'zstd3', 'zstd19'" in result.output


@pytest.mark.integration
def test_slicing_into_a_bucket_with_zstd19_and_converting_back_keeps_the_masks_and_the_codec(
        tiny_store, s3_server, s3_bucket_url, tmp_path):
    endpoint, options = s3_server
    url, back = s3_bucket_url + "/masks19.zarr", str(tmp_path / "back.zarr")
    runner = CliRunner()
    result = runner.invoke(cli, ["slice", tiny_store, url, "--mask-codec", "zstd19",
                                 "--dst-option", f"endpoint_url={endpoint}"])
    assert result.exit_code == 0, result.output
    with open_store(url, storage_options=options) as store:
        assert store.attrs["codecs"]["masks"] == "zstd19"
    assert verify_store(url, storage_options=options)["complete"]
    result = runner.invoke(cli, ["convert", url, back, "--src-option", f"endpoint_url={endpoint}"])
    assert result.exit_code == 0, result.output
    assert _recorded(back) == "zstd19" and _mask_filters(back) == ZSTD19_ZARR
    _assert_same_arrays(back, tiny_store)
