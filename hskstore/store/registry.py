"""The store backends: which one owns a location.

Each backend is one module of this package that defines a `Backend` subclass and an instance of it named
`BACKEND` (what it claims, how it opens, creates, reopens and deletes a store); `ENTRIES` lists those
modules. A location belongs to the first backend, in `ENTRIES` order, that claims it. Adding a backend
is its module, one entry here, and one line in the conformance fixture (tests/store/test_store_backends.py).
"""

from __future__ import annotations

import importlib

from .base import Backend

__all__ = ["ENTRIES", "backends", "backend_of", "backend_named"]

# Asked in this order. Zarr is last: it claims any location (a directory or any fsspec URL).
ENTRIES = ("_hdf5", "_zarr")

_loaded: tuple[Backend, ...] = ()


def backends() -> tuple[Backend, ...]:
    """Every registered backend, in the order they are asked."""
    global _loaded
    if not _loaded:   # imported on first use: `import hskstore.store` stays cheap
        _loaded = tuple(importlib.import_module(f"{__package__}.{entry}").BACKEND for entry in ENTRIES)
    return _loaded


def backend_of(url) -> Backend:
    """The backend that owns a location (a path or URL string)."""
    url = str(url)
    for backend in backends():
        if backend.claims(url):
            return backend
    raise LookupError(f"no store backend claims {url}")   # unreachable while Zarr claims every location


def backend_named(name: str) -> Backend:
    for backend in backends():
        if backend.name == name:
            return backend
    raise LookupError(f"no store backend named {name!r}; there are {[b.name for b in backends()]}")
