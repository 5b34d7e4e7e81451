"""HDF5 backend: the same layout in one self-contained `.h5` file, written and read with h5py.

Arrays are chunked along examples like the Zarr backend, compressed with the filters every h5py
build has (shuffle + gzip, plus Fletcher-32 checksums), so plain `h5py` reads a store with no plugin.
Root attributes are one JSON string attribute (`hskstore`): nested dicts survive, and a reader needs
no HDF5 attribute type mapping. HDF5 is not crash-safe the way a directory of chunk objects is: the
writer flushes after every chunk record, and a kill mid-write can still damage the file (see
docs/store-format.md); a rerun of `extract` on a damaged file says so.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from ..errors import StoreError
from .base import Backend, Store, StoreWriter, damage_reason
from .format import FORMAT_NAME, RECORD_ARRAY, ArraySpec, check_format
from .location import is_remote, local_path

__all__ = ["Hdf5Store", "Hdf5Writer", "Hdf5Backend", "BACKEND", "is_hdf5", "hdf5_read_attrs", "ATTRS_KEY"]

ATTRS_KEY = "hskstore"
HDF5_SUFFIXES = (".h5", ".hdf5")
_FILTERS = {
    "blosc-zstd1-byteshuffle": dict(shuffle=True, compression="gzip", compression_opts=1),
    "zstd3": dict(compression="gzip", compression_opts=4),
    "zstd1": dict(compression="gzip", compression_opts=1),
    "zstd19": dict(compression="gzip", compression_opts=9),
}


def is_hdf5(location: str) -> bool:
    return location.lower().endswith(HDF5_SUFFIXES)


def _path(location: str) -> str:
    if is_remote(location):
        raise StoreError(f"{location}: HDF5 stores are local files; use a .zarr URL for object stores "
                         "(or `hskstore convert` a local .h5 into one)")
    return local_path(location)


def _open(location: str, mode: str):
    import h5py

    try:
        return h5py.File(_path(location), mode)
    except OSError as exc:
        raise StoreError(f"cannot open HDF5 store {location} ({exc}); if a run writing it was killed "
                         "mid-write the file may be damaged: rerun with --overwrite") from None


def _parse_attrs(raw, location: str) -> dict:
    try:
        attrs = json.loads(raw)
    except (ValueError, TypeError) as exc:
        raise StoreError(f"{location}: the store's root attribute '{ATTRS_KEY}' is damaged ({str(exc)[:80]}); "
                         "the store cannot be read: delete it and re-extract") from None
    if not isinstance(attrs, dict):
        raise StoreError(f"{location}: the store's root attribute '{ATTRS_KEY}' is damaged (not an object); "
                         "the store cannot be read: delete it and re-extract")
    return attrs


def hdf5_read_attrs(location: str) -> dict | None:
    if not os.path.exists(_path(location)):
        return None
    with _open(location, "r") as file:
        try:
            raw = file.attrs.get(ATTRS_KEY)
            empty = raw is None and not len(file) and not len(file.attrs)
        except (OSError, RuntimeError, KeyError) as exc:
            raise StoreError(f"{location}: the store's root attributes cannot be read ({str(exc)[:80]}); "
                             "the store cannot be read: delete it and re-extract") from None
        if empty:   # an HDF5 file with nothing in it: a store killed before its attributes (before creation
            return {"format": FORMAT_NAME}   # was atomic); it holds no data, so a rerun may remake it
        return None if raw is None else _parse_attrs(raw, location)


class Hdf5Store(Store):
    backend = "hdf5"

    def __init__(self, location: str, storage_options: dict | None = None):
        self._file = None
        self._pid = None
        attrs = hdf5_read_attrs(location)
        if attrs is None:
            raise StoreError(f"{location} is not an hskstore store (no '{ATTRS_KEY}' attribute)")
        super().__init__(location, attrs, storage_options)

    @property
    def file(self):
        # Opened lazily and again in each process: a DataLoader worker must not use its parent's handle.
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = _open(self.location, "r"), os.getpid()
        return self._file

    def close(self):
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self):  # picklable (spawned workers) without the open handle
        return self.__dict__ | {"_file": None, "_pid": None}

    def _array_names(self, split):
        import h5py

        return [n for n, obj in self.file[split].items() if isinstance(obj, h5py.Dataset) and n != RECORD_ARRAY]

    def missing_chunk(self, split, name, start, stop):
        return None  # HDF5 allocates chunks inside the file: one cannot go missing alone

    def check_records(self):
        """Every recorded chunk of every array is allocated in the file (chunk index only, nothing decoded)."""
        for split in self.splits:
            done = sorted(self.chunks_done(split))
            for name in self._array_names(split):
                dataset = self.file[split][name]
                if dataset.chunks is None or not done:
                    continue
                try:
                    allocated = {dataset.id.get_chunk_info(i).chunk_offset[0] // dataset.chunks[0]
                                 for i in range(dataset.id.get_num_chunks())}
                except (OSError, RuntimeError, ValueError) as exc:
                    raise StoreError(f"{self.location}: the chunk index of {split}/{name} is damaged "
                                     f"({damage_reason(exc)}); run `hskstore verify {self.location}`, "
                                     "then re-extract the store") from None
                missing = [k for k in done if k not in allocated]
                if missing:
                    raise StoreError(f"{self.location}: chunk {missing[0]} of {split}/{name} is missing although "
                                     f"recorded as written; run `hskstore verify {self.location}`, then re-extract")

    def _read(self, split, name, start, stop):
        try:
            return self.file[split][name][start:stop]
        except (OSError, ValueError, RuntimeError) as exc:  # Fletcher-32 mismatch, a broken filter pipeline
            chunk = start // self.chunk_rows
            raise StoreError(f"{self.location}: chunk {chunk} of {split}/{name} is damaged ({damage_reason(exc)}); "
                             f"run `hskstore verify {self.location}` to list every bad chunk, then re-extract") from None

    def _records(self, split):
        return _read_records(self.location, split, lambda: self.file[split][RECORD_ARRAY][:])

    def _root_array(self, name):
        return self.file[name][...] if name in self.file else None

    def _tokenizer_names(self):
        return list(self.file["tokenizer"])

    def _tokenizer(self):
        group = self.file["tokenizer"]
        return {name: group[name][...].tobytes() for name in group}

    def nbytes(self):
        out = {}
        for split in self.splits:
            for name in self._array_names(split):
                out[f"{split}/{name}"] = int(self.file[split][name].id.get_storage_size())
        out["static_mask"] = int(self.file["static_mask"].id.get_storage_size()) if "static_mask" in self.file else 0
        out["tokenizer"] = sum(int(d.id.get_storage_size()) for d in self.file["tokenizer"].values())
        out["total"] = os.path.getsize(_path(self.location))
        return out


def _read_records(location: str, split: str, read):
    """A split's chunk record read through its Fletcher-32 (a store written before it had one reads as
    before): damage is one line naming it (and `verify`)."""
    try:
        return read()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise StoreError(f"{location}: the chunk record {split}/{RECORD_ARRAY} is damaged ({damage_reason(exc)}); "
                         f"run `hskstore verify {location}`, then re-extract the store") from None


def creating_path(path: str) -> str:
    """Where an HDF5 store's layout is built before it is renamed into place."""
    stem, _, suffix = path.rpartition(".")
    return f"{stem}.creating.{suffix}"


