"""Zarr v3 backend: a directory, or any URL fsspec reaches (s3://, gs://, memory://, file://).

Local paths use zarr's LocalStore; URLs go through zarr's FsspecStore with the caller's storage
options (endpoint, credentials), so an extraction on a cloud GPU writes straight into a bucket and a
laptop streams from it. Every chunk is its own object: parallel writers of disjoint chunks never
touch the same object, and each chunk's record (`chunks_written[k]`) is one more such object.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np

from ..errors import StoreError
from .base import Backend, Store, StoreWriter, damage_reason
from .format import RECORD_ARRAY, ArraySpec, check_format
from .location import is_remote
from .location import local_path as _local_path

__all__ = ["ZarrStore", "ZarrWriter", "ZarrBackend", "BACKEND", "zarr_exists", "zarr_read_attrs", "zarr_delete"]


def _remote_options(location: str, storage_options: dict | None) -> dict:
    """The caller's fsspec options, with s3fs's whole-object reads made one request instead of two.

    s3fs reads a whole object with a HEAD first (to split objects over its 50 MB block into concurrent
    ranged GETs) unless `max_concurrency` is 1. A store's metadata and chunks are far smaller, so the HEAD
    only doubled the round trips of every read (measured: ~440 requests to create and reopen a small store).
    An explicit `max_concurrency` in the options is kept.
    """
    options = dict(storage_options or {})
    if location.split("://", 1)[0] in ("s3", "s3a"):
        options.setdefault("max_concurrency", 1)
    return options


def _store(location: str, storage_options: dict | None, read_only: bool):
    from zarr.storage import FsspecStore, LocalStore

    if is_remote(location):
        try:
            return FsspecStore.from_url(location, storage_options=_remote_options(location, storage_options),
                                        read_only=read_only)
        except (ImportError, ValueError) as exc:
            protocol = location.split("://", 1)[0]
            hint = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(protocol, "")
            raise StoreError(f"cannot open {location} ({exc}); install the fsspec driver for {protocol}://"
                             + (f" (pip install {hint})" if hint else "")) from None
    path = _local_path(location)
    if not read_only:
        os.makedirs(path, exist_ok=True)
    return LocalStore(path, read_only=read_only)


def _filesystem(location: str, storage_options: dict | None):
    import fsspec

    if is_remote(location):
        return fsspec.core.url_to_fs(location, **_remote_options(location, storage_options))
    return fsspec.filesystem("file"), os.path.abspath(_local_path(location))


def _quiet():
    """zarr warns that consolidated metadata is not yet in the v3 spec; we rely on zarr-python's own reading of it."""
    manager = warnings.catch_warnings()
    manager.__enter__()
    warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
    return manager


def _consolidate(store) -> None:
    import zarr

    manager = _quiet()
    try:
        group = zarr.open_group(store, mode="r", use_consolidated=False)
        for split in list(group.group_keys()):
            zarr.consolidate_metadata(store, path=split)  # xarray.open_zarr(..., group=split) reads these
        zarr.consolidate_metadata(store)
    finally:
        manager.__exit__(None, None, None)


def _open_group(store, location: str, mode: str = "r", **kwargs):
    """Open the root group; metadata that does not parse (a truncated zarr.json) is one line, not a traceback."""
    import zarr

    manager = _quiet()
    try:
        return zarr.open_group(store, mode=mode, zarr_format=3, **kwargs)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        raise
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:   # JSONDecodeError is a ValueError
        raise StoreError(f"{location}: the store's root metadata (zarr.json) is damaged ({str(exc)[:80]}); "
                         "the store cannot be read: delete it and re-extract") from None
    finally:
        manager.__exit__(None, None, None)


def zarr_read_attrs(location: str, storage_options: dict | None = None) -> dict | None:
    """Root attributes of whatever Zarr group is at `location`, or None when there is none."""
    import zarr

    try:
        group = _open_group(_store(location, storage_options, read_only=True), location)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None
    return group.attrs.asdict()


def zarr_exists(location: str, storage_options: dict | None = None) -> bool:
    """Anything at all at `location` (a store, a half-made one, or some other file)."""
    if not is_remote(location):
        return os.path.exists(_local_path(location))
    fs, root = _filesystem(location, storage_options)
    return fs.exists(root)


def zarr_delete(location: str, storage_options: dict | None = None) -> None:
    if not is_remote(location):
        shutil.rmtree(_local_path(location))
        return
    fs, root = _filesystem(location, storage_options)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _codecs(codec: str, itemsize: int) -> list:
    from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ZstdCodec

    if codec == "blosc-zstd1-byteshuffle":
        first = BloscCodec(cname="zstd", clevel=1, shuffle=BloscShuffle.shuffle, typesize=itemsize, blocksize=1 << 20)
    elif codec == "zstd3":
        first = ZstdCodec(level=3)
    elif codec == "zstd1":
        first = ZstdCodec(level=1)
    elif codec == "zstd19":
        first = ZstdCodec(level=19)
    else:
        raise ValueError(f"unknown codec {codec!r}")
    return [first, Crc32cCodec()]


