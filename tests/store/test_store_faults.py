"""Faults a storage engineer would inject, on every backend: flipped bytes, truncated and deleted
chunks, a kill at each phase of writing, two writers at once, a crafted tokenizer, a failed --overwrite
of extract, convert and slice.

Each is detected with a one-line error naming the split, array and chunk (and the command to rerun),
or survived: a rerun finishes the same store, and a failed replacement leaves the old one intact.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import assert_one_error_line, copy_store
from hskstore.cli import cli
from hskstore.method.compression import Compression
from hskstore.errors import StoreError
from hskstore.stages.extract import ExtractConfig, extract
from hskstore.store import StoreWriter, open_store, staging_location, store_state
from hskstore.store.convert import convert_store
from hskstore.store.slicing import slice_store
from hskstore.store.verify import verify_store

ARRAYS = ["input_ids", "token_type_ids", "lengths", "labels", "logits", "positions", "values", "masks"]


def _config(teacher, output, **kwargs):
    kwargs.setdefault("compression", Compression(depth=2, length=5, width=0.25, student_layers=2))
    return ExtractConfig(teacher=teacher, task="tweets", output=str(output), limit=120, chunk_rows=32, **kwargs)


@pytest.fixture(params=["zarr-dir", "hdf5"])
def backend_store(request, tiny_store, tmp_path):
    """A fresh copy of the tiny store on one local backend."""
    return copy_store(tiny_store, tmp_path, request.param)


def _flip_chunk_bytes(location: str, split: str, name: str, chunk: int, count: int = 16) -> None:
    """Flip `count` bytes in the middle of one stored chunk, as a bad disk or a bad copy would."""
    if location.endswith(".h5"):
        import h5py

        with h5py.File(location, "r") as f:
            info = f[split][name].id.get_chunk_info(chunk)
        offset, size = info.byte_offset, info.size
        path = Path(location)
    else:
        path = _chunk_file(location, split, name, chunk)
        offset, size = 0, path.stat().st_size
    data = bytearray(path.read_bytes())
    middle = offset + size // 2
    for i in range(middle, min(middle + count, offset + size)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _chunk_file(location, split, name, chunk):
    files = [p for p in (Path(location) / split / name / "c" / str(chunk)).rglob("*") if p.is_file()]
    return files[0] if files else Path(location) / split / name / "c" / str(chunk)


@pytest.mark.parametrize("name", ARRAYS)
def test_every_array_with_a_flipped_chunk_is_named_by_verify_info_and_train(backend_store, tiny_student, tmp_path,
                                                                           name):
    _flip_chunk_bytes(backend_store, "train", name, 2)
    runner = CliRunner()
    assert_one_error_line(runner.invoke(cli, ["verify", backend_store]), f"train/{name} chunk 2", "is damaged")
    trained = runner.invoke(cli, ["train", backend_store, "--student", tiny_student, "--output", str(tmp_path / "run"),
                                  "--device", "cpu", "--hsk-epochs", "1", "--pred-epochs", "1", "--quiet"])
    assert_one_error_line(trained, f"chunk 2 of train/{name} is damaged", "hskstore verify")
    if name == "lengths":  # info reads every chunk's lengths
        assert_one_error_line(runner.invoke(cli, ["info", backend_store]), "chunk 2 of train/lengths is damaged")


def test_a_clean_store_verifies(backend_store):
    result = CliRunner().invoke(cli, ["verify", backend_store, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["chunks_checked"] == (4 + 1) * 8   # 4 train + 1 validation chunks x 8 arrays


@pytest.mark.parametrize("name", ["values", "token_type_ids", "labels"])
def test_a_deleted_or_truncated_chunk_is_an_error_never_fill_values(tiny_store, tmp_path, name):
    path = tmp_path / "s.zarr"
    shutil.copytree(tiny_store, path)
    _chunk_file(path, "train", name, 1).unlink()          # token_type_ids is all zeros: its chunk exists too
    assert_one_error_line(CliRunner().invoke(cli, ["verify", str(path)]), f"train/{name} chunk 1", "is missing")
    with open_store(path) as store, pytest.raises(StoreError, match=f"chunk 1 of train/{name} is missing"):
        store.split("train").read_chunk(1)
    shutil.rmtree(path)
    shutil.copytree(tiny_store, path)
    chunk = _chunk_file(path, "train", name, 3)
    chunk.write_bytes(chunk.read_bytes()[: max(1, chunk.stat().st_size // 2)])
    assert_one_error_line(CliRunner().invoke(cli, ["verify", str(path)]), f"train/{name} chunk 3", "is damaged")


@pytest.mark.parametrize("phase", ["creation", "mid-chunk", "between data and record", "at completion"])
@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_kill_at_each_phase_leaves_a_store_a_rerun_finishes(tiny_teacher, tiny_store, tmp_path, monkeypatch,
                                                              phase, suffix):
    from hskstore.store._hdf5 import Hdf5Writer
    from hskstore.store._zarr import ZarrWriter

    writer_class = ZarrWriter if suffix == ".zarr" else Hdf5Writer
    path = tmp_path / f"s{suffix}"
    calls = {"n": 0}

    def killed(original, after):
        def wrapper(self, *args):
            calls["n"] += 1
            if calls["n"] > after:
                raise KeyboardInterrupt(f"killed {phase}")
            return original(self, *args)
        return wrapper

    target = {"creation": ("_update_attrs", 0), "mid-chunk": ("_write_array", 20),
              "between data and record": ("_record", 2), "at completion": ("_update_attrs", 1 if suffix == ".zarr" else 0)}[phase]   # HDF5's layout: no attrs update
    atomic = suffix == ".h5" and phase == "creation"   # HDF5 builds its layout under another name
    if atomic:
        from hskstore.store import _hdf5

        monkeypatch.setattr(_hdf5, "_write_layout", lambda *a: killed(lambda *b: None, 0)(None))
    else:
        monkeypatch.setattr(writer_class, target[0], killed(getattr(writer_class, target[0]), target[1]))
    with pytest.raises(KeyboardInterrupt):
        extract(_config(tiny_teacher, path), progress=False)
    monkeypatch.undo()
    expected_state = "absent" if atomic else {"creation": "half", "at completion": "partial"}.get(phase, "partial")
    assert store_state(str(path))[0] == expected_state
    summary = extract(_config(tiny_teacher, path), progress=False)
    if phase == "at completion":
        assert summary["examples_extracted"] == 0           # every chunk was recorded: nothing recomputed
    with open_store(str(path)) as store, open_store(tiny_store) as reference:
        for split in reference.splits:
            a = store.split(split).read_rows(0, reference.split(split).num_examples)
            b = reference.split(split).read_rows(0, reference.split(split).num_examples)
            assert all(np.array_equal(a[n], b[n]) for n in b)


@pytest.mark.integration
def test_a_second_writer_is_refused_naming_the_holder(tiny_teacher, tmp_path, monkeypatch):
    import os
    import socket

    path = tmp_path / "s.zarr"
    seen = {}

    def second_writer_arrives(self, *args):
        if not seen:
            seen["result"] = CliRunner().invoke(cli, ["extract", "--teacher", tiny_teacher, "--task", "tweets",
                                                      "--output", str(path), "--limit", "120", "--chunk-rows", "32", "--quiet"])
        return original(self, *args)

    original = StoreWriter.write_chunk
    monkeypatch.setattr(StoreWriter, "write_chunk", second_writer_arrives)
    extract(_config(tiny_teacher, path), progress=False)
    assert_one_error_line(seen["result"], "is being written by another run", f"host {socket.gethostname()}",
                    f"PID {os.getpid()}")
    assert store_state(str(path))[0] == "complete" and not Path(str(path) + ".lock").exists()


@pytest.mark.integration
def test_a_stale_lock_of_a_dead_process_is_taken_over(tiny_teacher, tmp_path):
    import socket
    import subprocess
    import sys

    path = tmp_path / "s.zarr"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    Path(str(path) + ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout),
                                                     "started_at": "2026-01-01T00:00:00+00:00"}))
    extract(_config(tiny_teacher, path), progress=False)
    assert store_state(str(path))[0] == "complete"


def test_a_crafted_tokenizer_entry_cannot_overwrite_a_students_files(tiny_store, tiny_student, tmp_path):
    import zarr

    path = tmp_path / "crafted.zarr"
    shutil.copytree(tiny_store, path)
    group = zarr.open_group(str(path / "tokenizer"), mode="r+")
    group.create_array("model.safetensors", data=np.frombuffer(b"not weights", dtype=np.uint8))
    zarr.consolidate_metadata(str(path))   # a crafted store lists its entry like a real one
    result = CliRunner().invoke(cli, ["train", str(path), "--student", tiny_student, "--output", str(tmp_path / "run"),
                                      "--device", "cpu", "--hsk-epochs", "1", "--pred-epochs", "1", "--max-steps", "1", "--quiet"])
    assert_one_error_line(result, "tokenizer entry 'model.safetensors'", "refusing")


def _fails_after(chunks: int, error: BaseException):
    """StoreWriter.write_chunk that writes `chunks` chunks, then raises `error` (a dying disk, a kill)."""
    original, calls = StoreWriter.write_chunk, {"n": 0}

    def write_chunk(self, *args):
        calls["n"] += 1
        if calls["n"] > chunks:
            raise error
        return original(self, *args)
    return write_chunk


def _leftovers(path) -> list[str]:
    """What a finished run must not leave beside a store: its staging place, the swapped-out store, its lock."""
    path = str(path)
    staging = staging_location(path)
    return [p for p in (staging, staging.replace(".overwrite", ".old"), path + ".lock") if Path(p).exists()]


def test_a_failed_overwrite_keeps_the_old_store_and_a_good_one_replaces_it(tiny_teacher, backend_store, monkeypatch):
    path = backend_store
    with open_store(path) as store:
        old_uuid = store.uuid
    monkeypatch.setattr(StoreWriter, "write_chunk", _fails_after(2, KeyboardInterrupt("killed mid-overwrite")))
    other = Compression(depth=1, length=3, width=4, student_layers=2)
    with pytest.raises(KeyboardInterrupt):
        extract(_config(tiny_teacher, path, overwrite=True, compression=other), progress=False)
    monkeypatch.undo()
    with open_store(path) as store:                   # the old store is untouched and still complete
        assert store.uuid == old_uuid and store.resolved.depth == 2
    assert verify_store(path)["complete"]
    extract(_config(tiny_teacher, path, overwrite=True, compression=other), progress=False)
    with open_store(path) as store:
        assert store.uuid != old_uuid and store.resolved.depth == 1
    assert _leftovers(path) == []


# What convert and slice write into DST in these tests; each takes overwrite=.
DERIVE = {"convert": lambda src, dst, **kwargs: convert_store(src, dst, **kwargs),
          "slice": lambda src, dst, **kwargs: slice_store(src, dst, depth=1, length=3, **kwargs)}


@pytest.mark.parametrize("command", ["convert", "slice"])
@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_copy_that_fails_midway_under_overwrite_keeps_the_old_destination(tiny_store, tmp_path, monkeypatch,
                                                                           command, suffix):
    dst = str(tmp_path / f"dst{suffix}")
    DERIVE[command](tiny_store, dst)
    with open_store(dst) as store:
        before = store.attrs
    monkeypatch.setattr(StoreWriter, "write_chunk", _fails_after(2, OSError("disk failed (simulated)")))
    with pytest.raises(OSError, match="simulated"):
        DERIVE[command](tiny_store, dst, overwrite=True)
    monkeypatch.undo()
    assert verify_store(dst)["complete"]               # the good destination is still there, whole
    with open_store(dst) as store:
        assert store.attrs == before
    DERIVE[command](tiny_store, dst, overwrite=True)   # and a rerun replaces it
    with open_store(dst) as store:
        assert store.complete and (store.uuid != before["uuid"]) == (command == "slice")   # convert keeps identity
    assert _leftovers(dst) == []


@pytest.mark.parametrize("command", ["extract", "convert", "slice"])
@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_an_incomplete_store_names_the_command_to_rerun(tiny_teacher, tiny_store, tmp_path, monkeypatch, command,
                                                        suffix):
    dst = str(tmp_path / f"dst{suffix}")

    def run():
        if command == "extract":
            return extract(_config(tiny_teacher, dst), progress=False)
        return DERIVE[command](tiny_store, dst)

    monkeypatch.setattr(StoreWriter, "write_chunk", _fails_after(2, KeyboardInterrupt("killed")))
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.undo()
    assert store_state(dst)[0] == "partial"
    rerun = f"rerun the same `hskstore {command}` command"
    assert_one_error_line(CliRunner().invoke(cli, ["info", dst]), "is incomplete", rerun)
    assert_one_error_line(CliRunner().invoke(cli, ["verify", dst]), "was never written", rerun)
    run()                                              # which finishes it (extract) or makes it anew
    assert store_state(dst)[0] == "complete" and _leftovers(dst) == []
    with open_store(dst) as store:
        assert "writing" not in store.attrs            # the command is recorded only while it writes


@pytest.mark.parametrize("command", ["convert", "slice"])
def test_a_partial_extraction_is_not_replaced_by_convert_or_slice_without_overwrite(tiny_teacher, tiny_store, tmp_path,
                                                                                   monkeypatch, command):
    dst = str(tmp_path / "partial.zarr")
    monkeypatch.setattr(StoreWriter, "write_chunk", _fails_after(2, KeyboardInterrupt("killed")))
    with pytest.raises(KeyboardInterrupt):
        extract(_config(tiny_teacher, dst), progress=False)
    monkeypatch.undo()
    with pytest.raises(StoreError, match="`hskstore extract` was writing; rerun the same `hskstore extract`.*--overwrite"):
        DERIVE[command](tiny_store, dst)
    with open_store(dst, allow_incomplete=True) as store:   # its recorded chunks are kept
        assert len(store.chunks_done("train")) == 2
    DERIVE[command](tiny_store, dst, overwrite=True)
    assert store_state(dst)[0] == "complete" and _leftovers(dst) == []


@pytest.mark.parametrize("command", ["convert", "slice"])
def test_convert_and_slice_take_the_writer_lock(tiny_store, tmp_path, command):
    import os
    import socket

    dst = tmp_path / "dst.h5"
    Path(str(dst) + ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                    "started_at": "2026-01-01T00:00:00+00:00"}))
    with pytest.raises(StoreError, match="is being written by another run"):
        DERIVE[command](tiny_store, str(dst))
    assert not dst.exists()
