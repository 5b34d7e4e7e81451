"""One conformance suite, run on every store backend: directory Zarr, Zarr on a real S3 server, Zarr in
fsspec's memory filesystem, HDF5.

Each backend must create a layout, take chunks in any order, resume, refuse an incomplete store, read
chunks back exactly, keep static masks, attributes and the tokenizer, and report its bytes on disk.
A new backend joins the suite with one line in PLACES.
"""

import re

import numpy as np
import pytest

from hskstore.method.compression import Compression
from hskstore.errors import StoreError
from hskstore.stages.extract import ExtractConfig, extract
from hskstore.store import (StoreLocation, array_specs, backend_for, backends, create_store, delete_store, open_store,
                            reopen_store, root_attributes, store_state)

ROWS, CHUNK = 70, 16          # 5 chunks, the last one partial

# One line per place a store can live: the backend's name, then (location, storage_options) of an empty place.
PLACES = {
    "zarr-dir": lambda request, tmp_path: (str(tmp_path / "store.zarr"), {}),
    "zarr-s3": lambda request, tmp_path: (request.getfixturevalue("s3_bucket_url") + "/store.zarr",
                                          request.getfixturevalue("s3_server")[1]),
    # fsspec's in-process filesystem: any URL fsspec reaches works the same
    "zarr-memory": lambda request, tmp_path: (f"memory://hsk-test/{re.sub(r'[^A-Za-z0-9-]', '-', request.node.name)}"
                                              "/store.zarr", {}),
    "hdf5": lambda request, tmp_path: (str(tmp_path / "store.h5"), {}),
}


@pytest.fixture(params=[pytest.param(name, marks=[pytest.mark.integration, pytest.mark.slow]) if name == "zarr-s3" else name
                        for name in PLACES])  # moto: 3-8 s each
def location(request, tmp_path):
    """(location, storage_options) of an empty place for a store on one backend."""
    where, options = PLACES[request.param](request, tmp_path)
    assert backend_for(where) == request.param.split("-")[0]
    return where, options


def test_every_registered_backend_is_in_the_conformance_suite():
    assert {place.split("-")[0] for place in PLACES} == {backend.name for backend in backends()}


def test_a_store_location_names_its_url_alone_and_takes_its_options_once():
    place = StoreLocation("s3://bucket/x.zarr", {"key": "secret"})
    assert str(place) == "s3://bucket/x.zarr" and f"{place}" == "s3://bucket/x.zarr"   # never the credentials
    assert place.remote and place.backend.name == "zarr" and StoreLocation("runs/x.h5").backend.name == "hdf5"
    assert StoreLocation.of(place) is place and StoreLocation.of("x.zarr", {"a": 1}) == StoreLocation("x.zarr", {"a": 1})
    assert hash(place) == hash(StoreLocation("s3://bucket/x.zarr"))   # usable as a key
    with pytest.raises(TypeError, match="storage options given twice"):
        StoreLocation.of(place, {"key": "other"})


def test_a_store_location_is_accepted_wherever_a_location_and_its_options_are(location):
    where, options = location
    place = StoreLocation(where, options)
    attrs, specs = _layout()
    writer = create_store(place, attrs, specs, None, {"vocab.txt": b"[PAD]\n"})
    _write_all(writer)
    writer.mark_complete({})
    writer.close()
    assert store_state(place) == store_state(where, options)
    assert store_state(place)[0] == "complete"
    with open_store(place) as store, open_store(where, storage_options=options) as same:
        assert store.location == where and store.storage_options == options   # messages name the URL alone
        np.testing.assert_array_equal(store.split("train").read_chunk(4)["values"], same.split("train").read_chunk(4)["values"])
    delete_store(place)
    assert store_state(where, options)[0] == "absent"