def _checksum_only() -> list:
    """No compression, a CRC-32C: a flipped byte of the static mask or of a chunk record is found like one of
    any chunk. (Stores written before the record had it still read: zarr takes the codecs from the metadata.)"""
    from zarr.codecs import Crc32cCodec

    return [Crc32cCodec()]


def _read_records(location: str, split: str, read):
    """A split's chunk record read through its CRC-32C: damage is one line naming it (and `verify`)."""
    try:
        return read()
    except (ValueError, RuntimeError, OSError, TypeError) as exc:
        raise StoreError(f"{location}: the chunk record {split}/{RECORD_ARRAY} is damaged ({damage_reason(exc)}); "
                         f"run `hskstore verify {location}`, then re-extract the store") from None


class _ChunkFileDecoder:
    """Whole chunks of one local array read straight from their files: CRC-32C, then zstd or Blosc, into numpy.

    The reader reads whole chunks, and zarr's own read of them ran at 0.6x this one at d=768 and 0.5x at
    d=384 (event-loop hand-offs, a copy into the output; benchmarks/reader.py), a quarter of the host's
    work for a GPU student. Only the codec chains this package writes (`_codecs`) take this path, checked
    against each array's metadata; anything else, and every partial read, goes through zarr.
    """

    def __init__(self, array, root: str, decompressor):
        self.array, self.root, self.decompressor = array, root, decompressor
        self.rows = array.shape[0]
        self.chunk_shape = tuple(array.chunks)
        self.dtype = np.dtype(array.dtype).newbyteorder("<")

    @classmethod
    def for_array(cls, array, root: str):
        from numcodecs import Blosc, Zstd
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec

        codecs = tuple(array.metadata.codecs)
        if (len(codecs) != 3 or not isinstance(codecs[0], BytesCodec) or not isinstance(codecs[2], Crc32cCodec)
                or getattr(codecs[0].endian, "value", "little") != "little"
                or not isinstance(codecs[1], (BloscCodec, ZstdCodec)) or len(array.chunks) != len(array.shape)):
            return None
        return cls(array, root, Blosc() if isinstance(codecs[1], BloscCodec) else Zstd())

    def whole_chunk(self, start: int, stop: int) -> bool:
        rows = self.chunk_shape[0]
        return stop > start and start % rows == 0 and stop == min(start + rows, self.rows)

    def read(self, start: int, stop: int) -> np.ndarray:
        import google_crc32c

        index = start // self.chunk_shape[0]
        key = self.array.metadata.encode_chunk_key((index,) + (0,) * (len(self.chunk_shape) - 1))
        with open(os.path.join(self.root, key), "rb") as handle:
            # The body and its 4-byte CRC read apart: slicing one read copied the whole body once more.
            size = os.fstat(handle.fileno()).st_size
            body, stored = handle.read(max(size - 4, 0)), handle.read()
        if len(stored) != 4 or google_crc32c.value(body) != int.from_bytes(stored, "little"):
            raise ValueError("stored and computed checksum do not match")
        out = np.empty(self.chunk_shape, dtype=self.dtype)       # a regular grid stores edge chunks whole
        self.decompressor.decode(body, out=out)
        out = out[:stop - start]
        return out if self.dtype.isnative else out.astype(self.dtype.newbyteorder("="))


