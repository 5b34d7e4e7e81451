"""Where a store is: a URL (or local path) and the fsspec options that reach it, as one value.

The store API accepts a `StoreLocation` wherever it accepts `(location, storage_options)`; a plain
string or path plus `storage_options` still works, and is turned into one here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["StoreLocation", "is_remote", "local_path", "normalize_location"]


def is_remote(url: str) -> bool:
    """A URL fsspec reaches over a network or in memory (`s3://`, `gs://`, `memory://`); `file://` is local."""
    return "://" in url and not url.startswith("file://")


def local_path(url: str) -> str:
    """The filesystem path of a local location (`file://` stripped)."""
    return url[len("file://"):] if url.startswith("file://") else url


@dataclass(frozen=True)
class StoreLocation:
    url: str                    # a directory, an .h5 file, or a URL (s3://bucket/x.zarr, memory://..., file://...)
    storage_options: dict = field(default_factory=dict, hash=False)   # fsspec options: endpoint_url, key, ...

    def __post_init__(self):
        if not isinstance(self.url, (str, os.PathLike)) or not str(self.url):
            raise TypeError(f"a store location is a path or URL, got {self.url!r}")
        object.__setattr__(self, "url", str(self.url))
        object.__setattr__(self, "storage_options", dict(self.storage_options or {}))

    @classmethod
    def of(cls, location, storage_options: dict | None = None) -> "StoreLocation":
        """A location from a StoreLocation, or from a path or URL and its storage options (the old call form)."""
        if isinstance(location, StoreLocation):
            if storage_options and dict(storage_options) != location.storage_options:
                raise TypeError(f"{location.url}: storage options given twice (in the StoreLocation and as "
                                "storage_options); pass them once")
            return location
        return cls(str(location), dict(storage_options or {}))

    def __str__(self) -> str:   # messages and recorded provenance name the URL, never the credentials
        return self.url

    @property
    def remote(self) -> bool:
        return is_remote(self.url)

    @property
    def path(self) -> str:
        """The local path (`file://` stripped); for a remote location, the URL itself."""
        return self.url if self.remote else local_path(self.url)

    @property
    def backend(self):
        """The backend that claims this location (`registry.backend_of`)."""
        from .registry import backend_of

        return backend_of(self.url)

    def beside(self, url: str) -> "StoreLocation":
        """Another location reached with the same options (a staging place, a lock file)."""
        return StoreLocation(url, self.storage_options)


def normalize_location(location) -> str:
    """Local paths made absolute (a store's provenance must hold from any directory); URLs kept as given."""
    url = location.url if isinstance(location, StoreLocation) else str(location)
    if is_remote(url):
        return url.rstrip("/")
    return os.path.abspath(local_path(url))
