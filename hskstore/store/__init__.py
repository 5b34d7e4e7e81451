"""The feature store: one interface, backends that register themselves (Zarr at any fsspec URL, HDF5 in one file).

`open_store(location)` picks the backend from the location (`registry.py`): a name ending in
`.h5`/`.hdf5` is HDF5, anything else (a directory, `file://`, `s3://`, `gs://`, `memory://` ...) is Zarr.
A location is a path or URL plus `storage_options`, or one `StoreLocation` holding both. Writers go
through `transaction.StoreTransaction` (lock, staging, run key, swap). Nothing outside this package walks
directories or probes metadata files; `docs/store-format.md` is the spec.
"""

from __future__ import annotations

import os

from ..errors import StoreError
from .base import Backend, SplitReader, Store, StoreWriter
from .format import (FORMAT_NAME, FORMAT_VERSION, READABLE_VERSIONS, ArraySpec, array_specs, rerun_hint,
                     root_attributes, validate_root)
from .location import StoreLocation, normalize_location
from .registry import backend_of, backends

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "ArraySpec",
    "array_specs",
    "root_attributes",
    "Backend",
    "Store",
    "SplitReader",
    "StoreWriter",
    "StoreLocation",
    "open_store",
    "read_attrs",
    "store_state",
    "create_store",
    "reopen_store",
    "delete_store",
    "normalize_location",
    "backend_for",
    "backend_of",
    "backends",
    "is_remote",
    "staging_location",
    "replace_store",
]


def backend_for(location) -> str:
    """The name of the backend that owns a location ("zarr", "hdf5")."""
    return StoreLocation.of(location).backend.name


def is_remote(location) -> bool:
    return StoreLocation.of(location).remote


def store_state(location, storage_options: dict | None = None) -> tuple[str, dict | None]:
    """What is at a location: ("absent" | "foreign" | "half" | "partial" | "complete", root attributes).

    "half" is a store interrupted while its layout was being created (nothing in it to keep); "foreign"
    is anything not written by hskstore, which no command may delete.
    """
    location = StoreLocation.of(location, storage_options)
    backend = location.backend
    if not backend.exists(location):
        return "absent", None
    if not location.remote and os.path.isdir(location.url) and not os.listdir(location.url):
        return "absent", None  # an empty directory made for the store (mkdir before extract)
    attrs = backend.read_attrs(location)
    if attrs is None or attrs.get("format") != FORMAT_NAME:
        return "foreign", attrs
    if attrs.get("layout_complete") is not True and attrs.get("complete") is not True:
        return "half", attrs
    validate_root(attrs, location)
    return ("complete" if attrs.get("complete") is True else "partial"), attrs


def read_attrs(location, storage_options: dict | None = None) -> dict:
    """A store's root attributes: format and version checked, and the schema once its layout is complete."""
    from .format import check_format

    location = StoreLocation.of(location, storage_options)
    backend = location.backend
    attrs = backend.read_attrs(location) if backend.exists(location) else None
    if attrs is None:
        raise StoreError(f"no store at {location}: expected a store written by `hskstore extract`.")
    check_format(attrs, location)
    if attrs.get("layout_complete") is True or attrs.get("complete") is True:
        validate_root(attrs, location)
    return attrs


def open_store(location, allow_incomplete: bool = False, storage_options: dict | None = None) -> Store:
    """Open a store for reading; checks format, version and attribute types first, then completeness.

    Raises:
        StoreError: missing, not an hskstore store, another format version, damaged attributes, incomplete.
    """
    location = StoreLocation.of(location, storage_options)
    state, attrs = store_state(location)
    if state == "absent":
        raise StoreError(f"no store at {location}: expected a store written by `hskstore extract`.")
    if state == "foreign":
        from .format import check_format

        check_format(attrs or {}, location)
    if state == "half":
        raise StoreError(f"store {location} was interrupted while its arrays were being created; "
                         f"{rerun_hint(attrs, anew=True)}.")
    store = location.backend.open(location)
    try:
        store.check_tokenizer_names()   # before anything trains on, converts or slices a crafted store
    except StoreError:
        store.close()
        raise
    if not store.complete and not allow_incomplete:
        done = {s: f"{len(store.chunks_done(s))}/{store.split(s).num_chunks}" for s in store.splits}
        store.close()
        raise StoreError(f"store {location} is incomplete (chunks written: {done}); {rerun_hint(store.attrs)}.")
    return store


def create_store(location, attrs: dict, specs, static_mask, tokenizer_files: dict[str, bytes],
                 storage_options: dict | None = None) -> StoreWriter:
    """Create a new store's layout and return its writer (any previous store there must be deleted first)."""
    location = StoreLocation.of(location, storage_options)
    return location.backend.create(location, attrs, specs, static_mask, tokenizer_files)


def reopen_store(location, storage_options: dict | None = None) -> StoreWriter:
    location = StoreLocation.of(location, storage_options)
    return location.backend.reopen(location)


def delete_store(location, storage_options: dict | None = None) -> None:
    """Delete an hskstore store (refuses anything else: a typo must not delete a user's data)."""
    location = StoreLocation.of(location, storage_options)
    state, _ = store_state(location)
    if state == "absent":
        return
    if state == "foreign":
        raise StoreError(f"{location} exists and is not an hskstore store: refusing to delete it")
    location.backend.delete(location)


def staging_location(location) -> str:
    """Where `--overwrite` builds the new store beside the old one (the name keeps the backend)."""
    url = str(location)
    return backend_of(url).sibling(url, "overwrite")


def replace_store(staging, location) -> None:
    """Move a complete staged store into place on local disk: the old store goes only now.

    Two renames; a crash between them leaves the old store at `<location>.old` (`x.old.h5`) and the new
    one complete at the staging location, both intact.
    """
    import shutil

    staging, location = StoreLocation.of(staging).path, StoreLocation.of(location).path
    old = backend_of(location).sibling(location, "old")
    if os.path.exists(old):
        shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
    if os.path.exists(location):
        os.rename(location, old)
    os.rename(staging, location)
    if os.path.exists(old):
        shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
