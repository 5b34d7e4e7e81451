"""The on-disk store: a Zarr v3 group, written chunk by chunk and read back chunk by chunk.

Writer and reader live side by side so the format is defined in one place; `docs/store-format.md` is
its spec. Arrays are created at their final size first and filled in whole, chunk-aligned row ranges
(partial-chunk writes read, merge and rewrite the chunk: 20x slower, docs/storage-notes.md). Each finished chunk
is recorded in its split group's attributes (zarr's local store writes metadata atomically), so an
interrupted extraction resumes at the first unrecorded chunk. `complete` is set last.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Compression, ResolvedCompression
from .errors import StoreError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ArraySpec",
    "array_specs",
    "StoreWriter",
    "Store",
    "SplitReader",
    "open_store",
    "read_attrs",
]

FORMAT_NAME = "hskstore"
FORMAT_VERSION = 1
HSK_ARRAYS = ("values", "masks", "positions")


@dataclass(frozen=True)
class ArraySpec:
    name: str
    row_shape: tuple[int, ...]     # shape of one example's entry
    dtype: str
    codec: str                     # "blosc-zstd1-byteshuffle" | "zstd3" | "zstd1"
    fill_value: int = 0            # what an unwritten chunk reads as


def _codec(name: str, itemsize: int):
    from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

    if name == "blosc-zstd1-byteshuffle":
        # Byte shuffle with a large block: the best lossless option for float16 activations (docs/storage-notes.md).
        return BloscCodec(cname="zstd", clevel=1, shuffle=BloscShuffle.shuffle, typesize=itemsize, blocksize=1 << 20)
    if name == "zstd3":
        return ZstdCodec(level=3)
    if name == "zstd1":
        return ZstdCodec(level=1)
    raise ValueError(f"unknown codec {name!r}")


def array_specs(resolved: ResolvedCompression, compression: Compression, vocab_size: int, num_labels: int) -> list[ArraySpec]:
    """Every per-example array of a split, with its dtype and codec (the format, in one list)."""
    T, D, n, k = resolved.max_length, resolved.depth, resolved.length, resolved.width
    specs = [
        ArraySpec("input_ids", (T,), "uint16" if vocab_size <= 1 << 16 else "int32", "zstd3"),
        ArraySpec("token_type_ids", (T,), "uint8", "zstd3"),
        ArraySpec("lengths", (), "int16", "zstd3"),
        ArraySpec("labels", (), "float32" if num_labels == 1 else "int64", "zstd3"),
        ArraySpec("logits", (num_labels,), "float32", "zstd3"),
        ArraySpec("positions", (D, n), "int16", "zstd3", fill_value=-1),  # unwritten reads as "empty"
        ArraySpec("values", (D, n, k), compression.value_dtype, "blosc-zstd1-byteshuffle"),
    ]
    if resolved.has_mask and compression.width_strategy == "mag":
        specs.append(ArraySpec("masks", (D, n, resolved.mask_bytes), "uint8", "zstd1"))
    return specs


def _check_format(attrs: dict, path) -> None:
    if attrs.get("format") != FORMAT_NAME:
        raise StoreError(f"{path} is not an hskstore store (format={attrs.get('format')!r}). "
                         "Create one with `hskstore extract`.")
    version = attrs.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(f"unsupported hskstore format version {version} in {path}: expected {FORMAT_VERSION}. "
                         "Re-extract with this hskstore version, or install the version that wrote it.")


class StoreWriter:
    """Creates a store (or reopens a partial one) and commits whole chunks."""

    def __init__(self, group, path):
        self.group = group
        self.path = path

    @classmethod
    def create(cls, path, meta: dict, split_sizes: dict[str, int], specs: list[ArraySpec], chunk_rows: int,
               static_mask: np.ndarray | None, tokenizer_files: dict[str, bytes]) -> "StoreWriter":
        import zarr

        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        attrs = dict(meta, format=FORMAT_NAME, format_version=FORMAT_VERSION, complete=False,
                     chunk_rows=chunk_rows, splits=split_sizes,
                     created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     codecs={s.name: s.codec for s in specs})
        group.attrs.update(attrs)
        for split, rows in split_sizes.items():
            sub = group.create_group(split)
            sub.attrs.update({"num_examples": rows, "num_chunks": -(-rows // chunk_rows), "chunks_done": []})
            for spec in specs:
                itemsize = np.dtype(spec.dtype).itemsize
                sub.create_array(spec.name, shape=(rows, *spec.row_shape), dtype=spec.dtype,
                                 chunks=(chunk_rows, *spec.row_shape), compressors=[_codec(spec.codec, itemsize)],
                                 fill_value=spec.fill_value)
        if static_mask is not None:
            group.create_array("static_mask", data=static_mask, compressors=None)
        tokenizer = group.create_group("tokenizer")
        for name, data in tokenizer_files.items():
            tokenizer.create_array(name, data=np.frombuffer(data, dtype=np.uint8), compressors=[_codec("zstd3", 1)])
        # Set last: a store interrupted while its layout was being created holds no data and is made anew.
        group.attrs["layout_complete"] = True
        return cls(group, path)

    @classmethod
    def reopen(cls, path) -> "StoreWriter":
        import zarr

        return cls(zarr.open_group(str(path), mode="r+", zarr_format=3), path)

    def chunks_done(self, split: str) -> set[int]:
        return set(self.group[split].attrs["chunks_done"])

    def write_chunk(self, split: str, index: int, arrays: dict[str, np.ndarray]) -> None:
        """Write one whole chunk of every array of a split, then record it as done."""
        sub = self.group[split]
        rows = self.group.attrs["chunk_rows"]
        start = index * rows
        for name, data in arrays.items():
            sub[name][start:start + len(data)] = data
        done = sorted(set(sub.attrs["chunks_done"]) | {index})
        sub.attrs["chunks_done"] = done

    def mark_complete(self, summary: dict) -> None:
        self.group.attrs.update({"complete": True, "summary": summary})


class SplitReader:
    """One split of a store: whole-chunk reads (row-by-row reads are ~150 rows/s: never do that)."""

    def __init__(self, group, name: str, chunk_rows: int):
        self.group = group
        self.name = name
        self.chunk_rows = chunk_rows
        self.num_examples: int = group.attrs["num_examples"]
        self.num_chunks: int = group.attrs["num_chunks"]
        self.array_names = tuple(sorted(group.array_keys()))

    def __len__(self) -> int:
        return self.num_examples

    def chunk_bounds(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_rows
        return start, min(start + self.chunk_rows, self.num_examples)

    def read_chunk(self, index: int, names=None) -> dict[str, np.ndarray]:
        start, stop = self.chunk_bounds(index)
        return self.read_rows(start, stop, names)

    def read_rows(self, start: int, stop: int, names=None) -> dict[str, np.ndarray]:
        return {name: self.group[name][start:stop] for name in (names or self.array_names)}


class Store:
    """A complete (or, when asked, partial) store opened for reading."""

    def __init__(self, group, path):
        self.group = group
        self.path = Path(path)
        self.attrs = dict(group.attrs)
        self.compression = Compression.from_dict(self.attrs["compression"])
        self.resolved = ResolvedCompression(**self.attrs["resolved"])
        self.teacher: dict = self.attrs["teacher"]
        self.task: dict = self.attrs["task"]
        self.chunk_rows: int = self.attrs["chunk_rows"]

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    @property
    def splits(self) -> list[str]:
        return list(self.attrs["splits"])

    @property
    def num_labels(self) -> int:
        return int(self.attrs["num_labels"])

    def split(self, name: str) -> SplitReader:
        if name not in self.attrs["splits"]:
            raise StoreError(f"{self.path} has no split {name!r}; it has {self.splits}")
        return SplitReader(self.group[name], name, self.chunk_rows)

    def static_mask(self) -> np.ndarray | None:
        """(d,) bool static width mask, or None when masks are per vector or absent."""
        if "static_mask" not in self.group:
            return None
        packed = self.group["static_mask"][...]
        return np.unpackbits(packed, count=self.resolved.hidden_size, bitorder="little").astype(bool)

    def tokenizer_files(self) -> dict[str, bytes]:
        tokenizer = self.group["tokenizer"]
        return {name: tokenizer[name][...].tobytes() for name in tokenizer.array_keys()}

    def save_tokenizer(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in self.tokenizer_files().items():
            (directory / name).write_bytes(data)
        return directory


def read_attrs(path) -> dict:
    """A store's root attributes after the format and version check, without interpreting them."""
    import zarr

    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "zarr.json")):
        raise StoreError(f"no store at {path}: expected a directory written by `hskstore extract`.")
    attrs = dict(zarr.open_group(str(path), mode="r", zarr_format=3).attrs)
    _check_format(attrs, path)
    return attrs


def open_store(path, allow_incomplete: bool = False) -> Store:
    """Open a store for reading; checks the format and version first, then completeness.

    Raises:
        StoreError: missing, not an hskstore store, another format version, or incomplete.
    """
    import zarr

    attrs = read_attrs(path)
    if not (attrs.get("layout_complete") or attrs.get("complete")):
        raise StoreError(f"store {path} was interrupted while its arrays were being created; "
                         "rerun the same `hskstore extract` command to make it anew.")
    store = Store(zarr.open_group(str(path), mode="r", zarr_format=3), path)
    if not store.complete and not allow_incomplete:
        done = {s: f"{len(store.group[s].attrs['chunks_done'])}/{store.group[s].attrs['num_chunks']}" for s in store.splits}
        raise StoreError(f"store {path} is incomplete (chunks written: {done}); "
                         "rerun the same `hskstore extract` command to finish it.")
    return store
