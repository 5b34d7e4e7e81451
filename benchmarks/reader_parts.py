"""The CPU reader before and after the reader-lean changes, part by part: an interleaved A/B on one store.

    python benchmarks/reader_parts.py --store S.zarr [--rounds 5] [--repeats 9]

The store is a (1, 9, 0.1) one at d = 768 (`benchmarks/reader.py` extracts one). "Before" is kept here, not
in the package: `kept_indices_packed` with its byte-wise emptiness test and `array_equal` count checks,
`to_device` building the tokens' mask in torch, `StoreStream._iterate` gathering all ready batches at once
by a sort and search, and the whole-chunk read slicing the CRC off one read. Both give the same batches
and device tensors, checked bit for bit first. Reported, per row, with `uptime` beside each round:
- parts of CPU `to_device` on batches read beforehand (each batch timed alone, the least of `--repeats`
  runs, summed over the epoch: a shared box's bursts fall out of a minimum): `to_device`, and
  `kept_indices_packed` inside it;
- the host side (an epoch of `StoreStream`, CPU seconds of the process) and the whole reader (the same,
  each batch through CPU `to_device`), before and after, alternating epochs; the best and the median epoch.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402,F401  (sets the offline environment first)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hskstore.errors import StoreError  # noqa: E402
from hskstore.method.bits import set_entries  # noqa: E402
from hskstore.method.sparse_loss import kept_indices_packed  # noqa: E402
from hskstore.store import _zarr  # noqa: E402
from hskstore.store.stream import HSK_ARRAYS, TOKEN_ARRAYS, DeviceBatch, StoreStream, to_device  # noqa: E402

CPU = torch.device("cpu")


def kept_indices_packed_before(packed, k, hidden_size):
    width = packed.shape[-1]
    rows = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1, width)
    vectors = len(rows)
    empty = ~rows.any(-1)
    if empty.any():
        rows = rows.copy()
        rows[empty] = np.packbits(np.arange(width * 8) < k, bitorder="little")
    if width * 8 == hidden_size:
        n, count = vectors * hidden_size, vectors * k
        tail = 0 if count * 10 > n else ((n - 10 * count) // 9 + 8) // 8
        source = rows.reshape(-1) if not tail else np.concatenate((rows.reshape(-1), np.full(tail, 255, np.uint8)))
        found = np.flatnonzero(np.unpackbits(source, bitorder="little").view(bool))
        flat = found[:found.size - 8 * tail]
    else:
        flat = set_entries(np.unpackbits(rows, axis=-1, count=hidden_size, bitorder="little").view(bool).reshape(-1))
    if flat.size != vectors * k or (vectors and not (
            np.array_equal(flat[::k] // hidden_size, np.arange(vectors))
            and np.array_equal(flat[k - 1::k] // hidden_size, np.arange(vectors)))):
        raise StoreError("store masks disagree with the values")
    kept = flat.reshape(vectors, k)
    kept -= (np.arange(vectors, dtype=kept.dtype) * hidden_size)[:, None]
    return kept.reshape(*packed.shape[:-1], k)


def to_device_before(batch, hidden_size):
    """The CPU branch of `to_device` before: torch for the mask, a `_put` (numpy -> torch, then cast) per array."""
    def put(array, dtype=None):
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor if dtype is None else tensor.to(dtype)

    lengths = batch["lengths"].astype(np.int64)
    width = int(lengths.max())
    input_ids = put(batch["input_ids"][:, :width].astype(np.int64))
    attention_mask = (torch.arange(width)[None, :] < put(lengths)[:, None]).long()
    token_types = put(batch["token_type_ids"][:, :width], torch.int64)
    labels = put(batch["labels"])
    positions = put(batch["positions"], torch.int64)
    values = put(batch["values"], torch.float32)
    kept = torch.from_numpy(kept_indices_packed_before(batch["masks"], values.shape[-1], hidden_size))
    return DeviceBatch(input_ids, attention_mask, token_types, labels, None, positions, values, kept)


class StreamBefore(StoreStream):
    """`StoreStream` with its old `_iterate`: one gather of all ready batches, pool positions by sort and search."""

    def _iterate(self, reader):
        order, chunks, ready = self.global_order()
        batches = [b for b in self._my_batches() if b[1] > b[0]]
        mine = np.concatenate([order[a:b] for a, b in batches])
        needed = np.zeros(self.num_chunks, dtype=bool)
        needed[mine // self.chunk_rows] = True
        steps = [i for i, chunk in enumerate(chunks) if needed[chunk]]
        known = [ready[later - 1] for later in steps[1:]] + [ready[-1]]
        wanted = np.zeros(self.num_examples, dtype=bool)
        wanted[mine] = True
        pool_ids, pool, parts_ids, next_batch = np.empty(0, dtype=np.int64), {n: [] for n in self.arrays}, [], 0
        reads = self._chunks_read_ahead(reader, [int(chunks[i]) for i in steps])
        for step, known_now, data in zip(steps, known, reads):
            chunk = int(chunks[step])
            first = chunk * self.chunk_rows
            keep = np.flatnonzero(wanted[first:first + self._chunk_rows(chunk)])
            whole = len(keep) == self._chunk_rows(chunk)
            parts_ids.append(keep + first)
            for name in self.arrays:
                pool[name].append(data[name] if whole else data[name].take(keep, axis=0))
            last = next_batch
            while last < len(batches) and batches[last][1] <= known_now:
                last += 1
            if last == next_batch:
                continue
            pool_ids, parts_ids = np.concatenate([pool_ids, *parts_ids]), []
            rows = {name: parts[0] if len(parts) == 1 else np.concatenate(parts) for name, parts in pool.items()}
            sort = np.argsort(pool_ids, kind="stable")
            ids = np.concatenate([order[a:b] for a, b in batches[next_batch:last]])
            at = sort[np.searchsorted(pool_ids, ids, sorter=sort)]
            gathered = {name: rows[name].take(at, axis=0) for name in self.arrays}
            offset = 0
            for a, b in batches[next_batch:last]:
                yield {name: gathered[name][offset:offset + b - a] for name in self.arrays}
                offset += b - a
            next_batch = last
            if next_batch == len(batches):
                return
            rest = np.ones(len(pool_ids), dtype=bool)
            rest[at] = False
            pool_ids = pool_ids[rest]
            pool = {name: [rows[name][rest]] for name in self.arrays}


def _read_before(self, start, stop):
    import google_crc32c

    index = start // self.chunk_shape[0]
    key = self.array.metadata.encode_chunk_key((index,) + (0,) * (len(self.chunk_shape) - 1))
    with open(os.path.join(self.root, key), "rb") as handle:
        data = handle.read()
    body = data[:-4]
    if len(data) < 4 or google_crc32c.value(body) != int.from_bytes(data[-4:], "little"):
        raise ValueError("stored and computed checksum do not match")
    out = np.empty(self.chunk_shape, dtype=self.dtype)
    self.decompressor.decode(body, out=out)
    return out[:stop - start]


@contextlib.contextmanager
def reads_before():
    now = _zarr._ChunkFileDecoder.read
    _zarr._ChunkFileDecoder.read = _read_before
    try:
        yield
    finally:
        _zarr._ChunkFileDecoder.read = now


def uptime() -> str:
    return os.popen("uptime").read().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of each reader per round, alternating")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    hidden = 768
    arrays = [name for name in TOKEN_ARRAYS + HSK_ARRAYS if name != "value_scales"]
    after, before = (cls(args.store, "train", args.batch_size, arrays=arrays) for cls in (StoreStream, StreamBefore))
    for epoch in (0, 1):                                              # the same batches and tensors, bit for bit
        after.set_epoch(epoch)
        before.set_epoch(epoch)
        with reads_before():
            old_batches = list(before)
        for a, b in zip(old_batches, after, strict=True):
            assert all(a[n].dtype == b[n].dtype and a[n].tobytes() == b[n].tobytes() for n in arrays)
            x, y = to_device_before(a, hidden), to_device(b, CPU, hidden)
            for field in dataclasses.fields(x):
                u, v = getattr(x, field.name), getattr(y, field.name)
                assert (u is None) == (v is None) and (u is None or (u.dtype == v.dtype and torch.equal(u, v)))
    print("batches and device tensors equal, bit for bit")
    parts = {"to_device before": lambda b: to_device_before(b, hidden),
             "to_device now": lambda b: to_device(b, CPU, hidden),
             "kept_indices_packed before": lambda b: kept_indices_packed_before(b["masks"], 77, hidden),
             "kept_indices_packed now": lambda b: kept_indices_packed(b["masks"], 77, hidden)}
    whole = {k: [] for k in ("host before", "host now", "whole before", "whole now")}
    for round_ in range(args.rounds):
        totals = dict.fromkeys(parts, 0.0)
        for batch in old_batches:
            best = dict.fromkeys(parts, float("inf"))
            for _ in range(args.repeats):
                for name, run in parts.items():
                    started = time.perf_counter()
                    run(batch)
                    best[name] = min(best[name], time.perf_counter() - started)
            for name in parts:
                totals[name] += best[name]
        rows = len(old_batches) * args.batch_size
        print(uptime())
        print("  " + ", ".join(f"{name} {t / rows * 1e6:.2f}" for name, t in totals.items()) + " us/row")
        variants = [("host before", before, False), ("host now", after, False),
                    ("whole before", before, True), ("whole now", after, True)]
        for epoch in range(args.epochs):
            for name, stream, device in variants if epoch % 2 == 0 else variants[::-1]:
                stream.set_epoch(100 * round_ + epoch)
                with reads_before() if "before" in name else contextlib.nullcontext():
                    started, count = time.process_time(), 0
                    for batch in stream:
                        if device:
                            (to_device_before(batch, hidden) if "before" in name else to_device(batch, CPU, hidden))
                        count += len(batch["labels"])
                    whole[name].append(count / (time.process_time() - started))
        print("  best epoch: " + ", ".join(f"{name} {max(v[-args.epochs:]):,.0f}" for name, v in whole.items())
              + " rows/CPU-s")
    for label, pick in (("best", max), ("median", statistics.median)):
        figures = {name: pick(v) for name, v in whole.items()}
        print(f"{label} epochs, rows per CPU-second: " + ", ".join(f"{n} {v:,.0f}" for n, v in figures.items())
              + f"; whole reader now / before {figures['whole now'] / figures['whole before']:.2f}x, host side "
              f"{figures['host now'] / figures['host before']:.2f}x")


if __name__ == "__main__":
    main()
