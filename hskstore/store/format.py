"""The store format, backend-neutral: version, arrays, codecs, root attributes, bit layout, sizes.

Everything a reader must agree on with a writer lives here, so the Zarr and HDF5 backends (and any
outside reader following `docs/store-format.md`) share one definition.
"""

from __future__ import annotations

import datetime as _dt
import uuid as _uuid
from dataclasses import dataclass

import numpy as np

from ..errors import StoreError
from ..method.bits import BIT_ORDER, pack_bits, round_mantissa, unpack_bits, unpack_bits_numpy  # noqa: F401 (the format's bit layout)
from ..method.quantize import ValueFormat

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "QUANTIZED_VERSION",
    "READABLE_VERSIONS",
    "SCALES_ARRAY",
    "value_format_of",
    "version_for",
    "BIT_ORDER",
    "RECORD_ARRAY",
    "CODECS",
    "MASK_CODECS",
    "check_mask_codec",
    "mask_codec_of",
    "ArraySpec",
    "array_specs",
    "root_attributes",
    "validate_root",
    "pack_bits",
    "unpack_bits",
    "unpack_bits_numpy",
    "round_mantissa",
    "raw_hsk_bytes",
    "TOKENIZER_FILE_NAMES",
    "WRITERS",
    "rerun_hint",
]

FORMAT_NAME = "hskstore"
FORMAT_VERSION = 2               # float16 values: the bytes every store had before quantized values
QUANTIZED_VERSION = 3            # int8/int4/int4-log values plus `value_scales`: a reader that predates them refuses the store
READABLE_VERSIONS = (1, 2, 3)    # version 1 (no chunk records, no checksums) opens read-only
SCALES_ARRAY = "value_scales"    # (D, n, 1) float16 per split in a version-3 store: one scale per kept vector
RECORD_ARRAY = "chunks_written"  # per split, one uint8 per chunk, 1 once every array of that chunk is written

# Codecs by name. Every chunk also carries a CRC-32C (Zarr) or Fletcher-32 (HDF5) checksum, so a flipped
# byte is an error on read, never a silently different number.
CODECS = {
    # Byte shuffle with a large block: the best lossless choice for float16 activations (docs/benchmarks.md).
    "blosc-zstd1-byteshuffle": {"zarr": "blosc(zstd, clevel=1, shuffle, blocksize=1MiB) + crc32c",
                                "hdf5": "shuffle + gzip(1) + fletcher32"},
    "zstd3": {"zarr": "zstd(3) + crc32c", "hdf5": "gzip(4) + fletcher32"},
    # Bitpacked masks are written with level 1 by default (`MASK_CODECS`; --mask-codec of extract, slice and
    # convert): it keeps up with a GPU teacher (benchmarks/host_side.py). zstd's optimal parser (levels 17+)
    # finds what level 1 leaves, 0.59x instead of 0.64x at (3, 8, 0.2), but encodes at 2-3 MB/s a core
    # (docs/storage-notes.md).
    "zstd1": {"zarr": "zstd(1) + crc32c", "hdf5": "gzip(1) + fletcher32"},
    "zstd19": {"zarr": "zstd(19) + crc32c", "hdf5": "gzip(9) + fletcher32"},
}
# The codecs a store's masks may be written with, the default first.
MASK_CODECS = ("zstd1", "zstd3", "zstd19")


def check_mask_codec(mask_codec: str | None) -> None:
    """A one-line StoreError for a mask codec this hskstore does not write (None: keep the source's)."""
    if mask_codec is not None and mask_codec not in MASK_CODECS:
        raise StoreError(f"unknown mask codec {mask_codec!r}: expected one of {', '.join(MASK_CODECS)}")


def mask_codec_of(attrs: dict) -> str:
    """The codec a store's root attributes record for its masks (`codecs.masks`), which a store sliced or
    converted from it keeps; the default for a store without masks."""
    recorded = attrs.get("codecs", {}).get("masks")
    return recorded if recorded in MASK_CODECS else MASK_CODECS[0]


# The files `train` may copy out of a store's tokenizer group: a crafted store must not be able to name
# one `model.safetensors` and overwrite a student's weights.
TOKENIZER_FILE_NAMES = frozenset({
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
    "merges.txt", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja",
})


@dataclass(frozen=True)
class ArraySpec:
    name: str
    row_shape: tuple[int, ...]     # shape of one example's entry
    dtype: str
    codec: str                     # a key of CODECS
    fill_value: int = 0            # what an unwritten chunk would read as (never read: chunks are recorded)
    dims: tuple[str, ...] = ()     # dimension names, "example" first (xarray reads them)


