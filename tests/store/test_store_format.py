"""The on-disk format, pinned: layout and codecs (golden), outside readers, version 1, convert, slice errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from hskstore.errors import StoreError
from hskstore.store import open_store
from hskstore.store.convert import convert_store
from hskstore.store.slicing import slice_store

GOLDEN_CODECS = {
    "values": [{"name": "bytes", "configuration": {"endian": "little"}},
               {"name": "blosc", "configuration": {"typesize": 2, "cname": "zstd", "clevel": 1, "shuffle": "shuffle",
                                                   "blocksize": 1048576}},
               {"name": "crc32c"}],
    # zstd level 1 since extract's --mask-codec (zstd19 before: the writer could not keep up with a GPU teacher).
    "masks": [{"name": "bytes"}, {"name": "zstd", "configuration": {"level": 1, "checksum": False}}, {"name": "crc32c"}],
    "positions": [{"name": "bytes", "configuration": {"endian": "little"}},
                  {"name": "zstd", "configuration": {"level": 3, "checksum": False}}, {"name": "crc32c"}],
    "input_ids": [{"name": "bytes", "configuration": {"endian": "little"}},
                  {"name": "zstd", "configuration": {"level": 3, "checksum": False}}, {"name": "crc32c"}],
    "chunks_written": [{"name": "bytes"}, {"name": "crc32c"}],   # checksummed since issue 17 (older: bytes only)
}
GOLDEN_DIMS = {"values": ["example", "layer", "slot", "kept"], "masks": ["example", "layer", "slot", "mask_byte"],
               "positions": ["example", "layer", "slot"], "input_ids": ["example", "token"], "chunks_written": ["chunk"]}
GOLDEN_ROOT_ATTRIBUTES = [
    "amount_hsk", "batch_size", "batch_tokens", "chunk_rows", "codecs", "complete", "compression", "created_at", "created_by",
    "data_seed", "format", "format_version", "label_names", "layout_complete", "limit", "max_length", "num_labels",
    "numerics", "resolved", "splits", "summary", "task", "task_ref", "teacher", "teacher_fingerprint", "tokenizer", "truncated",
    "uuid"]


def test_golden_layout_and_codec_configuration(tiny_store):
    root = Path(tiny_store)
    assert sorted(p.name for p in root.iterdir()) == ["tokenizer", "train", "validation", "zarr.json"]
    assert sorted(p.name for p in (root / "train").iterdir()) == [
        "chunks_written", "input_ids", "labels", "lengths", "logits", "masks", "positions", "token_type_ids",
        "values", "zarr.json"]
    for name, codecs in GOLDEN_CODECS.items():
        meta = json.loads((root / "train" / name / "zarr.json").read_text())
        assert meta["codecs"] == codecs, name
        assert meta["dimension_names"] == GOLDEN_DIMS[name], name
    meta = json.loads((root / "train" / "values" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [32, 2, 5, 8]
    attrs = json.loads((root / "zarr.json").read_text())["attributes"]
    assert sorted(k for k in attrs if k not in ("device", "precision")) == GOLDEN_ROOT_ATTRIBUTES
    assert (attrs["format"], attrs["format_version"], attrs["complete"]) == ("hskstore", 2, True)
    assert "value_format" not in attrs["compression"]     # float16 stores: the attributes older readers know


def test_golden_layout_of_a_quantized_store(tiny_store, tmp_path):
    """int4 codes (uint8, two a byte) and one float16 scale per vector, in format version 3."""
    path = tmp_path / "int4.zarr"
    convert_store(tiny_store, str(path), value_format="int4")
    assert sorted(p.name for p in (path / "train").iterdir()) == [
        "chunks_written", "input_ids", "labels", "lengths", "logits", "masks", "positions", "token_type_ids",
        "value_scales", "values", "zarr.json"]
    values = json.loads((path / "train" / "values" / "zarr.json").read_text())
    scales = json.loads((path / "train" / "value_scales" / "zarr.json").read_text())
    assert (values["data_type"], values["chunk_grid"]["configuration"]["chunk_shape"]) == ("uint8", [32, 2, 5, 4])
    assert values["codecs"][1]["configuration"]["typesize"] == 1
    assert values["dimension_names"] == ["example", "layer", "slot", "kept_byte"]
    assert (scales["data_type"], scales["chunk_grid"]["configuration"]["chunk_shape"]) == ("float16", [32, 2, 5, 1])
    assert scales["codecs"] == GOLDEN_CODECS["values"]
    assert scales["dimension_names"] == ["example", "layer", "slot", "scale"]
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    assert attrs["format_version"] == 3 and attrs["compression"]["value_format"] == "int4"
    assert attrs["codecs"]["value_scales"] == "blosc-zstd1-byteshuffle"


def test_a_reader_that_predates_quantized_values_refuses_their_store_in_one_line(tiny_store, tmp_path, monkeypatch):
    from hskstore.store import format as store_format

    path = tmp_path / "int8.zarr"
    convert_store(tiny_store, str(path), value_format="int8")
    monkeypatch.setattr(store_format, "READABLE_VERSIONS", (1, 2))     # what an older hskstore reads
    with pytest.raises(StoreError, match=r"unsupported hskstore format version 3 .*install the version that wrote it"):
        open_store(str(path))


def test_a_value_format_this_reader_does_not_know_is_refused_in_one_line(tiny_store, tmp_path):
    path = tmp_path / "future.zarr"
    convert_store(tiny_store, str(path), value_format="int4")
    group = zarr.open_group(str(path), mode="r+")
    group.attrs["compression"] = group.attrs["compression"] | {"value_format": "nf4"}   # a later writer's format
    zarr.consolidate_metadata(str(path))
    with pytest.raises(StoreError, match="stores its values as 'nf4', a value format this hskstore cannot decode") as info:
        open_store(str(path))
    assert "\n" not in str(info.value)


def test_provenance_is_absolute_and_names_the_teacher_weights(tiny_store, tiny_teacher):
    import hashlib

    with open_store(tiny_store) as store:
        teacher, fingerprint = store.teacher, store.attrs["teacher_fingerprint"]
    assert teacher["path"] == str(Path(tiny_teacher).resolve()) and teacher["name"] == Path(tiny_teacher).name
    weights = (Path(tiny_teacher) / "model.safetensors").read_bytes()
    assert fingerprint["weights"]["model.safetensors"] == hashlib.sha256(weights).hexdigest()


def test_xarray_and_dask_read_a_split(tiny_store):
    xr = pytest.importorskip("xarray")
    da = pytest.importorskip("dask.array")
    dataset = xr.open_zarr(tiny_store, group="train", mask_and_scale=False)
    assert dataset["values"].dims == ("example", "layer", "slot", "kept")
    with open_store(tiny_store) as store:
        expected = store.split("train").read_rows(0, 120)
    np.testing.assert_array_equal(dataset["values"].values, expected["values"])
    np.testing.assert_array_equal(dataset["positions"].values, expected["positions"])
    lazy = da.from_zarr(tiny_store, component="train/masks")
    np.testing.assert_array_equal(lazy.compute(), expected["masks"])


def test_stores_with_the_other_masks_codecs_read_the_same(tiny_store, tmp_path):
    """Masks written with zstd19 (the default before zstd1 came back, or --mask-codec zstd19): zarr reads the
    chain from metadata."""
    import shutil

    from hskstore.store._zarr import _codecs

    old = tmp_path / "old-masks.zarr"
    shutil.copytree(tiny_store, old)
    group = zarr.open_group(str(old), mode="r+", use_consolidated=False)
    for split in ("train", "validation"):
        masks = group[split]["masks"]
        data, attrs, chunks = masks[:], masks.attrs.asdict(), masks.chunks
        del group[split]["masks"]
        rewritten = group[split].create_array("masks", shape=data.shape, chunks=chunks, dtype="uint8",
                                              compressors=_codecs("zstd19", 1), dimension_names=masks.metadata.dimension_names)
        rewritten[:] = data
        rewritten.attrs.update(attrs)
        zarr.consolidate_metadata(str(old), path=split)
    attrs = group.attrs.asdict()
    group.attrs.update(codecs={**attrs["codecs"], "masks": "zstd19"})
    zarr.consolidate_metadata(str(old))
    meta = json.loads((old / "train" / "masks" / "zarr.json").read_text())
    assert meta["codecs"][1] == {"name": "zstd", "configuration": {"level": 19, "checksum": False}}
    with open_store(str(old)) as a, open_store(tiny_store) as b:
        for split in ("train", "validation"):
            rows = b.split(split).num_examples
            x, y = a.split(split).read_rows(0, rows), b.split(split).read_rows(0, rows)
            assert all(np.array_equal(x[n], y[n]) for n in y)
    converted = convert_store(str(old), str(tmp_path / "old.h5"))   # keeps the codec name the store records
    assert converted["examples"] == 150


def _as_version_1(source: str, target: Path) -> str:
    """Rewrite a copy of a v2 store the way version 1 laid it out: chunk lists in split attributes, no records."""
    import shutil

    shutil.copytree(source, target)
    group = zarr.open_group(str(target), mode="r+", use_consolidated=False)
    for split in ("train", "validation"):
        sub = group[split]
        done = np.flatnonzero(sub["chunks_written"][:]).tolist()
        sub.attrs.update({"chunks_done": done, "num_chunks": len(done)})
        shutil.rmtree(target / split / "chunks_written")
    attrs = group.attrs.asdict()
    attrs.pop("uuid")
    attrs["format_version"] = 1
    group.attrs.clear()
    group.attrs.update(attrs)
    for split in ("train", "validation"):
        zarr.consolidate_metadata(str(target), path=split)
    zarr.consolidate_metadata(str(target))
    return str(target)


def test_version_1_stores_still_open_read_only(tiny_store, tmp_path):
    from hskstore.store.report import store_info
    from hskstore.store import reopen_store

    old = _as_version_1(tiny_store, tmp_path / "v1.zarr")
    with open_store(old) as store, open_store(tiny_store) as new:
        assert store.format_version == 1 and store.uuid is None
        assert store.chunks_done("train") == {0, 1, 2, 3}
        a, b = store.split("train").read_chunk(2), new.split("train").read_chunk(2)
        assert all(np.array_equal(a[n], b[n]) for n in b)
    assert store_info(old)["format_version"] == 1
    with pytest.raises(StoreError, match="version-1 store"):
        reopen_store(old)
    converted = convert_store(old, str(tmp_path / "v2.zarr"))
    with open_store(str(tmp_path / "v2.zarr")) as upgraded:
        assert upgraded.format_version == 2 and upgraded.uuid and converted["examples"] == 150


def test_convert_round_trips_zarr_hdf5_zarr_losslessly(tiny_store, tmp_path):
    h5, back = str(tmp_path / "s.h5"), str(tmp_path / "back.zarr")
    convert_store(tiny_store, h5)
    convert_store(h5, back)
    with open_store(tiny_store) as a, open_store(h5) as b, open_store(back) as c:
        assert a.attrs == b.attrs == c.attrs
        assert a.tokenizer_files() == b.tokenizer_files() == c.tokenizer_files()
        for split in a.splits:
            x, y, z = (s.split(split).read_rows(0, a.split(split).num_examples) for s in (a, b, c))
            for name in x:
                assert x[name].dtype == y[name].dtype == z[name].dtype
                np.testing.assert_array_equal(x[name], y[name])
                np.testing.assert_array_equal(x[name], z[name])
    with pytest.raises(StoreError, match="already holds a complete store"):
        convert_store(tiny_store, h5)


def test_hdf5_store_feeds_dataloader_workers(tiny_store, tiny_student, tmp_path):
    from hskstore.stages.train import TrainConfig, train

    h5 = str(tmp_path / "s.h5")
    convert_store(tiny_store, h5)
    results = []
    for store in (tiny_store, h5):
        config = TrainConfig(store=store, student=tiny_student, output=str(tmp_path / ("run-" + Path(store).name)), device="cpu",
                             num_workers=2, hsk_epochs=1, pred_epochs=1, max_steps=3)
        results.append(train(config, progress=False))
    assert [h["loss"] for h in results[0]["history"]] == [h["loss"] for h in results[1]["history"]]


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 3}, r"N\^D 3 > stored 2"),
    ({"length": 6}, r"N\^L 6 > stored 5"),
    ({"width": 9}, r"N\^W 9 > stored 8"),
    ({"depth": 5}, "depth N\\^D must be in"),
])
def test_slices_that_cannot_be_derived_are_one_line_errors(tiny_store, tmp_path, kwargs, message):
    with pytest.raises(StoreError, match=message):
        slice_store(tiny_store, str(tmp_path / "small.zarr"), **kwargs)
    assert not (tmp_path / "small.zarr").exists()


@pytest.mark.integration
def test_a_static_mask_that_does_not_nest_is_refused(tiny_teacher, tmp_path):
    from hskstore.method.compression import Compression
    from hskstore.stages.extract import ExtractConfig, extract

    path = str(tmp_path / "uniform.zarr")
    extract(ExtractConfig(teacher=tiny_teacher, task="tweets", output=path, limit=40, chunk_rows=32,
                          compression=Compression(depth=1, length=4, width=12, student_layers=2,
                                                  width_strategy="uniform")), progress=False)
    with pytest.raises(StoreError, match="do not nest"):
        slice_store(path, str(tmp_path / "small.zarr"), width=5)
    slice_store(path, str(tmp_path / "half.zarr"), width=6)   # round(i*32/6) is a subset of round(i*32/12)


def test_slice_keeps_top_layers_a_token_prefix_and_the_top_magnitudes(tiny_store, tmp_path):
    small = str(tmp_path / "small.zarr")
    slice_store(tiny_store, small, depth=1, length=3, width=4, limit=50)
    with open_store(tiny_store) as big, open_store(small) as store:
        assert store.attrs["derived_from"]["uuid"] == big.uuid
        assert (store.split("train").num_examples, store.split("validation").num_examples) == (50, 30)
        a, b = big.split("train").read_rows(0, 50), store.split("train").read_rows(0, 50)
        np.testing.assert_array_equal(b["positions"], a["positions"][:, 1:, :3])
        np.testing.assert_array_equal(b["input_ids"], a["input_ids"])
        bits = np.unpackbits(b["masks"], axis=-1, count=32, bitorder="little").astype(bool)
        assert (bits.sum(-1)[b["positions"] >= 0] == 4).all() and not bits[b["positions"] < 0].any()
        big_bits = np.unpackbits(a["masks"][:, 1:, :3], axis=-1, count=32, bitorder="little").astype(bool)
        assert not (bits & ~big_bits).any()          # kept activations are a subset of the stored ones
        dense_big = np.zeros(big_bits.shape, np.float32)
        dense_big[big_bits] = a["values"][:, 1:, :3].astype(np.float32).reshape(-1)
        assert np.array_equal(dense_big[bits], b["values"].astype(np.float32).reshape(-1))
