"""Stream a store split into training batches: whole-chunk reads, seeded shuffles, packed masks.

Reading whole chunks and shuffling in memory is the only fast way through a chunked store (single rows
read at ~150/s, docs/storage-notes.md). Each epoch shuffles the chunk order and then rows within a buffer of a
few chunks, seeded by (seed, epoch), so a resumed run sees the same batches. Chunks are dealt
round-robin to (rank, worker) shards, so every example is visited exactly once per epoch. Masks stay
bitpacked until `to_device`, so host memory and transfers stay at the compressed size; there they become
the kept dimensions of each vector, and the values stay k wide: nothing is scattered to full width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import ConfigError
from ..method.quantize import dequantize
from ..method.select import unpack_bits
from ..method.sparse_loss import kept_indices, kept_indices_packed
from . import is_remote, open_store
from .location import StoreLocation

__all__ = ["StoreStream", "DeviceBatch", "Prefetcher", "to_device", "keep_numpy", "TOKEN_ARRAYS", "HSK_ARRAYS"]

TOKEN_ARRAYS = ("input_ids", "token_type_ids", "lengths", "labels")
HSK_ARRAYS = ("positions", "values", "masks", "value_scales")   # value_scales: quantized stores only


class StoreStream(IterableDataset):
    """Batches of one split of a store, as dicts of numpy arrays (use DataLoader(batch_size=None)).

    A batch's arrays are views of its shuffled buffer (a few chunks): copy one to keep it past the
    batch without keeping the whole buffer alive.

    Args:
        arrays: which arrays to read; "logits" and the HSK arrays are skipped when not needed.
        buffer_chunks: rows are shuffled within a buffer of this many chunks.
        rank, world_size: for data parallelism; chunks are split across ranks, then workers.
    """

    def __init__(self, path, split: str, batch_size: int, *, arrays=None, shuffle: bool = True, seed: int = 0,
                 buffer_chunks: int = 2, rank: int = 0, world_size: int = 1, drop_last: bool = False,
                 storage_options: dict | None = None, read_ahead: int | None = None):
        location = StoreLocation.of(path, storage_options)  # a StoreLocation carries its own options
        path, self.storage_options = location.url, dict(location.storage_options)
        with open_store(path, storage_options=self.storage_options) as store:
            reader = store.split(split)
            chunk_rows = store.chunk_rows
            remote = is_remote(str(path))
        self.path = str(path)
        self.split = split
        self.batch_size = batch_size
        available = set(reader.array_names)
        wanted = arrays or reader.array_names
        self.arrays = tuple(name for name in wanted if name in available)
        self.shuffle = shuffle
        self.seed = seed
        self.chunk_rows = chunk_rows
        self.buffer_rows = buffer_chunks * chunk_rows
        # Chunks read ahead in a thread while batches are served: an object store answers in tens of ms.
        self.read_ahead = (4 if remote else 1) if read_ahead is None else read_ahead
        self.rank, self.world_size = rank, world_size
        self.drop_last = drop_last
        self.num_examples = reader.num_examples
        self.num_chunks = reader.num_chunks
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch, read in-process (one worker)."""
        return self.num_batches(num_workers=1)

    def num_batches(self, num_workers: int = 1) -> int:
        """Exact batches of this rank in the current epoch: each (rank, worker) shard ends in its own
        partial batch, so the count depends on how the chunks are dealt, not only on N."""
        workers = max(num_workers, 1)
        plan = self.batch_plan(workers)
        return sum(len(plan[self.rank * workers + worker]) for worker in range(workers))

    def batch_plan(self, num_workers: int = 1) -> list[list[int]]:
        """Batch sizes of every (rank, worker) shard this epoch, shard = rank * workers + worker.

        One process: full batches, then the shard's remainder. Several ranks: every shard yields the
        same number of batches S (the most any shard needs), so no rank waits at an all-reduce for
        a rank that has run out; a shard with fewer rows splits them evenly into S batches (each a
        little smaller), so every example is still seen exactly once per epoch.
        """
        workers = max(num_workers, 1)
        shards = self.world_size * workers
        rows = [sum(self._chunk_rows(c) for c in self._shard_chunks(shard, shards)) for shard in range(shards)]
        b = self.batch_size
        natural = [r // b if self.drop_last else -(-r // b) for r in rows]
        if self.world_size == 1:
            return [[b] * (r // b) + ([r % b] if r % b and not self.drop_last else []) for r in rows]
        steps = min(natural) if self.drop_last else max(natural)
        if steps == 0 or min(rows) < steps:
            raise ConfigError(f"split {self.split!r} has {self.num_chunks} chunk(s) of {self.chunk_rows} rows for "
                              f"{shards} rank x worker shard(s) with batches of {b}: too few rows per shard "
                              f"{rows} to give every rank the same number of batches; use fewer processes or "
                              "workers, a smaller batch, or extract with a smaller --chunk-rows")
        plan = []
        for r, n in zip(rows, natural):
            if self.drop_last:
                plan.append([b] * steps)
            elif n == steps:
                plan.append([b] * (r // b) + ([r % b] if r % b else []))
            else:
                q, extra = divmod(r, steps)
                plan.append([q + 1] * extra + [q] * (steps - extra))
        return plan

    def _chunk_rows(self, chunk: int) -> int:
        return min(self.chunk_rows, self.num_examples - chunk * self.chunk_rows)

    def _shard_chunks(self, shard: int, shards: int) -> list[int]:
        order = np.arange(self.num_chunks)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_chunks)
        return order[shard::shards].tolist()

    def _my_shard(self) -> tuple[int, int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + worker, self.world_size * workers, workers

    def _chunks_read_ahead(self, reader, chunks):
        """Yield each chunk's arrays in order, reading up to `read_ahead` chunks ahead in a thread pool."""
        if self.read_ahead < 1:
            for chunk in chunks:
                yield reader.read_chunk(chunk, self.arrays)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=self.read_ahead, thread_name_prefix="hskstore-read") as pool:
            pending = [pool.submit(reader.read_chunk, c, self.arrays) for c in chunks[:self.read_ahead]]
            for i in range(len(chunks)):
                data = pending.pop(0).result()
                if i + self.read_ahead < len(chunks):
                    pending.append(pool.submit(reader.read_chunk, chunks[i + self.read_ahead], self.arrays))
                yield data

    def __iter__(self):
        # Opened per worker: nothing shared across forks.
        store = open_store(self.path, storage_options=self.storage_options)
        try:
            yield from self._iterate(store.split(self.split))
        finally:
            store.close()

    def _iterate(self, reader):
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, get_worker_info().id if get_worker_info() else 0])
        buffer: dict[str, list[np.ndarray]] = {name: [] for name in self.arrays}
        buffered = 0
        shard, shards, workers = self._my_shard()
        chunks = self._shard_chunks(shard, shards)
        sizes = self.batch_plan(workers)[shard][::-1]  # popped from the end: next batch last
        for i, data in enumerate(self._chunks_read_ahead(reader, chunks)):
            for name in self.arrays:
                buffer[name].append(data[name])
            buffered += len(data[self.arrays[0]])
            last = i == len(chunks) - 1
            if buffered >= self.buffer_rows or last:
                order = rng.permutation(buffered) if self.shuffle else np.arange(buffered)
                batch_sizes, used = [], 0
                while sizes and buffered - used >= sizes[-1]:
                    batch_sizes.append(sizes.pop())
                    used += batch_sizes[-1]
                # One gather per array puts the buffer in batch order; each batch is then a contiguous view of
                # it, not a fancy-indexed copy per array per batch (the same rows in the same order as before).
                rows = {name: parts[0] if len(parts) == 1 else np.concatenate(parts) for name, parts in buffer.items()}
                shuffled = {name: rows[name].take(order[:used], axis=0) for name in self.arrays}
                start = 0
                for size in batch_sizes:
                    yield {name: shuffled[name][start:start + size] for name in self.arrays}
                    start += size
                # Rows that did not fill a batch stay for the next buffer (dropped after the last one).
                rest = order[used:]
                buffer = {name: [rows[name].take(rest, axis=0)] for name in self.arrays}
                buffered = len(rest)


class Prefetcher:
    """Run an iterator in a background thread, `depth` items ahead (zarr decompression releases the GIL).

    In-process prefetching moved ~300k rows/s here against 53-70k rows/s through DataLoader workers
    (docs/storage-notes.md), so it is the default; workers remain an option for slow filesystems. `close()` (or
    leaving a `with` block) stops the thread when a loop ends early.
    """

    _END = object()

    def __init__(self, iterable, depth: int = 2, transform=None):
        import queue
        import threading

        self._transform = transform  # runs in the thread too: pinning and host->device copies off the loop
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fill, args=(iterable,), daemon=True, name="hskstore-prefetch")
        self._thread.start()

    def _put(self, item) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, iterable):
        try:
            for item in iterable:
                if self._transform is not None:
                    item = self._transform(item)
                if not self._put(item):
                    return
        except BaseException as exc:
            self._error = exc
        finally:
            self._put(self._END)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                if self._error is not None:
                    raise self._error
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        while True:  # drain, so a thread blocked on a full queue sees the stop flag
            try:
                self._queue.get_nowait()
            except Exception:
                break
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def keep_numpy(batch):
    """DataLoader collate for batch_size=None: keep numpy (masks stay packed, uint16 ids stay small)."""
    return batch