def array_specs(resolved, compression, vocab_size: int, num_labels: int,
                mask_codec: str = MASK_CODECS[0]) -> list[ArraySpec]:
    """Every per-example array of a split, with its dtype, codec and dimension names."""
    if mask_codec not in MASK_CODECS:
        raise ValueError(f"mask_codec must be one of {MASK_CODECS}, got {mask_codec!r}")
    T, D, n, k = resolved.max_length, resolved.depth, resolved.length, resolved.width
    specs = [
        ArraySpec("input_ids", (T,), "uint16" if vocab_size <= 1 << 16 else "int32", "zstd3", dims=("example", "token")),
        ArraySpec("token_type_ids", (T,), "uint8", "zstd3", dims=("example", "token")),
        ArraySpec("lengths", (), "int16", "zstd3", dims=("example",)),
        ArraySpec("labels", (), "float32" if num_labels == 1 else "int64", "zstd3", dims=("example",)),
        ArraySpec("logits", (num_labels,), "float32", "zstd3", dims=("example", "class")),
        ArraySpec("positions", (D, n), "int16", "zstd3", fill_value=-1, dims=("example", "layer", "slot")),
    ]
    fmt = value_format_of(compression, resolved)
    if fmt.quantized:   # codes (int8, or 4-bit two to a byte), then float16 scales per vector
        packed = fmt.dtype == "uint8"
        specs += [ArraySpec("values", (D, n, fmt.stored_width), fmt.dtype, "blosc-zstd1-byteshuffle",
                            dims=("example", "layer", "slot", "kept_byte" if packed else "kept")),
                  ArraySpec(SCALES_ARRAY, (D, n, fmt.scales_per_vector), "float16", "blosc-zstd1-byteshuffle",
                            dims=("example", "layer", "slot", "scale"))]
    else:
        specs.append(ArraySpec("values", (D, n, k), compression.value_dtype, "blosc-zstd1-byteshuffle",
                               dims=("example", "layer", "slot", "kept")))
    if compression.per_vector_masks(resolved):
        specs.append(ArraySpec("masks", (D, n, resolved.mask_bytes), "uint8", mask_codec,
                               dims=("example", "layer", "slot", "mask_byte")))
    return specs


def value_format_of(compression, resolved) -> ValueFormat:
    """How a store with this compression encodes its values (method/quantize.py): one scale per vector."""
    return ValueFormat(getattr(compression, "value_format", "float16"), resolved.width, None)


def version_for(specs: list[ArraySpec]) -> int:
    """The format version a store of these arrays is written as: 3 with quantized values, else 2 (unchanged)."""
    return QUANTIZED_VERSION if any(s.name == SCALES_ARRAY for s in specs) else FORMAT_VERSION


def default_dims(name: str, ndim: int) -> tuple[str, ...]:
    """Dimension names of a stored array (for backends and stores that do not record them)."""
    known = {"input_ids": ("example", "token"), "token_type_ids": ("example", "token"), "lengths": ("example",),
             "labels": ("example",), "logits": ("example", "class"), "positions": ("example", "layer", "slot"),
             "values": ("example", "layer", "slot", "kept"), "masks": ("example", "layer", "slot", "mask_byte"),
             SCALES_ARRAY: ("example", "layer", "slot", "scale")}
    dims = known.get(name, ("example",) + tuple(f"dim_{i}" for i in range(1, ndim)))
    return dims[:ndim]


# ---------------------------------------------------------------------------------------------- root attributes
# name -> (accepted types, required in version 2). Types are checked on open: a crafted or damaged store
# gets a one-line error naming the attribute, not a KeyError or a string "false" read as true.
_DICT, _LIST, _STR, _INT, _BOOL = (dict,), (list,), (str,), (int,), (bool,)
ROOT_SCHEMA: dict[str, tuple[tuple[type, ...], bool]] = {
    "format": (_STR, True),
    "format_version": (_INT, True),
    "uuid": (_STR, True),
    "created_at": (_STR, True),
    "created_by": (_STR, True),
    "layout_complete": (_BOOL, True),
    "complete": (_BOOL, True),
    "chunk_rows": (_INT, True),
    "splits": (_DICT, True),
    "codecs": (_DICT, True),
    "compression": (_DICT, True),
    "resolved": (_DICT, True),
    "amount_hsk": ((int, float), True),
    "teacher": (_DICT, True),
    "teacher_fingerprint": (_DICT, True),
    "task": (_DICT, True),
    "task_ref": (_DICT, True),
    "label_names": (_LIST, True),
    "num_labels": (_INT, True),
    "max_length": (_INT, True),
    "truncated": (_DICT, False),                  # examples per split longer than max_length (absent in older stores)
    "limit": ((int, type(None)), True),
    "data_seed": (_INT, True),
    "numerics": (_STR, True),
    "batch_size": ((int, type(None)), True),      # rows per teacher batch; None when batched by tokens
    "batch_tokens": ((int, type(None)), False),   # padded tokens per teacher batch (absent before batching by tokens)
    "device": (_STR, False),                      # the device that created the store, e.g. "cuda:0 (NVIDIA ..., capability 8.0)"
    "precision": (_STR, False),                   # the teacher's precision: "fp16-autocast" (CUDA) or "fp32"
    "tokenizer": (_DICT, True),
    "summary": ((dict, type(None)), False),
    "derived_from": ((dict, type(None)), False),
    "writing": (_STR, False),     # the command writing the store ("extract", "convert", "slice"), removed at completion
}
# Version 1 wrote no uuid, and layout_complete only once its arrays existed.
_V1_OPTIONAL = {"uuid", "layout_complete", "task_ref", "batch_size", "numerics", "teacher_fingerprint"}


