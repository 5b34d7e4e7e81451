"""One writer's transaction on a store: the lock, staging beside an existing store, the run key, the swap.

`extract`, `convert` and `slice` all write through it, so each gets the same safety:

- **one writer**: a lock file beside the store (`lock.py`) for the whole run;
- **new**: nothing at the location (or a half-created store, which is deleted): the layout is created;
- **resume** (`extract`): a partial store whose run key matches this run's is reopened and only its
  unrecorded chunks are written; another run's partial store is refused. `convert` and `slice` do not
  resume (their output is cheap to remake): their own partial output is made anew;
- **overwrite**: on local disk the new store is built beside the old one (`x.zarr.overwrite`,
  `x.overwrite.h5`) and `commit` swaps it in once complete, so a failed or killed run leaves the old
  store intact; on an object store (no rename) the old store is deleted first.

While a store is written its root attribute `writing` names the command, so an incomplete store's
messages name the command to rerun; `mark_complete` removes it.
"""

from __future__ import annotations

import json

from ..errors import StoreError
from ..runtime.preflight import check_writable
from . import create_store, delete_store, reopen_store, replace_store, store_state
from .base import StoreWriter
from .format import WRITERS, rerun_hint
from .location import StoreLocation
from .lock import WriterLock

__all__ = ["StoreTransaction", "RESUME_KEYS", "run_key", "differences"]

# What must match for a partial store to be resumed. The teacher is compared by content (its
# fingerprint), not by path: a teacher re-fine-tuned into the same directory must not finish a store
# whose first chunks came from the old weights.
RESUME_KEYS = ("compression", "resolved", "task", "max_length", "chunk_rows", "splits", "limit", "data_seed",
               "numerics", "batch_size", "batch_tokens", "teacher_fingerprint")


def run_key(attrs: dict, resume: bool = True) -> dict:
    """The root attributes a rerun must share with a partial store to continue it: the command writing
    it (stores from before `writing` was recorded came from `extract`) and, to resume, RESUME_KEYS."""
    key = {"writing": attrs.get("writing") or "extract"}
    if resume:
        key |= {k: attrs.get(k) for k in RESUME_KEYS}
    return json.loads(json.dumps(key))   # tuples as lists, as read back from disk


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Each differing (nested) key, worded `key: store has A, this run B`."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: store has {a!r}, this run {b!r}")
    return diffs


class StoreTransaction:
    """A run that writes one store: `check` up front, hold the lock (`with`), `open_writer`, write chunks,
    `mark_complete` and close the writer, then `commit`.

    Under torchrun, rank 0 holds the lock and opens the writer; the other ranks `check` and
    `reopen_writer` once it exists. All ranks agree on `location` (decided from the target's state,
    which no rank changes before `commit`).
    """

    def __init__(self, location, *, command: str, overwrite: bool = False, resume: bool = False,
                 storage_options: dict | None = None, option: str = "--output"):
        if command not in WRITERS:
            raise ValueError(f"unknown store writer {command!r}; one of {sorted(WRITERS)}")
        self.target = StoreLocation.of(location, storage_options)
        self.backend = self.target.backend
        self.command, self.overwrite, self.resume = command, overwrite, resume
        self.option = option   # how the command names the target, for messages: "--output", "DST"
        self._lock = WriterLock(self.target)
        self._location: StoreLocation | None = None

    # -- before any slow work
    def check_writable(self) -> None:
        """A local target whose directory cannot be written fails now (an object store on its first request)."""
        directory = self.backend.writable_directory(self.target)
        if directory is not None:
            check_writable(directory, self.option)

    def check(self) -> None:
        """Fail on an unusable target: not writable, not an hskstore store, or complete without --overwrite."""
        self.check_writable()
        self._refuse(store_state(self.target)[0])

    def _refuse(self, state: str) -> None:
        if state == "foreign":
            raise StoreError(f"{self.target} exists and is not an hskstore store; choose another {self.option} "
                             "(--overwrite only replaces stores)")
        if state == "complete" and not self.overwrite:
            raise StoreError(f"{self.target} already holds a complete store; pass --overwrite to replace it "
                             f"or choose another {self.option}.")

    # -- the lock
    def __enter__(self) -> "StoreTransaction":
        self._lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    # -- where, and the writer
    @property
    def location(self) -> StoreLocation:
        """Where this run writes: the target, or, to replace a store on local disk, a staging place beside
        it, so the old store is lost only once the new one is complete."""
        if self._location is None:
            state, _ = store_state(self.target)
            staged = self.overwrite and state in ("partial", "complete") and not self.target.remote
            self._location = (self.target.beside(self.backend.sibling(self.target.url, "overwrite")) if staged
                              else self.target)
        return self._location

    @property
    def staged(self) -> bool:
        return self.location.url != self.target.url

    def open_writer(self, attrs: dict, specs, static_mask, tokenizer_files: dict[str, bytes]) -> StoreWriter:
        """The writer of this run: a partial store of the same run reopened (resume), else a new layout
        created with `attrs` (what was there deleted first: a half-created store, an abandoned staging
        attempt, this command's own partial output, or under --overwrite on an object store the old store).

        Raises:
            StoreError: not a store there; a complete one without --overwrite; another run's partial store.
        """
        location, staged = self.location, self.staged
        state, old = store_state(location)
        if state == "foreign" and staged:
            raise StoreError(f"{location} (where --overwrite builds the new store) exists and is not a store; "
                             "remove it")
        if not staged:
            self._refuse(state)
        if state == "partial" and (staged or not self.overwrite):
            diffs = differences(run_key(old, self.resume), run_key(attrs | {"writing": self.command}, self.resume))
            if not diffs and self.resume:
                return reopen_store(location)
            if diffs and not staged and self.resume:
                raise StoreError(f"{location} is a partial store from a different run ({'; '.join(diffs[:3])}); "
                                 "rerun with its original options to resume, or pass --overwrite.")
            if diffs and not staged:   # another command's unfinished store: hours of teacher work, maybe
                raise StoreError(f"{location} is a partial store that `hskstore {run_key(old)['writing']}` was "
                                 f"writing; {rerun_hint(old)}, or pass --overwrite to replace it.")
        if state != "absent":
            delete_store(location)
        return create_store(location, attrs | {"writing": self.command}, specs, static_mask, tokenizer_files)

    def reopen_writer(self) -> StoreWriter:
        """The writer of a store another process of this run created (torchrun ranks other than 0)."""
        return reopen_store(self.location)

    def commit(self) -> None:
        """Once the store is complete (and its writer closed): a staged store replaces the old one."""
        if self.staged:
            replace_store(self.location, self.target)
