"""Stream a store split into training batches: whole-chunk reads, seeded shuffles, packed masks.

Reading whole chunks and shuffling in memory is the only fast way through a chunked store (single rows
read at ~150/s, docs/storage-notes.md). Each epoch has one global order of its examples that depends only on
(seed, epoch), never on the number of ranks or DataLoader workers: the chunk order is a permutation seeded by
(seed, epoch), and rows are shuffled within a buffer of a few chunks as they are read (`global_order`). The
order is cut into global batches of `batch_size * world_size` examples; rank r takes the r-th contiguous
slice of each, and DataLoader workers take turns at whole global batches. So a run checkpointed after E
examples of an epoch resumes at another world size by starting at position E (`set_epoch(epoch, start=E)`),
and no example is repeated or skipped. Each rank reads the whole chunks that hold any of its rows: with
several ranks, nearly every chunk (docs/scaling.md). Masks stay bitpacked until `to_device`, so host memory
and transfers stay at the compressed size; there they become the kept dimensions of each vector, and the
values stay k wide: nothing is scattered to full width.
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
from ..runtime.device import non_blocking_for
from . import is_remote, open_store
from .location import StoreLocation

__all__ = ["StoreStream", "DeviceBatch", "Prefetcher", "to_device", "keep_numpy", "TOKEN_ARRAYS", "HSK_ARRAYS"]

TOKEN_ARRAYS = ("input_ids", "token_type_ids", "lengths", "labels")
HSK_ARRAYS = ("positions", "values", "masks", "value_scales")   # value_scales: quantized stores only


class StoreStream(IterableDataset):
    """Batches of one split of a store, as dicts of numpy arrays (use DataLoader(batch_size=None)).

    Each batch's arrays are its own: gathered from the buffered rows per batch, as it is served.

    Args:
        batch_size: this rank's batch; a global batch is `batch_size * world_size` examples, so one process
            with batches of B and two with B / 2 step through the same global batches.
        arrays: which arrays to read; "logits" and the HSK arrays are skipped when not needed.
        buffer_chunks: rows are shuffled within a buffer of this many chunks.
        rank, world_size: for data parallelism; each global batch is split across ranks.
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
        self.start = 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Serve `epoch` from position `start` of its global order: the examples a resumed run has not seen."""
        if not 0 <= start <= self.num_examples:
            raise ConfigError(f"cannot start epoch {epoch} of split {self.split!r} at example {start}: it has "
                              f"{self.num_examples}; the checkpoint belongs to another store")
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch, read in-process (one worker)."""
        return self.num_batches(num_workers=1)

    def num_batches(self, num_workers: int = 1) -> int:
        """Exact batches (steps) of every rank from the current start: one per global batch, for any workers."""
        return len(self.global_batches())

    def global_batches(self) -> list[tuple[int, int]]:
        """The (start, stop) positions in the global order of each global batch from `start` on.

        Full global batches, then the remainder (dropped with `drop_last`). A remainder too small to give every
        rank a row joins the batch before it, so every rank takes the same number of steps (none waits at an
        all-reduce) and every example is still seen exactly once.
        """
        b, n, w = self.global_batch_size, self.num_examples, self.world_size
        bounds = [(s, s + b) for s in range(self.start, n - b + 1, b)]
        rest = (n - self.start) % b
        if rest and not self.drop_last:
            if rest >= w:
                bounds.append((n - rest, n))
            elif bounds:
                bounds[-1] = (bounds[-1][0], n)
            else:
                raise ConfigError(f"split {self.split!r} has {n - self.start} example(s) left for {w} processes: "
                                  "too few rows to give every rank a batch; use fewer processes")
        return bounds

    def rank_slice(self, start: int, stop: int, rank: int | None = None) -> tuple[int, int]:
        """Rank `rank`'s contiguous part of a global batch: sizes differ by at most one, larger ones first."""
        rank = self.rank if rank is None else rank
        q, extra = divmod(stop - start, self.world_size)
        first = start + rank * q + min(rank, extra)
        return first, first + q + (rank < extra)

    def batch_plan(self, num_workers: int = 1) -> list[list[int]]:
        """Batch sizes of every (rank, worker) shard this epoch, shard = rank * workers + worker.

        Worker k serves global batches k, k + workers, ...: DataLoader takes from its workers in turn, so
        the batches arrive in the global order. Every rank has the same number of batches (`global_batches`).
        """
        workers = max(num_workers, 1)
        bounds = self.global_batches()
        return [[(lambda a, b: b - a)(*self.rank_slice(*bounds[j], rank)) for j in range(worker, len(bounds), workers)]
                for rank in range(self.world_size) for worker in range(workers)]

    def _chunk_rows(self, chunk: int) -> int:
        return min(self.chunk_rows, self.num_examples - chunk * self.chunk_rows)

    def _chunk_order(self) -> np.ndarray:
        if self.shuffle:
            return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_chunks)
        return np.arange(self.num_chunks)

    def global_order(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This epoch's order of the split's rows, from (seed, epoch) and the global batch size alone.

        Returns (rows, chunks, ready): the row ids in training order; the chunk order; and after reading
        chunks[:i + 1], the first ready[i] positions of the order are known (their rows are read).

        Chunks are read in the seeded order into a buffer; once it holds `buffer_chunks` chunks' rows it is
        shuffled (one generator for the epoch), the global batches that fit are served and the rows left over
        stay for the next buffer. It is what one process read before ranks shared global batches, so a
        single-process run's batches are unchanged.
        """
        rng = np.random.default_rng([self.seed, self.epoch, 0, 0])
        chunks = self._chunk_order()
        b, n = self.global_batch_size, self.num_examples
        sizes = [b] * (n // b) + ([n % b] if n % b and not self.drop_last else [])
        sizes.reverse()  # popped from the end: next batch last
        served, buffer, ready, total = [], np.empty(0, dtype=np.int64), np.empty(len(chunks), dtype=np.int64), 0
        for i, chunk in enumerate(chunks):
            first = int(chunk) * self.chunk_rows
            buffer = np.concatenate([buffer, np.arange(first, first + self._chunk_rows(int(chunk)))])
            if len(buffer) >= self.buffer_rows or i == len(chunks) - 1:
                order = rng.permutation(len(buffer)) if self.shuffle else np.arange(len(buffer))
                used = 0
                while sizes and len(buffer) - used >= sizes[-1]:
                    used += sizes.pop()
                served.append(buffer[order[:used]])
                buffer = buffer[order[used:]]
                total += used
            ready[i] = total
        return (np.concatenate(served) if served else np.empty(0, dtype=np.int64)), chunks, ready

    def _my_batches(self) -> list[tuple[int, int]]:
        """The (start, stop) positions of this (rank, worker)'s batches, in order."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return [self.rank_slice(*bounds) for bounds in self.global_batches()[worker::workers]]

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
        yield from self._iterate(self._reader())

    def _reader(self):
        """The split's reader, opened once per process and kept across epochs.

        Opening a store reads and checks its metadata (~7 ms for Zarr here): per epoch, that was 7 us a row
        of a 1,000-row split. A DataLoader worker is another process and opens its own: nothing opened is
        shared across a fork.
        """
        import os

        opened = self.__dict__.get("_opened")
        if opened is None or opened[0] != os.getpid():
            store = open_store(self.path, storage_options=self.storage_options)
            opened = self._opened = (os.getpid(), store, store.split(self.split))
        return opened[2]

    def __getstate__(self):
        # A worker process gets the stream without its open store (a file handle does not cross processes).
        state = dict(self.__dict__)
        state.pop("_opened", None)
        return state

    def _iterate(self, reader):
        order, chunks, ready = self.global_order()
        batches = [b for b in self._my_batches() if b[1] > b[0]]
        if not batches:
            return
        # The rows this shard serves, and the chunks that hold them: only those are read (whole).
        mine = np.concatenate([order[a:b] for a, b in batches])
        needed = np.zeros(self.num_chunks, dtype=bool)
        needed[mine // self.chunk_rows] = True
        steps = [i for i, chunk in enumerate(chunks) if needed[chunk]]
        # Positions known once a needed chunk is read: all those known before the next needed chunk's read.
        known = [ready[later - 1] for later in steps[1:]] + [ready[-1]]
        wanted = np.zeros(self.num_examples, dtype=bool)
        wanted[mine] = True
        pool_ids, pool = np.empty(0, dtype=np.int64), {name: [] for name in self.arrays}
        slot = np.empty(self.num_examples, dtype=np.int64)     # row id -> its position in the pool
        parts_ids: list[np.ndarray] = []
        next_batch = 0
        reads = self._chunks_read_ahead(reader, [int(chunks[i]) for i in steps])
        for step, known_now, data in zip(steps, known, reads):
            chunk = int(chunks[step])
            first = chunk * self.chunk_rows
            keep = np.flatnonzero(wanted[first:first + self._chunk_rows(chunk)])
            whole = len(keep) == self._chunk_rows(chunk)
            parts_ids.append(keep + first)
            for name in self.arrays:
                pool[name].append(data[name] if whole else data[name].take(keep, axis=0))
            last = next_batch  # batches are in order: the ready ones are next_batch .. last - 1
            while last < len(batches) and batches[last][1] <= known_now:
                last += 1
            if last == next_batch:
                continue
            pool_ids = np.concatenate([pool_ids, *parts_ids])
            parts_ids = []
            rows = {name: parts[0] if len(parts) == 1 else np.concatenate(parts) for name, parts in pool.items()}
            # Where each ready batch's rows are in the pool, in order: pool ids are distinct row ids, so one
            # scatter of their pool positions and one gather look them up (a sort and search cost 10x that).
            slot[pool_ids] = np.arange(len(pool_ids))
            at = slot[np.concatenate([order[a:b] for a, b in batches[next_batch:last]])]
            offset = 0
            for a, b in batches[next_batch:last]:
                # One gather per array and batch, just before it is used: its rows are still in the cache
                # when `to_device` reads them (one gather of all ready batches left them in memory).
                take = at[offset:offset + b - a]
                yield {name: rows[name].take(take, axis=0) for name in self.arrays}
                offset += b - a
            next_batch = last
            if next_batch == len(batches):
                return
            # Rows not served yet stay for later batches.
            rest = np.ones(len(pool_ids), dtype=bool)
            rest[at] = False
            pool_ids = pool_ids[rest]
            pool = {name: [rows[name][rest]] for name in self.arrays}


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
        tensor = tensor.pin_memory().to(device, non_blocking=non_blocking_for(device, pinned=True))
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
    if device.type == "cpu":
        return _to_cpu(batch, hidden_size, static_kept, value_format)
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


def _to_cpu(batch: dict[str, np.ndarray], hidden_size: int | None, static_kept: torch.Tensor | None,
            value_format) -> DeviceBatch:
    """`to_device` for the CPU: the same tensors, made in numpy and shared with torch (no copy).

    The CPU reader's cost is per call as much as per byte (~30 small calls a batch of 32 rows): numpy
    builds the mask and widens the ids in fewer, cheaper calls than torch, which is kept for the float16
    -> float32 values (vectorized there, ~10x numpy's conversion).
    """
    lengths = batch["lengths"]
    width = int(lengths.max())
    input_ids = torch.from_numpy(batch["input_ids"][:, :width].astype(np.int64))
    attention_mask = torch.from_numpy((np.arange(width) < lengths[:, None]).astype(np.int64))
    token_types = torch.from_numpy(batch["token_type_ids"][:, :width].astype(np.int64))
    labels = torch.from_numpy(np.ascontiguousarray(batch["labels"]))
    logits = torch.from_numpy(np.ascontiguousarray(batch["logits"])) if "logits" in batch else None
    positions = values = kept = None
    if "values" in batch:
        cpu = torch.device("cpu")
        positions = torch.from_numpy(batch["positions"].astype(np.int64))
        values = _device_values(batch, cpu, value_format)
        kept = _device_kept(batch, cpu, values.shape[-1], hidden_size, static_kept)
    return DeviceBatch(input_ids, attention_mask, token_types, labels, logits, positions, values, kept)
