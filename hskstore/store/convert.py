"""`hskstore convert`: copy a store to another backend or location, chunk by chunk, losslessly.

Arrays are decoded and re-encoded with the destination backend's filters for the same codec name, so
the values, masks, tokens and every root attribute (uuid included: it is the same store) come out
identical; only the bytes on disk differ.
"""

from __future__ import annotations

from ..errors import StoreError
from . import create_store, delete_store, open_store, store_state
from .format import ArraySpec, default_dims

__all__ = ["convert_store", "specs_of", "prepare_output"]


def specs_of(store) -> list[ArraySpec]:
    """The array specs of an open store, read back from its arrays and attributes."""
    split = store.split(store.splits[0])
    sample = {name: store._read(split.name, name, 0, 0) for name in split.array_names}
    codecs = store.attrs.get("codecs", {})
    fill = {"positions": -1}
    return [ArraySpec(name, tuple(array.shape[1:]), str(array.dtype), codecs.get(name, "zstd3"),
                      fill_value=fill.get(name, 0), dims=default_dims(name, array.ndim))
            for name, array in sample.items()]


def prepare_output(location: str, overwrite: bool, storage_options: dict | None) -> None:
    """Clear the way for a derived store: half-made or partial ones go; a complete one only with overwrite."""
    state, _ = store_state(location, storage_options)
    if state == "foreign":
        raise StoreError(f"{location} exists and is not an hskstore store; choose another output")
    if state == "complete" and not overwrite:
        raise StoreError(f"{location} already holds a complete store; pass --overwrite to replace it")
    if state != "absent":
        delete_store(location, storage_options)  # derived stores are cheap to remake: no resume


def convert_store(src: str, dst: str, *, overwrite: bool = False, src_options: dict | None = None,
                  dst_options: dict | None = None) -> dict:
    """Copy a complete store from `src` to `dst` (Zarr directory/URL <-> HDF5 file). Returns a summary."""
    if str(src) == str(dst):
        raise StoreError("convert needs two different locations")
    with open_store(src, storage_options=src_options) as store:
        prepare_output(dst, overwrite, dst_options)
        attrs = dict(store.attrs)
        if store.format_version == 1:  # written again as version 2, with chunk records and a fresh identity
            from .format import root_attributes

            attrs = root_attributes({k: v for k, v in attrs.items() if k not in ("chunks_done",)},
                                    attrs["splits"], attrs["chunk_rows"], specs_of(store))
            attrs.update({k: store.attrs[k] for k in ("created_at", "created_by") if k in store.attrs})
        final = {"complete": True, "summary": store.attrs.get("summary"), "layout_complete": True}
        writer = create_store(dst, attrs | {"complete": False, "layout_complete": False, "summary": None},
                              specs_of(store), store.static_mask_packed(), store.tokenizer_files(), dst_options)
        try:
            rows = 0
            for name in store.splits:
                reader = store.split(name)
                for k in range(reader.num_chunks):
                    writer.write_chunk(name, k, reader.read_chunk(k))
                rows += reader.num_examples
            writer.set_attrs(final)
        finally:
            writer.close()
    return {"source": str(src), "destination": str(dst), "examples": rows}
