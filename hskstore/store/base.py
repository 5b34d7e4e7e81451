"""The store interface: a `Backend` that owns locations, a `StoreWriter` that commits whole chunks and a
`Store` that reads them.

Backends (`_zarr.py`, `_hdf5.py`) implement a handful of primitives; the rules every backend keeps are
written once here: arrays are created at their final size, a chunk is written whole and then recorded
(so a rerun resumes at the first unrecorded chunk and a missing chunk is an error, never fill values),
`complete` is set last, and root attributes are validated against the schema on open.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ..method.compression import Compression, ResolvedCompression
from ..errors import StoreError
from .format import TOKENIZER_FILE_NAMES, ArraySpec, rerun_hint

__all__ = ["Backend", "StoreWriter", "Store", "SplitReader", "damage_reason"]


def damage_reason(exc: BaseException) -> str:
    """A short reason for a failed chunk read, for the one-line error (backends word checksums differently)."""
    text = str(exc)
    if any(word in text.lower() for word in ("checksum", "fletcher", "filter returned failure")):
        return "checksum mismatch"
    return text.split(".")[0][:80]


class Backend(ABC):
    """A store backend: the locations it claims, and how it opens, creates, reopens and deletes a store there.

    A backend is one module (`_zarr.py`, `_hdf5.py`) holding its Store, its StoreWriter and an instance of
    a Backend subclass named `BACKEND`, plus one entry in `registry.ENTRIES`. Methods take a
    `StoreLocation` (URL plus storage options).
    """

    name: str = ""                  # "zarr", "hdf5": what `backend_for` answers
    description: str = ""           # for messages: "a Zarr store", "an HDF5 file"
    parallel_writers: bool = True   # several processes may write disjoint chunks at once (torchrun extraction)

    @abstractmethod
    def claims(self, url: str) -> bool:
        """Whether a location is this backend's (asked in registry order: the first that claims it owns it)."""

    @abstractmethod
    def exists(self, location) -> bool:
        """Anything at all at the location: a store, a half-made one, or some other file."""

    @abstractmethod
    def read_attrs(self, location) -> dict | None:
        """The root attributes of whatever store-like object is there, or None when there is none."""

    @abstractmethod
    def open(self, location) -> "Store":
        """Open a store for reading (the caller has checked its state)."""

    @abstractmethod
    def create(self, location, attrs: dict, specs: list[ArraySpec], static_mask: np.ndarray | None,
               tokenizer_files: dict[str, bytes]) -> "StoreWriter":
        """Make a new store's layout and return its writer (nothing may be there)."""

    @abstractmethod
    def reopen(self, location) -> "StoreWriter":
        """Open a partial store to write its remaining chunks."""

    @abstractmethod
    def delete(self, location) -> None:
        """Remove what is there (the caller has checked it is an hskstore store)."""

    @abstractmethod
    def sibling(self, url: str, tag: str) -> str:
        """A location beside `url` for this backend, named by `tag` ("overwrite": where a replacement is
        built; "old": where the replaced store waits during the swap)."""

    @abstractmethod
    def filesystem(self, location) -> tuple:
        """(fsspec filesystem, path) that reach the location; lock files beside a store use it."""

    def writable_directory(self, location) -> str | None:
        """The local directory a new store there is written into, checked before slow work; None when remote."""
        return None if location.remote else location.path