def root_attributes(meta: dict, split_sizes: dict[str, int], chunk_rows: int, specs: list[ArraySpec]) -> dict:
    """The root attributes of a new store, built in one place and written in one metadata write."""
    attrs = dict(meta)
    attrs.update(
        format=FORMAT_NAME,
        format_version=version_for(specs),
        uuid=str(_uuid.uuid4()),
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        layout_complete=False,   # set once every array exists: a store without it is half-created, and remade
        complete=False,          # set once every chunk of every split is recorded
        chunk_rows=chunk_rows,
        splits={s: int(n) for s, n in split_sizes.items()},
        codecs={s.name: s.codec for s in specs},
        summary=None,
    )
    validate_root(attrs, "<new store>")
    return attrs


# The commands that write stores, and what their rerun does to an incomplete one: `extract` resumes at
# the first unrecorded chunk, `convert` and `slice` make their (cheap to remake) output again.
WRITERS = {"extract": "finish it", "convert": "make it anew", "slice": "make it anew"}


def rerun_hint(attrs: dict | None, anew: bool = False) -> str:
    """How to finish an incomplete store (or, `anew`, remake a half-created one), naming the command that
    was writing it (`writing`; stores without it came from `extract`, the only writer before it was recorded)."""
    command = (attrs or {}).get("writing")
    command = command if command in WRITERS else "extract"
    return f"rerun the same `hskstore {command}` command to {'make it anew' if anew else WRITERS[command]}"


def check_format(attrs: dict, location) -> int:
    """The format version of a store's root attributes, after checking it is an hskstore store."""
    if attrs.get("format") != FORMAT_NAME:
        raise StoreError(f"{location} is not an hskstore store (format={attrs.get('format')!r}). "
                         "Create one with `hskstore extract`.")
    version = attrs.get("format_version")
    if version not in READABLE_VERSIONS:
        raise StoreError(f"unsupported hskstore format version {version!r} in {location}: expected one of "
                         f"{list(READABLE_VERSIONS)}. Re-extract with this hskstore, or install the version that wrote it.")
    return version


def check_value_format(attrs: dict, version: int, location) -> None:
    """A version-3 store names a value format this reader decodes, and a version-2 store none (one line)."""
    from ..method.quantize import QUANTIZED_FORMATS

    named = attrs["compression"].get("value_format", "float16")
    if version == QUANTIZED_VERSION and named not in QUANTIZED_FORMATS:
        raise StoreError(f"{location} stores its values as {named!r}, a value format this hskstore cannot decode "
                         f"(it reads {list(QUANTIZED_FORMATS)} in format version {QUANTIZED_VERSION}): install the "
                         "hskstore version that wrote it")
    if version != QUANTIZED_VERSION and named != "float16":
        raise StoreError(f"{location} names value format {named!r} in format version {version}, where only "
                         f"float16 values exist: it was damaged or not written by hskstore; re-extract it")


def validate_root(attrs: dict, location) -> None:
    """Check every root attribute's presence and type against the schema (raises StoreError, one line)."""
    version = check_format(attrs, location)
    problems = []
    for name, (types, required) in ROOT_SCHEMA.items():
        if name not in attrs:
            if required and not (version == 1 and name in _V1_OPTIONAL):
                problems.append(f"{name} is missing")
            continue
        value = attrs[name]
        if isinstance(value, bool) and bool not in types:   # bool is an int in Python: keep them apart
            problems.append(f"{name} should be {'/'.join(t.__name__ for t in types)}, got {value!r}")
        elif not isinstance(value, types):
            problems.append(f"{name} should be {'/'.join(t.__name__ for t in types)}, got {type(value).__name__} {value!r:.40}")
    if not problems:
        for split, rows in attrs["splits"].items():
            if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
                problems.append(f"splits.{split} should be a row count, got {rows!r}")
        if attrs["chunk_rows"] < 1:
            problems.append(f"chunk_rows should be >= 1, got {attrs['chunk_rows']}")
    if not problems:
        check_value_format(attrs, version, location)
    if problems:
        raise StoreError(f"{location} has invalid root attributes ({'; '.join(problems[:4])}): "
                         "it was damaged or not written by hskstore; re-extract it.")


# ---------------------------------------------------------------------------------------------- sizes
def raw_hsk_bytes(resolved, compression, examples: int) -> int:
    """Uncompressed bytes of the stored HSK: values (with their scales), per-vector bitpacked masks, int16 positions."""
    fmt = value_format_of(compression, resolved)
    values = fmt.stored_width + 2 * fmt.scales_per_vector if fmt.quantized else resolved.width * np.dtype(compression.value_dtype).itemsize
    per_slot = (values
                + (resolved.mask_bytes if compression.per_vector_masks(resolved) else 0) + 2)
    return int(examples * resolved.depth * resolved.length * per_slot)