def _write_layout(file, attrs, specs, static_mask, tokenizer_files) -> None:
    """Root attributes, every dataset at its final size, static mask and tokenizer, then layout_complete."""
    file.attrs[ATTRS_KEY] = json.dumps(attrs)
    rows_per_chunk = attrs["chunk_rows"]
    for split, rows in attrs["splits"].items():
        group = file.create_group(split)
        group.attrs["num_examples"] = rows
        for spec in specs:
            shape = (rows, *spec.row_shape)
            chunks = (max(1, min(rows_per_chunk, rows)), *spec.row_shape) if rows else None
            dataset = group.create_dataset(spec.name, shape=shape, dtype=spec.dtype, chunks=chunks,
                                           fillvalue=spec.fill_value, fletcher32=bool(rows),
                                           **(_FILTERS[spec.codec] if rows else {}))
            dataset.attrs["dimension_names"] = json.dumps(list(spec.dims))
        records = -(-rows // rows_per_chunk)   # one chunk, Fletcher-32 like every array (none when empty)
        group.create_dataset(RECORD_ARRAY, shape=(records,), dtype="uint8", fillvalue=0,
                             **({"chunks": (records,), "fletcher32": True} if records else {}))
    if static_mask is not None:
        file.create_dataset("static_mask", data=static_mask, chunks=True, fletcher32=True)
    tokenizer = file.create_group("tokenizer")
    for name, data in tokenizer_files.items():
        tokenizer.create_dataset(name, data=np.frombuffer(data, dtype=np.uint8), fletcher32=True,
                                 chunks=True, compression="gzip", compression_opts=4)
    file.attrs[ATTRS_KEY] = json.dumps(attrs | {"layout_complete": True})
    file.flush()


_ERRNO = re.compile(r"errno = (\d+)")


def _as_os_error(exc: BaseException, path: str) -> BaseException:
    """HDF5 reports a failed write (disk full, quota, file-size limit) as RuntimeError/OSError text holding
    `errno = N`: the OSError it was, naming the file, so the CLI prints one line."""
    if isinstance(exc, StoreError):
        return exc
    match = _ERRNO.search(str(exc))
    if match:
        return OSError(int(match.group(1)), os.strerror(int(match.group(1))), path)
    return exc


class _GuardedFile:
    """The file an HDF5 writer writes through (h5py's `fileobj` driver): the first write the disk refuses (full,
    quota, file-size limit) is kept, and every later write is dropped, so HDF5 never meets a failed write
    (a failed flush leaves it unable to close the file, and it crashes the interpreter at exit). The writer
    raises the kept error after the operation; the file keeps what was written before it, the metadata
    of the last flush, which is the last chunk record."""

    def __init__(self, path: str, create: bool):
        self.path = path
        self.raw = open(path, "w+b" if create else "r+b", buffering=0)
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += self.raw.write(view[done:])
            except OSError as exc:
                self.error = exc
        return len(view)

    def truncate(self, size=None):
        if self.error is None:
            try:
                return self.raw.truncate(size)
            except OSError as exc:
                self.error = exc
        return size

    def flush(self):
        if self.error is None:
            self.raw.flush()

    def read(self, size=-1):
        return self.raw.read(size)

    def readinto(self, buffer):
        return self.raw.readinto(buffer)

    def seek(self, offset, whence=0):
        return self.raw.seek(offset, whence)

    def tell(self):
        return self.raw.tell()

    def close(self):
        self.raw.close()

    def raise_kept(self):
        if self.error is not None:
            exc = self.error
            raise OSError(exc.errno, exc.strerror or str(exc), self.path)


def _open_for_writing(path: str, create: bool):
    """(h5py.File, its _GuardedFile) for a writer."""
    import h5py

    handle = _GuardedFile(path, create)
    try:
        return h5py.File(handle, "w" if create else "r+"), handle
    except OSError as exc:
        handle.close()
        raise StoreError(f"cannot open HDF5 store {path} ({exc}); if a run writing it was killed "
                         "mid-write the file may be damaged: rerun with --overwrite") from None


def _close_quietly(file) -> None:
    try:
        if file.id.valid:
            file.close()
    except (OSError, RuntimeError, ValueError):
        pass   # the write that failed already said why


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class Hdf5Writer(StoreWriter):
    def __init__(self, location, file, storage_options=None):
        super().__init__(location, _parse_attrs(file.attrs[ATTRS_KEY], location), storage_options)
        self.file = file

    @classmethod
    def create(cls, location, attrs, specs: list[ArraySpec], static_mask, tokenizer_files, storage_options=None):
        """Build the layout under a temporary name beside the target (`x.creating.h5`) and rename it into place
        once complete and closed: a kill or a full disk mid-creation never leaves a half-made file at the
        target (a leftover temporary file is removed by the next create)."""
        path = _path(location)
        if os.path.dirname(os.path.abspath(path)):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        building = creating_path(path)
        if os.path.exists(building):
            os.remove(building)
        try:
            file, handle = _open_for_writing(building, create=True)
            try:
                _write_layout(file, attrs, specs, static_mask, tokenizer_files)
            finally:
                _close_quietly(file)
                handle.close()
            handle.raise_kept()
        except BaseException:
            _remove_quietly(building)
            raise
        os.replace(building, path)
        return cls.reopen(location, storage_options)

    @classmethod
    def reopen(cls, location, storage_options=None):
        file, handle = _open_for_writing(_path(location), create=False)
        check_format(_parse_attrs(file.attrs[ATTRS_KEY], location), location)
        writer = cls(location, file, storage_options)
        writer._handle = handle
        return writer

    _handle: _GuardedFile | None = None

    def _guarded(self, write):
        """A write; one the disk refuses (full, quota, file-size limit) closes the file and raises the OSError.
        Every chunk record was flushed after its chunk, so a rerun resumes at the first unrecorded chunk."""
        try:
            result = write()
        except (OSError, RuntimeError, ValueError) as exc:
            error = _as_os_error(exc, _path(self.location))
            if error is not exc:
                self._abandon()
                raise error from None
            raise
        if self._handle is not None and self._handle.error is not None:
            self._abandon()
            self._handle.raise_kept()
        return result

    def _abandon(self):
        _close_quietly(self.file)
        if self._handle is not None:
            self._handle.close()

    def _write_array(self, split, name, start, data):
        def write():
            self.file[split][name][start:start + len(data)] = data
        self._guarded(write)

    def _record(self, split, index):
        def record():
            self.file[split][RECORD_ARRAY][index] = 1
            self.file.flush()
        self._guarded(record)

    def chunks_done(self, split):
        records = _read_records(self.location, split, lambda: self.file[split][RECORD_ARRAY][:])
        return {int(i) for i in np.flatnonzero(records)}

    def _update_attrs(self, changes, drop=()):
        attrs = _parse_attrs(self.file.attrs[ATTRS_KEY], self.location) | changes
        for name in drop:
            attrs.pop(name, None)

        def update():
            self.file.attrs[ATTRS_KEY] = json.dumps(attrs)
            self.file.flush()
        self._guarded(update)

    def close(self):
        if self.file.id.valid:
            self._guarded(self.file.close)
            if self._handle is not None:
                self._handle.close()


class Hdf5Backend(Backend):
    """HDF5: a local file ending in `.h5` or `.hdf5`."""

    name = "hdf5"
    description = "an HDF5 file"
    parallel_writers = False   # one file that one process holds open for writing

    def claims(self, url):
        return is_hdf5(url)

    def exists(self, location):
        return os.path.exists(_path(location.url))

    def read_attrs(self, location):
        return hdf5_read_attrs(location.url)

    def open(self, location):
        return Hdf5Store(location.url, location.storage_options)

    def create(self, location, attrs, specs, static_mask, tokenizer_files):
        return Hdf5Writer.create(location.url, attrs, specs, static_mask, tokenizer_files, location.storage_options)

    def reopen(self, location):
        return Hdf5Writer.reopen(location.url, location.storage_options)

    def delete(self, location):
        os.remove(_path(location.url))

    def sibling(self, url, tag):
        stem, _, suffix = url.rstrip("/").rpartition(".")   # x.h5 -> x.overwrite.h5: still an HDF5 name
        return f"{stem}.{tag}.{suffix}"

    def filesystem(self, location):
        import fsspec

        return fsspec.filesystem("file"), os.path.abspath(_path(location.url))

    def writable_directory(self, location):
        return os.path.dirname(os.path.abspath(_path(location.url)))


BACKEND = Hdf5Backend()
