"""The writer lock: created whole in one step, stale only when its holder is a dead PID on this host or it is
older than STALE_AFTER_S; an empty or unparsable lock of a live run is never taken over."""

import json
import os
import socket
import time

import pytest

from hskstore.errors import StoreError
from hskstore.store.lock import STALE_AFTER_S, WriterLock


def test_an_empty_lock_file_is_not_stale_while_it_is_young(tmp_path):
    store = tmp_path / "s.zarr"
    (tmp_path / "s.zarr.lock").write_text("")
    with pytest.raises(StoreError, match="does not name its holder"):
        WriterLock(str(store)).acquire()
    (tmp_path / "s.zarr.lock").write_text("{not json")
    with pytest.raises(StoreError, match="does not name its holder"):
        WriterLock(str(store)).acquire()


def test_a_lock_older_than_the_limit_is_stale_whoever_holds_it(tmp_path):
    store, lock = tmp_path / "s.zarr", tmp_path / "s.zarr.lock"
    lock.write_text(json.dumps({"host": "another-host", "pid": 1, "started_at": "2026-01-01T00:00:00+00:00"}))
    with pytest.raises(StoreError, match="another-host"):
        WriterLock(str(store)).acquire()
    old = time.time() - STALE_AFTER_S - 60
    os.utime(lock, (old, old))
    with WriterLock(str(store)) as held:
        assert json.loads(lock.read_text()) == held.holder


def test_a_live_holder_on_this_host_is_refused(tmp_path):
    store, lock = tmp_path / "s.zarr", tmp_path / "s.zarr.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "started_at": "now"}))
    with pytest.raises(StoreError, match=f"PID {os.getppid()}"):
        WriterLock(str(store)).acquire()


def test_the_lock_is_created_whole_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    store = tmp_path / "s.zarr"
    seen = []
    original = os.link

    def link(source, target):   # what another run could see at the lock's name: nothing, then the whole file
        seen.append(os.path.exists(target))
        original(source, target)
        seen.append(json.loads(open(target).read())["pid"])
    monkeypatch.setattr(os, "link", link)
    with WriterLock(str(store)):
        assert seen == [False, os.getpid()]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr.lock"]
    assert list(tmp_path.iterdir()) == []