@dataclass
class DeviceBatch:
    input_ids: torch.Tensor           # (B, T') int64, trimmed to the batch's longest sequence
    attention_mask: torch.Tensor      # (B, T') int64
    token_type_ids: torch.Tensor      # (B, T') int64
    labels: torch.Tensor              # (B,)
    logits: torch.Tensor | None       # (B, C) teacher logits
    positions: torch.Tensor | None    # (B, D, n) int64, -1 empty
    values: torch.Tensor | None       # (B, D, n, k) float32 kept teacher values, ascending dimension order
    kept: torch.Tensor | None         # (B, D, n, k) int64 kept dimensions, (k,) a static mask's, None when k = d


def _put(array: np.ndarray, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A numpy array on `device`: pinned and copied asynchronously to CUDA, shared (no copy) on the CPU."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    elif device.type != "cpu":
        tensor = tensor.to(device)
    return tensor if dtype is None else tensor.to(dtype)


def _device_values(batch: dict[str, np.ndarray], device: torch.device, value_format=None) -> torch.Tensor:
    """The stored values as float32 on the training device: copied at their stored width, widened there.

    int8/int4 codes travel with their scales and are dequantized on the device (`method.quantize`)."""
    if "value_scales" in batch:
        return dequantize(_put(batch["values"], device), _put(batch["value_scales"], device), value_format)
    return _put(batch["values"], device, torch.float32)


def _device_kept(batch: dict[str, np.ndarray], device: torch.device, k: int, hidden_size: int | None,
                 static_kept: torch.Tensor | None) -> torch.Tensor | None:
    """The kept dimensions of a batch: from its packed masks, a static mask's indices, or None (k = d)."""
    if "masks" not in batch:
        return static_kept
    if device.type == "cpu":
        # Straight from the packed bytes, per byte and per kept entry (sparse_loss.kept_indices_packed).
        hidden_size = hidden_size or batch["masks"].shape[-1] * 8
        return torch.from_numpy(kept_indices_packed(batch["masks"], k, hidden_size))
    # An accelerator unpacks and sorts there; the host only copies the packed bytes.
    return kept_indices(unpack_bits(_put(batch["masks"], device), hidden_size), k)


def to_device(batch: dict[str, np.ndarray], device: torch.device, hidden_size: int | None = None,
              static_kept: torch.Tensor | None = None, value_format=None) -> DeviceBatch:
    """Move a numpy batch to the training device: tokens, and the HSK as kept values and their dimensions.

    No full-width (B, D, n, d) target is made: the loss (`method.sparse_loss`) reads the kept entries.

    Args:
        hidden_size: d, the teacher's width (needed to unpack masks whose d is not a multiple of 8).
        static_kept: (k,) int64 kept dimensions of a static width mask, on `device`.
        value_format: a quantized store's `method.quantize.ValueFormat` (its codes decode on the device).
    """
    lengths = batch["lengths"].astype(np.int64)
    width = int(lengths.max())
    input_ids = _put(batch["input_ids"][:, :width].astype(np.int64), device)
    positions_ = torch.arange(width, device=device)
    attention_mask = (positions_[None, :] < _put(lengths, device)[:, None]).long()
    token_types = _put(batch["token_type_ids"][:, :width], device, torch.int64)
    labels = _put(batch["labels"], device)
    logits = _put(batch["logits"], device) if "logits" in batch else None
    positions = values = kept = None
    if "values" in batch:
        positions = _put(batch["positions"], device, torch.int64)
        values = _device_values(batch, device, value_format)
        kept = _device_kept(batch, device, values.shape[-1], hidden_size, static_kept)
    return DeviceBatch(input_ids, attention_mask, token_types, labels, logits, positions, values, kept)