def _layout(width_strategy="mag", value_format="float16", width=4):
    compression = Compression(depth=2, length=3, width=width, student_layers=2, width_strategy=width_strategy,
                              value_format=value_format)
    resolved = compression.resolve(4, 32, 12)
    meta = {"created_by": "tests", "compression": compression.to_dict(), "resolved": resolved.to_dict(),
            "amount_hsk": resolved.amount(),
            "teacher": {"path": "/t", "num_layers": 4, "hidden_size": 32, "num_heads": 4, "vocab_size": 100,
                        "num_labels": 3, "model_type": "bert"},
            "teacher_fingerprint": {"algorithm": "sha256", "weights": {}, "tokenizer": {}},
            "task": {"name": "synthetic", "metric": "accuracy"}, "task_ref": {"task": "synthetic", "options": {}},
            "label_names": ["a", "b", "c"], "num_labels": 3, "max_length": 12, "limit": None, "data_seed": 0,
            "numerics": "cpu-float32", "batch_size": 8, "tokenizer": {"class": "none"}}
    specs = array_specs(resolved, compression, vocab_size=100, num_labels=3)
    attrs = root_attributes(meta, {"train": ROWS, "validation": 9}, CHUNK, specs)
    return attrs, specs


def _chunk(spec_names, split_rows, index, seed=0):
    rng = np.random.default_rng([seed, index])
    rows = min(CHUNK, split_rows - index * CHUNK)
    return {
        "input_ids": rng.integers(0, 100, (rows, 12)).astype(np.uint16),
        "token_type_ids": np.zeros((rows, 12), np.uint8),
        "lengths": rng.integers(2, 12, rows).astype(np.int16),
        "labels": rng.integers(0, 3, rows).astype(np.int64),
        "logits": rng.normal(size=(rows, 3)).astype(np.float32),
        "positions": rng.integers(-1, 12, (rows, 2, 3)).astype(np.int16),
        "values": rng.normal(size=(rows, 2, 3, 4)).astype(np.float16),
        "masks": rng.integers(0, 256, (rows, 2, 3, 4)).astype(np.uint8),
    }


SEEDS = {"train": 0, "validation": 1}


