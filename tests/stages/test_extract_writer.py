"""Extraction's host side: each chunk assembled in arrays made once, and written by a pool of threads."""

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hskstore.method.compression import Compression
from hskstore.stages import extract as extract_module
from hskstore.stages.extract import _ChunkWriter, _teacher_chunk, batch_bounds, writer_threads

D, N, K, WIDTH, LABELS, T = 2, 3, 4, 32, 3, 12


class _FakeSelector:
    """A teacher whose outputs are a function of each row's token ids, so row order can be checked."""

    def run(self, model, input_ids, attention_mask, token_type_ids):
        key = input_ids[:, :1].float()                                  # (B, 1): the row's first token
        mask = (torch.arange(WIDTH)[None, None, None, :] + key[:, :, None, None].long()) % 3 == 0
        selection = SimpleNamespace(values=key[:, :, None, None].expand(-1, D, N, K) * torch.ones(D, N, K),
                                    positions=key.long().expand(-1, D * N).reshape(-1, D, N),
                                    mask=mask.expand(-1, D, N, WIDTH))
        return SimpleNamespace(logits=key.expand(-1, LABELS)), selection


def _encoded(rows, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, T + 1, rows).astype(np.int16)
    ids = np.zeros((rows, T), np.int64)
    ids[:, 0] = np.arange(rows)
    return {"input_ids": ids, "attention_mask": (np.arange(T) < lengths[:, None]).astype(np.int64),
            "token_type_ids": np.zeros((rows, T), np.int64), "lengths": lengths, "labels": np.zeros(rows, np.int64)}


def _chunk(rows=40, batch_size=7):
    encoded = _encoded(rows)
    return encoded, _teacher_chunk(None, _FakeSelector(), encoded, np.arange(rows), (batch_size, None),
                                   torch.device("cpu"), Compression(width_strategy="mag"))


def test_each_row_of_a_chunk_holds_its_own_examples_outputs_whatever_the_length_sort():
    encoded, arrays = _chunk()
    rows = np.arange(40)
    np.testing.assert_array_equal(arrays["logits"][:, 0], rows)
    np.testing.assert_array_equal(arrays["positions"][:, 0, 0], rows)
    np.testing.assert_array_equal(arrays["values"][:, 1, 2, 3], rows.astype(np.float16))
    assert arrays["masks"].shape == (40, D, N, WIDTH // 8)
    np.testing.assert_array_equal(arrays["lengths"], encoded["lengths"])


def test_a_chunk_is_filled_batch_by_batch_without_concatenating_or_reordering_copies(monkeypatch):
    def no_cat(*args, **kwargs):
        raise AssertionError("torch.cat: the batches of a chunk were gathered and concatenated")

    monkeypatch.setattr(torch, "cat", no_cat)
    made = []
    real_empty = np.empty

    def counting_empty(shape, *args, **kwargs):
        made.append(shape)
        return real_empty(shape, *args, **kwargs)

    monkeypatch.setattr(extract_module.np, "empty", counting_empty)
    _chunk(rows=40, batch_size=7)
    # One chunk-sized array per HSK array (logits, positions, values, masks), however many batches (6).
    assert len(batch_bounds(np.full(40, 5), 7, None)) == 6
    assert len([shape for shape in made if isinstance(shape, tuple) and shape[:1] == (40,)]) == 4


class _RecordingWriter:
    def __init__(self, fail_on=None):
        self.chunks, self.threads, self.fail_on = {}, set(), fail_on
        self.lock = threading.Lock()

    def write_chunk(self, split, index, arrays):
        if index == self.fail_on:
            raise OSError("disk full")
        with self.lock:
            self.chunks[(split, index)] = arrays
            self.threads.add(threading.current_thread().name)


def test_the_writer_pool_writes_every_chunk_once_and_uses_its_threads():
    writer = _RecordingWriter()
    pool = _ChunkWriter(writer, threads=3)
    for k in range(12):
        pool.put("train", k, {"x": np.full(3, k)})
    pool.close()
    assert sorted(writer.chunks) == [("train", k) for k in range(12)]
    assert all(writer.chunks[("train", k)]["x"][0] == k for k in range(12))
    assert all(not t.is_alive() for t in pool.threads) and len(pool.threads) == 3


def test_a_write_failing_in_one_thread_is_raised_by_close():
    pool = _ChunkWriter(_RecordingWriter(fail_on=2), threads=2)
    for k in range(5):
        pool.put("train", k, {})
    with pytest.raises(OSError, match="disk full"):
        pool.close()


def test_an_hdf5_store_takes_one_writer_thread_and_zarr_one_per_core_unless_told():
    assert writer_threads(None, parallel_writers=False) == 1
    assert writer_threads(4, parallel_writers=False) == 1
    assert writer_threads(3, parallel_writers=True) == 3
    assert writer_threads(None, parallel_writers=True) >= 1


def test_extract_refuses_an_unknown_mask_codec():
    from hskstore.errors import ConfigError
    from hskstore.stages.extract import ExtractConfig

    with pytest.raises(ConfigError, match="mask_codec must be one of zstd1, zstd3, zstd19"):
        ExtractConfig(teacher="t", task=None, output="o", mask_codec="gzip")
