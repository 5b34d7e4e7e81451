"""Disk full, quota and file-size limits while a store is written, on both backends: one line, never a
traceback or a crash, and the store is left resumable (or, mid-creation, absent).

Two ways in: a real file-size limit (RLIMIT_FSIZE, EFBIG) in a subprocess, which needs no root; and a
fault-injecting write (ENOSPC) in the process, past the layout, which reaches every backend.
"""

import errno
import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

from hskstore.cli import cli
from hskstore.store import open_store
from hskstore.store.verify import verify_store

pytestmark = pytest.mark.slow
EXTRACT = ("--task", "tweets", "--limit", "120", "--chunk-rows", "32", "--student-layers", "2", "--depth", "2",
           "--length", "5", "--width", "8", "--quiet", "--device", "cpu")


def _limited(limit: int, *args) -> subprocess.CompletedProcess:
    """`python -m hskstore ARGS` with no file larger than `limit` bytes (SIGXFSZ ignored: the write fails EFBIG)."""
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.run([sys.executable, "-m", "hskstore", *map(str, args)], preexec_fn=limit_file_size,
                          capture_output=True, text=True, timeout=300)


def _one_line(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in (result.stdout + result.stderr).splitlines()
             if line.strip() and not line.startswith("warning: ")]  # the truncation warning is not an error
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_file_size_limit_while_hdf5_chunks_are_written_is_one_line_and_leaves_the_last_record(tiny_store, tmp_path):
    target = tmp_path / "c.h5"
    _one_line(_limited(300_000, "convert", tiny_store, target), "file too large", "c.h5")
    with open_store(str(target), allow_incomplete=True) as store:   # readable, its recorded chunks intact
        assert not store.complete and store.chunks_done("train")
    assert CliRunner().invoke(cli, ["convert", tiny_store, str(target)]).exit_code == 0   # a rerun remakes it
    assert verify_store(str(target))["complete"]


def test_a_file_size_limit_while_the_hdf5_layout_is_made_leaves_nothing(tiny_store, tmp_path):
    target = tmp_path / "c.h5"
    _one_line(_limited(100_000, "convert", tiny_store, target), "file too large")
    assert list(tmp_path.iterdir()) == []


def test_a_file_size_limit_while_the_tokenizer_is_saved_is_one_line(tiny_teacher, tmp_path):
    # The tokenizer's own library (Rust) reports EFBIG as Exception('File too large (os error 27)').
    _one_line(_limited(300_000, "extract", "--teacher", tiny_teacher, "--output", tmp_path / "s.zarr", *EXTRACT),
              "file too large")


def _fill_the_disk_after(monkeypatch, backend: str, records: int) -> None:
    """Let `records` chunks be written and recorded, then every write fails with ENOSPC."""
    full = {"on": False, "records": 0}

    def enospc():
        return OSError(errno.ENOSPC, "No space left on device")
    if backend == "hdf5":
        from hskstore.store import _hdf5 as module

        original_write = module._GuardedFile.write

        class FullDisk:   # the OS file under the writer's file object: every write refused
            def __init__(self, raw):
                self.raw = raw

            def write(self, data):
                raise enospc()

            def __getattr__(self, name):
                return getattr(self.raw, name)

        def write(self, data):
            if full["on"] and not isinstance(self.raw, FullDisk):
                self.raw = FullDisk(self.raw)
            return original_write(self, data)
        monkeypatch.setattr(module._GuardedFile, "write", write)
        writer = module.Hdf5Writer
    else:
        from zarr.storage import LocalStore

        from hskstore.store import _zarr as module

        original_set = LocalStore.set

        async def set_(self, key, value, *args, **kwargs):
            if full["on"]:
                raise enospc()
            return await original_set(self, key, value, *args, **kwargs)
        monkeypatch.setattr(LocalStore, "set", set_)
        writer = module.ZarrWriter
    original_record = writer._record

    def record(self, split, index):
        original_record(self, split, index)
        full["records"] += 1
        full["on"] = full["records"] >= records
    monkeypatch.setattr(writer, "_record", record)


@pytest.mark.parametrize("suffix", ["zarr", "h5"])
def test_a_full_disk_mid_extraction_is_one_line_and_a_rerun_resumes(tiny_teacher, tmp_path, monkeypatch, suffix):
    path = tmp_path / f"s.{suffix}"
    args = ["extract", "--teacher", tiny_teacher, "--output", str(path), *EXTRACT]
    with monkeypatch.context() as patch:
        _fill_the_disk_after(patch, "hdf5" if suffix == "h5" else "zarr", records=2)
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "no space left on device" in result.output, result.output
    printed = [line for line in result.output.strip().splitlines() if not line.startswith("warning: ")]
    assert "Traceback" not in result.output and len(printed) == 1, result.output
    with open_store(str(path), allow_incomplete=True) as store:
        assert len(store.chunks_done("train")) >= 2 and not store.complete
    resumed = CliRunner().invoke(cli, args)
    assert resumed.exit_code == 0, resumed.output
    assert verify_store(str(path))["complete"]


def test_a_half_created_hdf5_file_is_remade_by_a_rerun(tiny_teacher, tmp_path):
    path = tmp_path / "s.h5"
    h5py.File(path, "w").close()                     # what a kill during creation used to leave: an empty file
    Path(str(tmp_path / "s.creating.h5")).write_bytes(b"\x89HDF")   # and what one now leaves beside the target
    result = CliRunner().invoke(cli, ["extract", "--teacher", tiny_teacher, "--output", str(path), *EXTRACT])
    assert result.exit_code == 0, result.output
    assert verify_store(str(path))["complete"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


def test_hdf5_creation_is_atomic(tiny_store, tmp_path, monkeypatch):
    from hskstore.store import _hdf5

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(_hdf5, "_write_layout", killed)
    result = CliRunner().invoke(cli, ["convert", tiny_store, str(tmp_path / "c.h5")])
    assert result.exit_code == 130, result.output
    assert list(tmp_path.iterdir()) == []