class ZarrStore(Store):
    backend = "zarr"

    def __init__(self, location: str, storage_options: dict | None = None):
        import zarr

        self._zstore = _store(location, storage_options, read_only=True)
        try:
            self.group = _open_group(self._zstore, location)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
            raise StoreError(f"no store at {location}: expected a store written by `hskstore extract`.") from None
        super().__init__(location, self.group.attrs.asdict(), storage_options)
        self._arrays: dict[tuple[str, str], object] = {}
        self._present: set[str] | None = None   # chunk keys on disk, listed once (one LIST on an object store)
        self._decoders: dict[tuple[str, str], _ChunkFileDecoder | None] = {}

    def _array(self, split: str, name: str):
        key = (split, name)
        if key not in self._arrays:  # opened once: each open is a metadata read, a round trip on S3
            self._arrays[key] = self.group[split][name]
        return self._arrays[key]

    def _array_names(self, split: str) -> list[str]:
        return [n for n in self.group[split].array_keys() if n != RECORD_ARRAY]

    def _listing(self, refresh: bool = False) -> set[str]:
        if self._present is None or refresh:
            fs, root = _filesystem(self.location, self.storage_options)
            fs.invalidate_cache()
            root = root.rstrip("/")
            self._present = {path[len(root):].lstrip("/") for path in fs.find(root)}
        return self._present

    def _chunk_key(self, split: str, name: str, index: int) -> str:
        ndim = len(self._array(split, name).shape)
        return "/".join([split, name, "c", str(index)] + ["0"] * (ndim - 1))

    def missing_chunk(self, split: str, name: str, start: int, stop: int) -> int | None:
        """The first chunk in rows [start, stop) of an array whose object is absent, else None.

        Version 2 writes every chunk object, empty ones included, so an absent object is a deleted one
        (zarr alone would read it back as fill values).
        """
        if self.format_version == 1 or stop <= start:
            return None
        chunks = range(start // self.chunk_rows, (stop - 1) // self.chunk_rows + 1)
        for refresh in (False, True):   # a store still being written may have gained chunks since the listing
            present = self._listing(refresh)
            missing = [k for k in chunks if self._chunk_key(split, name, k) not in present]
            if not missing:
                return None
        return missing[0]

    def check_records(self) -> None:
        """Every recorded chunk of every array has its object, and every array's metadata parses (a listing
        and the small metadata files, no chunk decoded)."""
        if self.format_version == 1:
            return
        fs, root = _filesystem(self.location, self.storage_options)
        root = root.rstrip("/")
        present = self._listing(refresh=True)
        for split in self.splits:
            done = sorted(self.chunks_done(split))
            for name in [*self._array_names(split), RECORD_ARRAY]:
                meta = f"{split}/{name}/zarr.json"
                try:
                    json.loads(fs.cat_file(f"{root}/{meta}"))
                except (OSError, ValueError) as exc:
                    raise StoreError(f"{self.location}: the metadata {meta} is damaged or missing ({str(exc)[:60]}); "
                                     f"run `hskstore verify {self.location}`, then re-extract the store") from None
                if name == RECORD_ARRAY:
                    continue
                missing = [k for k in done if self._chunk_key(split, name, k) not in present]
                if missing:
                    raise self._missing_error(split, name, missing[0])

    def _read(self, split: str, name: str, start: int, stop: int) -> np.ndarray:
        decoder = self._decoder(split, name)
        direct = decoder is not None and decoder.whole_chunk(start, stop)
        # Zarr reads an absent chunk back as fill values, so its reads check the listing first; the direct
        # path opens the chunk's file and fails on an absent one by itself.
        missing = None if direct else self.missing_chunk(split, name, start, stop)
        if missing is not None:
            raise self._missing_error(split, name, missing)
        try:
            return decoder.read(start, stop) if direct else self._array(split, name)[start:stop]
        except FileNotFoundError:
            raise self._missing_error(split, name, start // self.chunk_rows) from None
        except (ValueError, RuntimeError, OSError, TypeError) as exc:
            chunk = start // self.chunk_rows
            raise StoreError(f"{self.location}: chunk {chunk} of {split}/{name} is damaged ({damage_reason(exc)}); "
                             f"run `hskstore verify {self.location}` to list every bad chunk, then re-extract") from None

    def _missing_error(self, split: str, name: str, chunk: int) -> StoreError:
        return StoreError(f"{self.location}: chunk {chunk} of {split}/{name} is missing although recorded as "
                          f"written; run `hskstore verify {self.location}`, then re-extract the store")

    def _decoder(self, split: str, name: str):
        key = (split, name)
        if key not in self._decoders:
            self._decoders[key] = None
            if not is_remote(self.location) and self.format_version >= 2:
                self._decoders[key] = _ChunkFileDecoder.for_array(self._array(split, name),
                                                                  os.path.join(_local_path(self.location), split, name))
        return self._decoders[key]

    def _records(self, split: str):
        if self.format_version == 1:
            return None
        return _read_records(self.location, split, lambda: self._array(split, RECORD_ARRAY)[:])

    def _v1_chunks_done(self, split: str) -> list[int]:
        return list(self.group[split].attrs["chunks_done"])

    def _root_array(self, name: str):
        return self.group[name][...] if name in self.group.array_keys() else None

    def _tokenizer_names(self) -> list[str]:
        return list(self.group["tokenizer"].array_keys())

    def _tokenizer(self) -> dict[str, bytes]:
        tokenizer = self.group["tokenizer"]
        return {name: tokenizer[name][...].tobytes() for name in tokenizer.array_keys()}

    def nbytes(self) -> dict[str, int]:
        fs, root = _filesystem(self.location, self.storage_options)
        fs.invalidate_cache()  # fsspec caches listings per process: chunks written since would be missed
        sizes: dict[str, int] = {}
        root = root.rstrip("/")
        for path, detail in fs.find(root, detail=True).items():  # one listing, not one per array
            relative = path[len(root):].lstrip("/")  # find() answers in the same protocol-less form as root
            parts = relative.split("/")
            key = "/".join(parts[:2]) if parts[0] in self.splits and len(parts) > 2 else parts[0]
            sizes[key] = sizes.get(key, 0) + int(detail.get("size") or 0)
        out = {f"{split}/{name}": sizes.get(f"{split}/{name}", 0)
               for split in self.splits for name in self._array_names(split)}
        out["static_mask"] = sizes.get("static_mask", 0)
        out["tokenizer"] = sizes.get("tokenizer", 0)
        out["total"] = sum(sizes.values())
        return out


class ZarrWriter(StoreWriter):
    def __init__(self, location, group, storage_options=None):
        super().__init__(location, group.attrs.asdict(), storage_options)
        self.group = group
        self._arrays: dict[tuple[str, str], object] = {}

    @classmethod
    def create(cls, location, attrs, specs: list[ArraySpec], static_mask, tokenizer_files, storage_options=None):
        import zarr

        store = _store(location, storage_options, read_only=False)
        # All root attributes in one metadata write, with layout_complete False until every array exists.
        group = zarr.create_group(store, attributes=attrs, overwrite=True, zarr_format=3)
        for split, rows in attrs["splits"].items():
            sub = group.create_group(split, attributes={"num_examples": rows})
            for spec in specs:
                sub.create_array(spec.name, shape=(rows, *spec.row_shape), dtype=spec.dtype,
                                 chunks=(attrs["chunk_rows"], *spec.row_shape),
                                 compressors=_codecs(spec.codec, np.dtype(spec.dtype).itemsize),
                                 fill_value=spec.fill_value, dimension_names=spec.dims)
            sub.create_array(RECORD_ARRAY, shape=(-(-rows // attrs["chunk_rows"]),), chunks=(1,), dtype="uint8",
                             fill_value=0, compressors=_checksum_only(), dimension_names=("chunk",))
        if static_mask is not None:
            group.create_array("static_mask", data=static_mask, compressors=_checksum_only(),
                               dimension_names=("mask_byte",))
        tokenizer = group.create_group("tokenizer")
        for name, data in tokenizer_files.items():
            tokenizer.create_array(name, data=np.frombuffer(data, dtype=np.uint8), compressors=_codecs("zstd3", 1),
                                   dimension_names=("byte",))
        writer = cls(location, group, storage_options)
        writer.set_attrs({"layout_complete": True})
        return writer

    @classmethod
    def reopen(cls, location, storage_options=None):
        store = _store(location, storage_options, read_only=False)
        group = _open_group(store, location, mode="r+", use_consolidated=False)
        if check_format(group.attrs.asdict(), location) == 1:
            raise StoreError(f"{location} is a partial version-1 store, which this hskstore cannot finish: "
                             "pass --overwrite to extract it anew")
        return cls(location, group, storage_options)

    def _array(self, split, name):
        key = (split, name)
        if key not in self._arrays:
            # Every chunk object is written, all-fill ones too: then a missing object is always an error.
            self._arrays[key] = self.group[split][name].with_config({"write_empty_chunks": True})
        return self._arrays[key]

    def _write_array(self, split, name, start, data):
        self._array(split, name)[start:start + len(data)] = data

    def _record(self, split, index):
        self._array(split, RECORD_ARRAY)[index] = 1

    def chunks_done(self, split):
        records = _read_records(self.location, split, lambda: self._array(split, RECORD_ARRAY)[:])
        return {int(i) for i in np.flatnonzero(records)}

    def _update_attrs(self, changes, drop=()):
        if drop:   # every attribute rewritten in the one metadata write, less the dropped ones
            self.group.attrs.put({k: v for k, v in (self.group.attrs.asdict() | changes).items() if k not in drop})
        else:
            self.group.attrs.update(changes)
        _consolidate(self.group.store)


class ZarrBackend(Backend):
    """Zarr v3: any location no other backend claims (a directory, `file://`, or any fsspec URL)."""

    name = "zarr"
    description = "a Zarr store"
    parallel_writers = True   # one object per chunk and per chunk record: disjoint writers never meet

    def claims(self, url):
        return True

    def exists(self, location):
        return zarr_exists(location.url, location.storage_options)

    def read_attrs(self, location):
        return zarr_read_attrs(location.url, location.storage_options)

    def open(self, location):
        return ZarrStore(location.url, location.storage_options)

    def create(self, location, attrs, specs, static_mask, tokenizer_files):
        return ZarrWriter.create(location.url, attrs, specs, static_mask, tokenizer_files, location.storage_options)

    def reopen(self, location):
        return ZarrWriter.reopen(location.url, location.storage_options)

    def delete(self, location):
        zarr_delete(location.url, location.storage_options)

    def sibling(self, url, tag):
        return f"{url.rstrip('/')}.{tag}"

    def filesystem(self, location):
        return _filesystem(location.url, location.storage_options)


BACKEND = ZarrBackend()
