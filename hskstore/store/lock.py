"""One writer per store: a lock file beside the store, created exclusively, naming its holder.

Two `extract` runs on one store would interleave chunk writes and completion; the second gets a one-line
error naming the holder (host, PID, start time) instead. A lock whose holder is gone (same host, PID no
longer alive) is stale and taken over. On object stores exclusive creation is best effort (check,
then write): two runs started within the same second can both pass.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket

from ..errors import StoreError
from .location import StoreLocation

__all__ = ["WriterLock", "lock_location"]


def lock_location(location) -> str:
    return str(location).rstrip("/") + ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WriterLock:
    """Context manager: hold the writer lock of `location` for the duration of a run."""

    def __init__(self, location, storage_options: dict | None = None):
        target = StoreLocation.of(location, storage_options)
        self.location = target.url
        self.path = lock_location(self.location)
        self.remote = target.remote
        self.storage_options = target.storage_options
        self._lock_file = target.beside(self.path)
        self._backend = target.backend   # its filesystem reaches the lock file beside the store
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(),
                       "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        self.held = False

    def _fs(self):
        return self._backend.filesystem(self._lock_file)

    def _read(self) -> dict | None:
        try:
            if self.remote:
                fs, path = self._fs()
                fs.invalidate_cache()
                return json.loads(fs.cat_file(path)) if fs.exists(path) else None
            with open(self.path) as handle:
                return json.loads(handle.read() or "{}")
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def _create(self) -> bool:
        data = json.dumps(self.holder).encode()
        if self.remote:
            fs, path = self._fs()
            fs.invalidate_cache()
            if fs.exists(path):
                return False
            fs.pipe_file(path, data)
            return True
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return True

    def _remove(self) -> None:
        if self.remote:
            fs, path = self._fs()
            if fs.exists(path):
                fs.rm_file(path)
        elif os.path.exists(self.path):
            os.remove(self.path)

    def acquire(self) -> "WriterLock":
        if self._create():
            self.held = True
            return self
        holder = self._read() or {}
        stale = holder.get("host") == self.holder["host"] and isinstance(holder.get("pid"), int) \
            and not _alive(holder["pid"])
        if stale or holder == {}:
            self._remove()  # its writer died (or left an empty file): take over
            if self._create():
                self.held = True
                return self
        raise StoreError(f"{self.location} is being written by another run (host {holder.get('host')}, PID "
                         f"{holder.get('pid')}, since {holder.get('started_at')}); wait for it, or delete "
                         f"{self.path} if that run is gone")

    def release(self) -> None:
        if self.held:
            current = self._read()
            if current is None or current == self.holder:
                self._remove()
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
