"""Every stored byte that feeds training or tokenisation is read through a checksum, and every metadata
parse and chunk listing is checked: damage is one line pointing to `hskstore verify`, on every backend.
"""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import assert_one_error_line, copy_store
from hskstore.cli import cli
from hskstore.method.compression import Compression
from hskstore.stages.extract import ExtractConfig, extract

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def uniform_store(tiny_teacher, tmp_path_factory) -> str:
    """A store with a static width mask (uniform, 8 of 32)."""
    path = tmp_path_factory.mktemp("uniform") / "uniform.zarr"
    compression = Compression(depth=1, length=3, width=8, student_layers=2, width_strategy="uniform")
    extract(ExtractConfig(teacher=tiny_teacher, task="tweets", output=str(path), limit=60, chunk_rows=32,
                          compression=compression), progress=False)
    return str(path)


def _flip_root_array(location: str, name: str) -> None:
    """Flip one byte in the middle of a root-level array's first chunk (static_mask, tokenizer/<file>)."""
    if location.endswith(".h5"):
        import h5py

        with h5py.File(location, "r") as f:
            info = f[name].id.get_chunk_info(0)
        path, offset, size = Path(location), info.byte_offset, info.size
    else:
        path = next(p for p in (Path(location) / name / "c").rglob("*") if p.is_file())
        offset, size = 0, path.stat().st_size
    data = bytearray(path.read_bytes())
    data[offset + size // 2 - 3] ^= 0x01
    path.write_bytes(bytes(data))


def _train(store, student, output):
    return CliRunner().invoke(cli, ["train", store, "--student", student, "--output", str(output), "--device", "cpu",
                                    "--hsk-epochs", "1", "--pred-epochs", "1", "--max-steps", "1", "--quiet"])


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_a_flipped_byte_of_the_static_mask_fails_verify_and_train(uniform_store, tiny_student, tmp_path, backend):
    store = copy_store(uniform_store, tmp_path, backend)
    _flip_root_array(store, "static_mask")
    assert_one_error_line(CliRunner().invoke(cli, ["verify", store]), "static_mask is damaged")
    assert_one_error_line(_train(store, tiny_student, tmp_path / "run"), "static_mask is damaged", "hskstore verify")


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_a_flipped_byte_of_a_tokenizer_file_fails_verify_train_convert_and_student_bert(tiny_store, tiny_student,
                                                                                     tmp_path, backend):
    store = copy_store(tiny_store, tmp_path, backend)
    _flip_root_array(store, "tokenizer/tokenizer.json")
    runner = CliRunner()
    assert_one_error_line(runner.invoke(cli, ["verify", store]), "tokenizer is damaged")
    assert_one_error_line(_train(store, tiny_student, tmp_path / "run"), "tokenizer is damaged", "hskstore verify")
    assert_one_error_line(runner.invoke(cli, ["convert", store, str(tmp_path / "c.zarr")]), "tokenizer is damaged")
    assert_one_error_line(runner.invoke(cli, ["student", "bert", "--store", store, "--output", str(tmp_path / "st")]),
                    "tokenizer is damaged")


def test_a_static_mask_is_written_with_a_checksum_on_both_backends(uniform_store, tmp_path):
    import h5py

    meta = json.loads((Path(uniform_store) / "static_mask" / "zarr.json").read_text())
    assert meta["codecs"] == [{"name": "bytes"}, {"name": "crc32c"}]
    with h5py.File(copy_store(uniform_store, tmp_path, "hdf5"), "r") as f:
        assert f["static_mask"].fletcher32


def _delete_chunk(location: str, split: str, name: str, chunk: int) -> None:
    """Remove one stored chunk: a file on Zarr; on HDF5, unlink the dataset's chunk from the file's index."""
    if location.endswith(".h5"):
        import h5py

        with h5py.File(location, "r+") as f:   # rebuild the array without that chunk: the index no longer has it
            old = f[split][name]
            data, rows = old[...], old.chunks[0]
            kwargs = dict(shape=old.shape, dtype=old.dtype, chunks=old.chunks, fillvalue=old.fillvalue,
                          fletcher32=old.fletcher32, compression=old.compression, compression_opts=old.compression_opts,
                          shuffle=old.shuffle)
            del f[split][name]
            new = f[split].create_dataset(name, **kwargs)
            for k in range(-(-len(data) // rows)):
                if k != chunk:
                    new[k * rows:(k + 1) * rows] = data[k * rows:(k + 1) * rows]
        return
    files = [p for p in (Path(location) / split / name / "c" / str(chunk)).rglob("*") if p.is_file()] \
        or [Path(location) / split / name / "c" / str(chunk)]
    files[0].unlink()


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_info_finds_a_deleted_chunk_without_decoding(tiny_store, tmp_path, backend):
    store = copy_store(tiny_store, tmp_path, backend)
    _delete_chunk(store, "train", "values", 1)
    assert_one_error_line(CliRunner().invoke(cli, ["info", store]), "chunk 1 of train/values is missing", "hskstore verify")


def test_info_finds_an_array_whose_metadata_does_not_parse(tiny_store, tmp_path):
    store = copy_store(tiny_store, tmp_path, "zarr")
    meta = Path(store) / "train" / "positions" / "zarr.json"
    meta.write_text(meta.read_text()[:40])
    assert_one_error_line(CliRunner().invoke(cli, ["info", store]), "train/positions/zarr.json is damaged", "hskstore verify")
    assert_one_error_line(CliRunner().invoke(cli, ["verify", store]), "train/positions/zarr.json is damaged")


@pytest.mark.parametrize("command", ["info", "verify", "train", "slice", "convert", "extract"])
def test_a_truncated_root_metadata_is_one_line_in_every_command(tiny_store, tiny_student, tiny_teacher, tmp_path,
                                                               command):
    store = copy_store(tiny_store, tmp_path, "zarr")
    root = Path(store) / "zarr.json"
    root.write_text(root.read_text()[:200])
    args = {"info": ["info", store], "verify": ["verify", store],
            "train": ["train", store, "--student", tiny_student, "--output", str(tmp_path / "run"), "--device", "cpu",
                      "--quiet"],
            "slice": ["slice", store, str(tmp_path / "small.zarr"), "--length", "3"],
            "convert": ["convert", store, str(tmp_path / "c.h5")],
            "extract": ["extract", "--teacher", tiny_teacher, "--task", "tweets", "--output", store, "--limit", "120",
                        "--chunk-rows", "32", "--quiet"]}[command]
    assert_one_error_line(CliRunner().invoke(cli, args), "root metadata (zarr.json) is damaged")


def test_a_damaged_hdf5_root_attribute_is_one_line(tiny_store, tmp_path):
    import h5py

    store = copy_store(tiny_store, tmp_path, "hdf5")
    with h5py.File(store, "r+") as f:
        f.attrs["hskstore"] = f.attrs["hskstore"][:100]
    assert_one_error_line(CliRunner().invoke(cli, ["info", store]), "root attribute 'hskstore' is damaged")


@pytest.mark.parametrize("entry", ["hskstore_teacher.json", "model.safetensors", "notes.txt"])
@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_a_crafted_tokenizer_entry_is_refused_before_anything_trains(tiny_store, tiny_student, tmp_path, backend,
                                                                    entry, monkeypatch):
    import h5py
    import numpy as np
    import zarr

    from hskstore.stages import train as train_stage

    store = copy_store(tiny_store, tmp_path, backend)
    if backend == "zarr":
        group = zarr.open_group(str(Path(store) / "tokenizer"), mode="r+")
        group.create_array(entry, data=np.frombuffer(b"{}", dtype=np.uint8))
        zarr.consolidate_metadata(store)
    else:
        with h5py.File(store, "r+") as f:
            f["tokenizer"].create_dataset(entry, data=np.frombuffer(b"{}", dtype=np.uint8))
    trained = []
    monkeypatch.setattr(train_stage, "sparse_hsk_loss", lambda *a, **k: trained.append(1))   # nothing may train
    assert_one_error_line(_train(store, tiny_student, tmp_path / "run"), f"tokenizer entry {entry!r}", "refusing")
    assert not trained and not (tmp_path / "run" / "student").exists()


def _flip_record(location: str, split: str) -> None:
    """Flip a bit of the first chunk record's stored byte (1 becomes 3: still 'written', but not what was summed)."""
    if location.endswith(".h5"):
        import h5py

        with h5py.File(location, "r") as f:
            path, offset = Path(location), f[split]["chunks_written"].id.get_chunk_info(0).byte_offset
    else:
        path, offset = Path(location) / split / "chunks_written" / "c" / "0", 0
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x02
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_a_flipped_byte_of_a_chunk_record_fails_info_and_verify_in_one_line(tiny_store, tmp_path, backend):
    """(A complete store's training never reads the record; a resumed extraction reads it through the check.)"""
    store = copy_store(tiny_store, tmp_path, backend)
    _flip_record(store, "train")
    runner = CliRunner()
    assert_one_error_line(runner.invoke(cli, ["info", store]), "chunk record train/chunks_written is damaged",
                    "checksum mismatch", "hskstore verify")
    assert_one_error_line(runner.invoke(cli, ["verify", store]), "failed verification", "train/chunks_written",
                    "checksum mismatch")



@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_a_resumed_extraction_reads_the_chunk_record_through_its_checksum(tiny_store, tmp_path, backend):
    """What a rerun of `extract` does first with a partial store: ask the reopened writer which chunks are done."""
    from hskstore.errors import StoreError
    from hskstore.store._hdf5 import Hdf5Writer
    from hskstore.store._zarr import ZarrWriter

    store = copy_store(tiny_store, tmp_path, backend)
    _flip_record(store, "validation")
    writer = (ZarrWriter if backend == "zarr" else Hdf5Writer).reopen(store)
    try:
        assert writer.chunks_done("train") == {0, 1, 2, 3}
        with pytest.raises(StoreError, match="chunk record validation/chunks_written is damaged"):
            writer.chunks_done("validation")
    finally:
        writer.close()

def test_every_array_of_a_new_store_carries_a_checksum_on_both_backends(tiny_store, tmp_path):
    import h5py

    for meta in Path(tiny_store).rglob("zarr.json"):
        node = json.loads(meta.read_text())
        if node["node_type"] == "array":
            assert node["codecs"][-1] == {"name": "crc32c"}, meta
    with h5py.File(copy_store(tiny_store, tmp_path, "hdf5"), "r") as f:
        arrays = []
        f.visititems(lambda name, obj: arrays.append(obj) if isinstance(obj, h5py.Dataset) else None)
        assert {a.name.rsplit("/", 1)[-1] for a in arrays} >= {"chunks_written", "values", "input_ids"}
        assert all(a.fletcher32 for a in arrays if a.size), [a.name for a in arrays if not a.fletcher32]


@pytest.mark.parametrize("backend", ["zarr", "hdf5"])
def test_a_store_written_before_the_record_had_a_checksum_still_opens_and_verifies(tiny_store, tmp_path, backend):
    """Stores from before this change keep their unchecksummed records: read as they are, no error."""
    import h5py
    import numpy as np
    import zarr

    store = copy_store(tiny_store, tmp_path, backend)
    for split in ("train", "validation"):
        if backend == "zarr":
            meta = Path(store) / split / "chunks_written" / "zarr.json"
            node = json.loads(meta.read_text())
            node["codecs"] = [{"name": "bytes"}]   # the record as earlier versions wrote it: raw bytes
            meta.write_text(json.dumps(node))
            for chunk in (Path(store) / split / "chunks_written" / "c").iterdir():
                chunk.write_bytes(chunk.read_bytes()[:-4])
        else:
            with h5py.File(store, "r+") as f:
                records = f[split]["chunks_written"][...]
                del f[split]["chunks_written"]
                f[split].create_dataset("chunks_written", data=records.astype(np.uint8))
    if backend == "zarr":
        zarr.consolidate_metadata(store)
    runner = CliRunner()
    assert runner.invoke(cli, ["verify", store]).exit_code == 0
    info = json.loads(runner.invoke(cli, ["info", store, "--json"]).output)
    assert info["examples"] == {"train": 120, "validation": 30}
