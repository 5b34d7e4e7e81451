"""`hskstore convert`: copy a store to another backend or location, chunk by chunk, losslessly.

With `value_format` it requantizes instead (float16 -> int8/int4-log/int4, or a quantized store to a coarser
format): a new store derived from the source, written by `slice_store` with every dimension kept (no teacher
needed).

Arrays are decoded and re-encoded with the destination backend's filters for the same codec name, so
the values, masks, tokens and every root attribute (uuid included: it is the same store) come out
identical; only the bytes on disk differ. `mask_codec` re-encodes the masks with another codec (the same
masks decoded; `codecs.masks` records it as extract's --mask-codec does). The copy is written through the
store's writer transaction (`transaction.py`): locked, and under --overwrite built beside the old store and
swapped in at the end.
"""

from __future__ import annotations

import dataclasses

from ..errors import StoreError
from . import open_store
from .format import ArraySpec, check_mask_codec, default_dims
from .location import StoreLocation
from .transaction import StoreTransaction

__all__ = ["convert_store", "specs_of"]


def specs_of(store) -> list[ArraySpec]:
    """The array specs of an open store, read back from its arrays and attributes."""
    split = store.split(store.splits[0])
    sample = {name: store._read(split.name, name, 0, 0) for name in split.array_names}
    codecs = store.attrs.get("codecs", {})
    fill = {"positions": -1}
    packed = {("values", "uint8"): ("example", "layer", "slot", "kept_byte")}   # 4-bit codes, two a byte
    return [ArraySpec(name, tuple(array.shape[1:]), str(array.dtype), codecs.get(name, "zstd3"),
                      fill_value=fill.get(name, 0),
                      dims=packed.get((name, str(array.dtype)), default_dims(name, array.ndim)))
            for name, array in sample.items()]


def convert_store(src, dst, *, overwrite: bool = False, src_options: dict | None = None,
                  dst_options: dict | None = None, value_format: str | None = None,
                  mask_codec: str | None = None) -> dict:
    """Copy a complete store from `src` to `dst` (Zarr directory/URL <-> HDF5 file). Returns a summary.

    `src` and `dst` are paths or URLs (with `src_options`, `dst_options`) or StoreLocations. `value_format`
    (int8, int4-log, int4) other than the store's requantizes its values (see `slicing.plan_slice` for what may be).
    `mask_codec` (format.MASK_CODECS) re-encodes the masks with that codec (None: the source's).
    """
    check_mask_codec(mask_codec)
    src, dst = StoreLocation.of(src, src_options), StoreLocation.of(dst, dst_options)
    if src.url == dst.url:
        raise StoreError("convert needs two different locations")
    if value_format is not None:
        with open_store(src) as store:
            same = store.compression.value_format == value_format
        if not same:
            from .slicing import slice_store

            summary = slice_store(src, dst, overwrite=overwrite, value_format=value_format, mask_codec=mask_codec,
                                  command="convert")
            return {"source": str(src), "destination": str(dst), "examples": sum(summary["examples"].values()),
                    "value_format": value_format}
    transaction = StoreTransaction(dst, command="convert", overwrite=overwrite, option="DST")
    with open_store(src) as store:
        transaction.check()
        attrs = dict(store.attrs)
        specs = specs_of(store)
        if mask_codec is not None and any(s.name == "masks" for s in specs):
            specs = [dataclasses.replace(s, codec=mask_codec) if s.name == "masks" else s for s in specs]
            attrs["codecs"] = {**attrs["codecs"], "masks": mask_codec}
        if store.format_version == 1:  # written again as version 2, with chunk records and a fresh identity
            from .format import root_attributes

            attrs = root_attributes({k: v for k, v in attrs.items() if k not in ("chunks_done",)},
                                    attrs["splits"], attrs["chunk_rows"], specs)
            attrs.update({k: store.attrs[k] for k in ("created_at", "created_by") if k in store.attrs})
        with transaction:
            writer = transaction.open_writer(attrs | {"complete": False, "layout_complete": False, "summary": None},
                                             specs, store.static_mask_packed(), store.tokenizer_files())
            try:
                rows = 0
                for name in store.splits:
                    reader = store.split(name)
                    for k in range(reader.num_chunks):
                        writer.write_chunk(name, k, reader.read_chunk(k))
                    rows += reader.num_examples
                writer.mark_complete(store.attrs.get("summary"))
            finally:
                writer.close()
            transaction.commit()
    return {"source": str(src), "destination": str(dst), "examples": rows,
            "value_format": store.compression.value_format}