def _write_all(writer, order=None):
    """Write every chunk not yet recorded (a resume writes only the rest)."""
    for split, rows in writer.attrs["splits"].items():
        chunks = [k for k in range(-(-rows // CHUNK)) if k not in writer.chunks_done(split)]
        for k in (order(chunks) if order else chunks):
            arrays = _chunk(None, rows, k, seed=SEEDS[split])
            writer.write_chunk(split, k, {n: a for n, a in arrays.items() if n in writer.attrs["codecs"]})


def test_chunks_written_out_of_order_read_back_exactly(location):
    where, options = location
    attrs, specs = _layout()
    writer = create_store(where, attrs, specs, None, {"vocab.txt": b"[PAD]\n[UNK]\n"}, options)
    _write_all(writer, order=lambda chunks: chunks[::-1])
    writer.mark_complete({"note": "done"})
    writer.close()
    with open_store(where, storage_options=options) as store:
        assert store.complete and store.uuid == attrs["uuid"]
        reader = store.split("train")
        assert (reader.num_examples, reader.num_chunks) == (ROWS, 5)
        for k in range(5):
            expected = _chunk(None, ROWS, k, seed=0)
            got = reader.read_chunk(k)
            assert set(got) == set(expected)
            for name in expected:
                np.testing.assert_array_equal(got[name], expected[name])
        assert store.tokenizer_files() == {"vocab.txt": b"[PAD]\n[UNK]\n"}
        assert store.attrs["summary"] == {"note": "done"}


def test_local_zarr_reads_whole_chunks_from_their_files_exactly_as_zarr_does(tmp_path):
    # The reader's whole-chunk reads skip zarr's machinery on a local store (CRC-32C, then the codec, by hand);
    # the arrays must be zarr's own, byte for byte, the partial last chunk included, and writable.
    where = str(tmp_path / "store.zarr")
    attrs, specs = _layout()
    writer = create_store(where, attrs, specs, None, {"vocab.txt": b"[PAD]\n"}, {})
    _write_all(writer)
    writer.mark_complete({})
    writer.close()
    with open_store(where) as store:
        for split in ("train", "validation"):
            reader = store.split(split)
            for name in reader.array_names:
                assert store._decoder(split, name) is not None, name
                for k in range(reader.num_chunks):
                    start, stop = reader.chunk_bounds(k)
                    ours, zarrs = store._read(split, name, start, stop), store._array(split, name)[start:stop]
                    assert (ours.dtype, ours.shape, ours.tobytes()) == (zarrs.dtype, zarrs.shape, zarrs.tobytes())
                    assert ours.flags.writeable
        partial = store.split("train").read_rows(3, 21, ["values"])["values"]   # not a whole chunk: zarr reads it
        np.testing.assert_array_equal(partial, store._array("train", "values")[3:21])


def test_an_incomplete_store_is_refused_and_resumes_where_it_stopped(location):
    where, options = location
    attrs, specs = _layout()
    writer = create_store(where, attrs, specs, None, {}, options)
    writer.write_chunk("train", 3, _chunk(None, ROWS, 3))
    writer.write_chunk("train", 0, _chunk(None, ROWS, 0))
    with pytest.raises(StoreError, match="cannot be marked complete"):
        writer.mark_complete({})
    writer.close()
    assert store_state(where, options)[0] == "partial"
    with pytest.raises(StoreError, match="incomplete"):
        open_store(where, storage_options=options)
    with open_store(where, allow_incomplete=True, storage_options=options) as partial:
        assert partial.chunks_done("train") == {0, 3} and partial.chunks_done("validation") == set()
    resumed = reopen_store(where, options)
    assert resumed.chunks_done("train") == {0, 3}
    _write_all(resumed)
    resumed.mark_complete({})
    resumed.close()
    with open_store(where, storage_options=options) as store:
        np.testing.assert_array_equal(store.split("train").read_chunk(3)["values"], _chunk(None, ROWS, 3)["values"])


def test_static_masks_attributes_and_bytes_on_disk(location):
    where, options = location
    attrs, specs = _layout(width_strategy="uniform")
    assert "masks" not in {s.name for s in specs}
    mask = np.zeros(32, bool)
    mask[[0, 8, 16, 24]] = True
    writer = create_store(where, attrs, specs, np.packbits(mask, bitorder="little"), {}, options)
    _write_all(writer)
    writer.mark_complete({})
    writer.close()
    with open_store(where, storage_options=options) as store:
        np.testing.assert_array_equal(store.static_mask(), mask)
        assert {k: v for k, v in store.attrs.items() if k not in ("complete", "summary", "layout_complete")} == \
            {k: v for k, v in attrs.items() if k not in ("complete", "summary", "layout_complete")}
        sizes = store.nbytes()
        arrays = [v for k, v in sizes.items() if "/" in k]
        assert all(v > 0 for v in arrays) and sizes["total"] >= sum(arrays) + sizes["static_mask"]
        assert set(store.split("train").array_names) == {s.name for s in specs}


def test_a_half_created_store_is_recognised_and_deleted(location):
    where, options = location
    attrs, specs = _layout()
    writer = create_store(where, attrs, specs, None, {}, options)
    writer._update_attrs({"layout_complete": False})  # as if killed while its arrays were being created
    writer.close()
    assert store_state(where, options)[0] == "half"
    with pytest.raises(StoreError, match="interrupted while its arrays were being created"):
        open_store(where, storage_options=options)
    delete_store(where, options)
    assert store_state(where, options)[0] == "absent"


@pytest.mark.parametrize("damage, message", [
    ({"complete": "false"}, "complete should be bool"),
    ({"chunk_rows": "16"}, "chunk_rows should be int"),
    ({"splits": {"train": -1}}, "splits.train should be a row count"),
    ({"format_version": 7}, "unsupported hskstore format version 7"),
])
def test_damaged_root_attributes_are_one_line_errors(location, damage, message):
    where, options = location
    attrs, specs = _layout()
    writer = create_store(where, attrs, specs, None, {}, options)
    writer._update_attrs({"complete": True} | damage)  # no chunks needed: attributes are checked first
    writer.close()
    with pytest.raises(StoreError, match=message):
        open_store(where, storage_options=options)


def test_extraction_writes_resumes_and_trains_on_every_backend(location, tiny_teacher, tiny_store, tiny_student,
                                                              tmp_path, monkeypatch):
    """The real pipeline on each backend: a crash mid-extraction, a rerun, then identical arrays and training."""
    from hskstore.store import StoreWriter
    from hskstore.stages.train import TrainConfig, Trainer

    where, options = location
    config = ExtractConfig(teacher=tiny_teacher, task="tweets", output=where, limit=120, chunk_rows=32,
                           compression=Compression(depth=2, length=5, width=0.25, student_layers=2),
                           storage_options=options)
    original, calls = StoreWriter.write_chunk, []

    def crash_on_third(self, *args):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(StoreWriter, "write_chunk", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        extract(config, progress=False)
    monkeypatch.setattr(StoreWriter, "write_chunk", original)
    assert store_state(where, options)[0] == "partial"
    extract(config, progress=False)
    with open_store(where, storage_options=options) as store, open_store(tiny_store) as reference:
        for split in ("train", "validation"):
            got, want = store.split(split), reference.split(split)
            assert got.array_names == want.array_names
            a, b = got.read_rows(0, len(got)), want.read_rows(0, len(want))
            for name in want.array_names:
                np.testing.assert_array_equal(a[name], b[name])
    losses = []
    for source, source_options in ((where, options), (tiny_store, {})):
        trainer = Trainer(TrainConfig(store=source, student=tiny_student, output=str(tmp_path / "run"), device="cpu",
                                      storage_options=source_options), progress=False)
        stream = trainer.stream("train", 16, "hsk", shuffle=False)
        losses.append([trainer.loss_on("hsk", batch) for batch in stream])
    assert losses[0] == losses[1]


@pytest.mark.parametrize("value_format, width", [("int8", 4), ("int4", 5), ("int4-log", 5)])   # odd k: a padded byte
def test_quantized_stores_keep_their_codes_and_scales_and_are_version_3(location, value_format, width):
    from hskstore.method.quantize import quantize_numpy

    where, options = location
    attrs, specs = _layout(value_format=value_format, width=width)
    assert attrs["format_version"] == 3 and attrs["compression"]["value_format"] == value_format
    shapes = {s.name: (s.row_shape, s.dtype) for s in specs}
    packed = value_format != "int8"                 # 4-bit codes, two a byte
    assert shapes["values"] == ((2, 3, -(-width // 2) if packed else width), "uint8" if packed else "int8")
    assert shapes["value_scales"] == ((2, 3, 2 if value_format == "int4-log" else 1), "float16")
    writer = create_store(where, attrs, specs, None, {}, options)
    written = {}
    for split, rows in attrs["splits"].items():
        for k in range(-(-rows // CHUNK)):
            arrays = _chunk(None, rows, k, seed=SEEDS[split])
            raw = np.random.default_rng([k, 9]).normal(size=(len(arrays["labels"]), 2, 3, width))
            arrays["values"], arrays["value_scales"] = quantize_numpy(raw.astype(np.float16), value_format)
            written[split, k] = arrays
            writer.write_chunk(split, k, {n: a for n, a in arrays.items() if n in attrs["codecs"]})
    writer.mark_complete({})
    writer.close()
    with open_store(where, storage_options=options) as store:
        assert store.format_version == 3 and store.compression.value_format == value_format
        for (split, k), arrays in written.items():
            got = store.split(split).read_chunk(k)
            for name in ("values", "value_scales", "masks"):
                np.testing.assert_array_equal(got[name], arrays[name])
                assert got[name].dtype == arrays[name].dtype
        assert store.nbytes()["train/value_scales"] > 0
