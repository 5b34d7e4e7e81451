"""One writer per store: a lock file beside the store, created with its content in one step, naming its holder.

Two `extract` runs on one store would interleave chunk writes and completion; the second gets a one-line
error naming the holder (host, PID, start time) instead. The lock's content is written to a temporary
file first and then hard-linked to the lock's name (`link` fails if the name exists), so a lock file is
never seen empty or half-written. A lock is stale, and taken over, when its holder is a dead PID on this
host, or when it is older than `STALE_AFTER_S` (7 days: a run on another host, or a lock file that does
not parse); otherwise the run is refused. On object stores exclusive creation is best effort (check,
then one PUT, which is atomic): two runs started within the same second can both pass.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import time

from ..errors import StoreError
from .location import StoreLocation

__all__ = ["WriterLock", "lock_location", "STALE_AFTER_S"]

STALE_AFTER_S = 7 * 24 * 3600   # a lock older than this is stale whoever holds it (docs/reliability.md)


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
        temporary = f"{self.path}.{self.holder['host']}.{os.getpid()}.tmp"
        with open(temporary, "wb") as handle:   # the whole content first, under a name no other run uses
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, self.path)        # atomic, and fails if the lock exists: never seen empty
        except FileExistsError:
            return False
        finally:
            os.remove(temporary)
        return True

    def _age(self) -> float | None:
        """Seconds since the lock file was written, or None when it is gone."""
        try:
            if self.remote:
                fs, path = self._fs()
                modified = fs.modified(path)
                return time.time() - modified.timestamp()
            return time.time() - os.path.getmtime(self.path)
        except (FileNotFoundError, NotImplementedError, AttributeError):
            return None

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
        holder = self._read()
        if holder is None:   # released between our attempt and the read
            if self._create():
                self.held = True
                return self
            holder = self._read()
        holder = holder if isinstance(holder, dict) else {}
        age = self._age()
        same_host = holder.get("host") == self.holder["host"] and isinstance(holder.get("pid"), int)
        stale = (same_host and not _alive(holder["pid"])) or (age is not None and age > STALE_AFTER_S)
        if stale:
            self._remove()  # its writer died, or the lock is older than any run: take over
            if self._create():
                self.held = True
                return self
        if not holder:
            raise StoreError(f"{self.location} has a lock file {self.path} that does not name its holder (written "
                             "by another tool?); if no run is writing the store, delete it and rerun")
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