class SplitReader:
    """One split of a store: whole-chunk reads (row-by-row reads are ~150 rows/s: never do that)."""

    def __init__(self, store: "Store", name: str):
        self.store = store
        self.name = name
        self.chunk_rows = store.chunk_rows
        self.num_examples: int = int(store.attrs["splits"][name])
        self.num_chunks: int = -(-self.num_examples // self.chunk_rows)
        self.array_names: tuple[str, ...] = tuple(sorted(store._array_names(name)))
        self._done: set[int] | None = None

    def __len__(self) -> int:
        return self.num_examples

    def chunk_bounds(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_rows
        return start, min(start + self.chunk_rows, self.num_examples)

    def chunks_done(self) -> set[int]:
        return self.store.chunks_done(self.name)

    def read_chunk(self, index: int, names=None) -> dict[str, np.ndarray]:
        start, stop = self.chunk_bounds(index)
        return self.read_rows(start, stop, names)

    def read_rows(self, start: int, stop: int, names=None) -> dict[str, np.ndarray]:
        names = tuple(names or self.array_names)
        unknown = [n for n in names if n not in self.array_names]
        if unknown:
            raise StoreError(f"{self.store.location} split {self.name!r} has no array {unknown[0]!r}; "
                             f"it has {list(self.array_names)}")
        if not self.store.complete and stop > start:
            self._check_written(range(start // self.chunk_rows, (stop - 1) // self.chunk_rows + 1))
        return {name: self.store._read(self.name, name, start, stop) for name in names}

    def _check_written(self, chunks) -> None:
        """An unwritten chunk of an incomplete store is an error, never fill values read as data."""
        for refresh in (False, True):   # the writer may have recorded more since the last look
            if self._done is None or refresh:
                self._done = self.store.chunks_done(self.name)
            missing = [k for k in chunks if k not in self._done]
            if not missing:
                return
        raise StoreError(f"{self.store.location}: chunk {missing[0]} of split {self.name!r} has not been written yet "
                         f"(the store is incomplete); {rerun_hint(self.store.attrs)}")


class Store(ABC):
    """A store opened for reading. Subclasses read; this class interprets the attributes."""

    backend: str = ""

    def __init__(self, location: str, attrs: dict, storage_options: dict | None = None):
        self.location = location
        self.storage_options = dict(storage_options or {})
        self.attrs = attrs
        self.format_version: int = attrs["format_version"]
        self.compression = Compression.from_dict(attrs["compression"])
        self.resolved = ResolvedCompression(**attrs["resolved"])
        self.teacher: dict = attrs["teacher"]
        self.task: dict = attrs["task"]
        self.chunk_rows: int = attrs["chunk_rows"]

    # -- what every backend provides
    @abstractmethod
    def _array_names(self, split: str) -> list[str]:
        """Per-example arrays of a split (records excluded)."""

    @abstractmethod
    def _read(self, split: str, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of one array."""

    @abstractmethod
    def _records(self, split: str) -> np.ndarray | None:
        """The split's chunk records (uint8 per chunk), or None for a version-1 store."""

    @abstractmethod
    def _root_array(self, name: str) -> np.ndarray | None:
        """A root-level array (static_mask), or None."""

    @abstractmethod
    def _tokenizer(self) -> dict[str, bytes]:
        """Tokenizer file name -> bytes, as stored."""

    @abstractmethod
    def nbytes(self) -> dict[str, int]:
        """Bytes on disk: "<split>/<array>" for every array, plus "static_mask", "tokenizer" and "total"."""

    def check_records(self) -> None:
        """Cheap structural check (`info`): every recorded chunk is present and every metadata parses.

        Raises:
            StoreError: a recorded chunk absent, or metadata that does not parse; the message points to verify.
        """

    def close(self) -> None:
        """Release file handles (HDF5); a no-op where there are none."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- interpreted
    @property
    def uuid(self) -> str | None:
        return self.attrs.get("uuid")

    @property
    def complete(self) -> bool:
        return self.attrs.get("complete") is True

    @property
    def splits(self) -> list[str]:
        return list(self.attrs["splits"])

    @property
    def num_labels(self) -> int:
        return int(self.attrs["num_labels"])

    def split(self, name: str) -> SplitReader:
        if name not in self.attrs["splits"]:
            raise StoreError(f"{self.location} has no split {name!r}; it has {self.splits}")
        return SplitReader(self, name)

    def chunks_done(self, split: str) -> set[int]:
        """Chunks of a split whose every array is written."""
        records = self._records(split)
        if records is None:  # version 1 kept the list in the split group's attributes
            return set(self._v1_chunks_done(split))
        return {int(i) for i in np.flatnonzero(records)}

    def _v1_chunks_done(self, split: str) -> list[int]:
        raise StoreError(f"{self.location} is a version-1 store, which only the Zarr backend reads")

    def _checked(self, part: str, read):
        """Read a small root array through its checksum: any decode failure is damage, one line naming it."""
        try:
            return read()
        except StoreError:
            raise
        except (ValueError, RuntimeError, OSError, TypeError, KeyError) as exc:
            raise StoreError(f"{self.location}: the {part} is damaged ({damage_reason(exc)}); "
                             f"run `hskstore verify {self.location}`, then re-extract the store") from None

    def static_mask_packed(self) -> np.ndarray | None:
        """The static width mask as stored (bitpacked uint8, checksum checked), or None."""
        packed = self._checked("static_mask", lambda: self._root_array("static_mask"))
        expected = -(-self.resolved.hidden_size // 8)
        if packed is not None and packed.shape != (expected,):
            raise StoreError(f"{self.location}: the static_mask is damaged (shape {tuple(packed.shape)}, expected "
                             f"({expected},)); run `hskstore verify {self.location}`, then re-extract the store")
        return packed

    def static_mask(self) -> np.ndarray | None:
        """(d,) bool static width mask, or None when masks are per vector or absent."""
        packed = self.static_mask_packed()
        if packed is None:
            return None
        return np.unpackbits(packed, count=self.resolved.hidden_size, bitorder="little").astype(bool)

    def _tokenizer_names(self) -> list[str]:
        """The tokenizer entries' names (no data read); backends answer from their listing."""
        return list(self._tokenizer())

    def check_tokenizer_names(self, names=None) -> None:
        """Every tokenizer entry is one of the tokenizer files `save_pretrained` writes (TOKENIZER_FILE_NAMES),
        checked when the store is opened, before anything trains: a crafted store cannot have a student
        directory receive `model.safetensors`, `hskstore_teacher.json` or a path.

        Raises:
            StoreError: the first entry that is not a tokenizer file name.
        """
        names = list(self._checked("tokenizer", self._tokenizer_names) if names is None else names)
        bad = [n for n in names if n not in TOKENIZER_FILE_NAMES]
        if bad:
            raise StoreError(f"{self.location} holds a tokenizer entry {bad[0]!r} that is not a tokenizer file name "
                             f"(one of {sorted(TOKENIZER_FILE_NAMES)}): refusing to read it; re-extract the store")

    def tokenizer_files(self) -> dict[str, bytes]:
        """Tokenizer file name -> bytes, each read through its checksum."""
        return self._checked("tokenizer", self._tokenizer)

    def save_tokenizer(self, directory) -> Path:
        """Write the stored tokenizer files, under the tokenizer's own file names only.

        Raises:
            StoreError: an entry named like anything else (`model.safetensors`, `../x`): a crafted store.
        """
        files = self.tokenizer_files()
        self.check_tokenizer_names(files)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (directory / name).write_bytes(data)
        return directory


class StoreWriter(ABC):
    """Creates a store (or reopens a partial one) and commits whole chunks, each recorded once written."""

    def __init__(self, location: str, attrs: dict, storage_options: dict | None = None):
        self.location = location
        self.attrs = attrs
        self.storage_options = dict(storage_options or {})
        self.chunk_rows: int = attrs["chunk_rows"]

    # -- what every backend provides
    @classmethod
    @abstractmethod
    def create(cls, location: str, attrs: dict, specs: list[ArraySpec], static_mask: np.ndarray | None,
               tokenizer_files: dict[str, bytes], storage_options: dict | None = None) -> "StoreWriter":
        """Make the layout: root attributes (one write), every array at final size, then layout_complete."""

    @classmethod
    @abstractmethod
    def reopen(cls, location: str, storage_options: dict | None = None) -> "StoreWriter":
        """Open a partial store of this format version to write its remaining chunks."""

    @abstractmethod
    def _write_array(self, split: str, name: str, start: int, data: np.ndarray) -> None:
        ...

    @abstractmethod
    def _record(self, split: str, index: int) -> None:
        """Mark chunk `index` of `split` as written (each chunk's record is its own object: writers never race)."""

    @abstractmethod
    def _update_attrs(self, changes: dict, drop: tuple[str, ...] = ()) -> None:
        """One metadata write of the root attributes: `changes` set, the attributes named in `drop` removed."""

    @abstractmethod
    def chunks_done(self, split: str) -> set[int]:
        ...

    def close(self) -> None:
        """Flush and release handles."""

    def set_attrs(self, changes: dict, drop: tuple[str, ...] = ()) -> None:
        """Change root attributes on disk (one metadata write) and in this writer's copy; `drop` removes some."""
        drop = tuple(name for name in drop if name in self.attrs)
        if drop:
            self._update_attrs(changes, drop)
        else:
            self._update_attrs(changes)
        self.attrs.update(changes)
        for name in drop:
            self.attrs.pop(name)

    # -- the rules
    def write_chunk(self, split: str, index: int, arrays: dict[str, np.ndarray]) -> None:
        """Write one whole chunk of every array of a split, then record it as done."""
        start = index * self.chunk_rows
        for name, data in arrays.items():
            self._write_array(split, name, start, data)
        self._record(split, index)

    def missing_chunks(self) -> dict[str, list[int]]:
        out = {}
        for split, rows in self.attrs["splits"].items():
            done = self.chunks_done(split)
            out[split] = [k for k in range(-(-rows // self.chunk_rows)) if k not in done]
        return out

    def mark_complete(self, summary: dict | None) -> None:
        """Set `complete` after checking every chunk of every split is recorded (and drop `writing` in the
        same write: it names the command only while the store is incomplete)."""
        missing = {s: m for s, m in self.missing_chunks().items() if m}
        if missing:
            raise StoreError(f"{self.location} cannot be marked complete: chunks not written {missing}")
        self.set_attrs({"complete": True, "summary": summary}, drop=("writing",))
