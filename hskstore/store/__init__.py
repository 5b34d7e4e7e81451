"""The feature store: one interface, two backends (Zarr at any fsspec URL, HDF5 in one file).

`open_store(location)` picks the backend from the location: a name ending in `.h5`/`.hdf5` is HDF5,
anything else (a directory, `file://`, `s3://`, `gs://`, `memory://` ...) is Zarr. Nothing outside this
package walks directories or probes metadata files; `docs/store-format.md` is the spec.
"""

from __future__ import annotations

import os

from ..errors import StoreError
from .base import SplitReader, Store, StoreWriter
from .format import FORMAT_NAME, FORMAT_VERSION, READABLE_VERSIONS, ArraySpec, array_specs, root_attributes, validate_root

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "ArraySpec",
    "array_specs",
    "root_attributes",
    "Store",
    "SplitReader",
    "StoreWriter",
    "open_store",
    "read_attrs",
    "store_state",
    "create_store",
    "reopen_store",
    "delete_store",
    "normalize_location",
    "backend_for",
    "is_remote",
    "staging_location",
    "replace_store",
]


def backend_for(location: str) -> str:
    from ._hdf5 import is_hdf5

    return "hdf5" if is_hdf5(str(location)) else "zarr"


def is_remote(location: str) -> bool:
    from ._zarr import is_remote as remote

    return remote(str(location))


def normalize_location(location) -> str:
    """Local paths made absolute (a store's provenance must hold from any directory); URLs kept as given."""
    location = str(location)
    if is_remote(location):
        return location.rstrip("/")
    if location.startswith("file://"):
        location = location[len("file://"):]
    return os.path.abspath(location)


def _raw_attrs(location: str, storage_options: dict | None) -> dict | None:
    if backend_for(location) == "hdf5":
        from ._hdf5 import hdf5_read_attrs

        return hdf5_read_attrs(location)
    from ._zarr import zarr_read_attrs

    return zarr_read_attrs(location, storage_options)


def _exists(location: str, storage_options: dict | None) -> bool:
    if backend_for(location) == "hdf5":
        from ._hdf5 import _path

        return os.path.exists(_path(location))
    from ._zarr import zarr_exists

    return zarr_exists(location, storage_options)


def store_state(location, storage_options: dict | None = None) -> tuple[str, dict | None]:
    """What is at a location: ("absent" | "foreign" | "half" | "partial" | "complete", root attributes).

    "half" is a store interrupted while its layout was being created (nothing in it to keep); "foreign"
    is anything not written by hskstore, which no command may delete.
    """
    location = str(location)
    if not _exists(location, storage_options):
        return "absent", None
    if not is_remote(location) and os.path.isdir(location) and not os.listdir(location):
        return "absent", None  # an empty directory made for the store (mkdir before extract)
    attrs = _raw_attrs(location, storage_options)
    if attrs is None or attrs.get("format") != FORMAT_NAME:
        return "foreign", attrs
    if attrs.get("layout_complete") is not True and attrs.get("complete") is not True:
        return "half", attrs
    validate_root(attrs, location)
    return ("complete" if attrs.get("complete") is True else "partial"), attrs


def read_attrs(location, storage_options: dict | None = None) -> dict:
    """A store's root attributes: format and version checked, and the schema once its layout is complete."""
    from .format import check_format

    location = str(location)
    attrs = _raw_attrs(location, storage_options) if _exists(location, storage_options) else None
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
    location = str(location)
    state, attrs = store_state(location, storage_options)
    if state == "absent":
        raise StoreError(f"no store at {location}: expected a store written by `hskstore extract`.")
    if state == "foreign":
        from .format import check_format

        check_format(attrs or {}, location)
    if state == "half":
        raise StoreError(f"store {location} was interrupted while its arrays were being created; "
                         "rerun the same `hskstore extract` command to make it anew.")
    if backend_for(location) == "hdf5":
        from ._hdf5 import Hdf5Store

        store = Hdf5Store(location, storage_options)
    else:
        from ._zarr import ZarrStore

        store = ZarrStore(location, storage_options)
    if not store.complete and not allow_incomplete:
        done = {s: f"{len(store.chunks_done(s))}/{store.split(s).num_chunks}" for s in store.splits}
        store.close()
        raise StoreError(f"store {location} is incomplete (chunks written: {done}); "
                         "rerun the same `hskstore extract` command to finish it.")
    return store


def _writer_class(location: str):
    if backend_for(location) == "hdf5":
        from ._hdf5 import Hdf5Writer

        return Hdf5Writer
    from ._zarr import ZarrWriter

    return ZarrWriter


def create_store(location, attrs: dict, specs, static_mask, tokenizer_files: dict[str, bytes],
                 storage_options: dict | None = None) -> StoreWriter:
    """Create a new store's layout and return its writer (any previous store there must be deleted first)."""
    return _writer_class(str(location)).create(str(location), attrs, specs, static_mask, tokenizer_files,
                                               storage_options)


def reopen_store(location, storage_options: dict | None = None) -> StoreWriter:
    return _writer_class(str(location)).reopen(str(location), storage_options)


def delete_store(location, storage_options: dict | None = None) -> None:
    """Delete an hskstore store (refuses anything else: a typo must not delete a user's data)."""
    location = str(location)
    state, _ = store_state(location, storage_options) if _exists(location, storage_options) else ("absent", None)
    if state == "absent":
        return
    if state == "foreign":
        raise StoreError(f"{location} exists and is not an hskstore store: refusing to delete it")
    if backend_for(location) == "hdf5":
        from ._hdf5 import _path

        os.remove(_path(location))
    else:
        from ._zarr import zarr_delete

        zarr_delete(location, storage_options)


def staging_location(location: str) -> str:
    """Where `--overwrite` builds the new store beside the old one (the suffix keeps the backend)."""
    location = str(location).rstrip("/")
    if backend_for(location) == "hdf5":
        stem, dot, suffix = location.rpartition(".")
        return f"{stem}.overwrite.{suffix}"
    return location + ".overwrite"


def replace_store(staging: str, location: str) -> None:
    """Move a complete staged store into place on local disk: the old store goes only now.

    Two renames; a crash between them leaves the old store at `<location>.old` (`x.old.h5`) and the new
    one complete at the staging location, both intact.
    """
    import shutil

    old = staging.replace(".overwrite", ".old")
    if os.path.exists(old):
        shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
    if os.path.exists(location):
        os.rename(location, old)
    os.rename(staging, location)
    if os.path.exists(old):
        shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
