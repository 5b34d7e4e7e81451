"""Store reader throughput: rows/s from a (1, 9, 0.1) store into device-ready batches, before and now.

    python benchmarks/reader.py [--store S.zarr] [--examples 8192] [--hidden 768] [--rounds 5] [--threads 1]

Without --store, a store is extracted first from a random 2-layer BERT of width --hidden (the reader's
work depends only on the stored shapes: 1 layer x 9 tokens x k of d activations, not on the teacher's
depth). Timed over one epoch of the train split each, interleaved in rounds, medians reported:
- reader before / now: chunk reads, shuffle, batching and CPU `to_device`. "Before" is an earlier
  implementation, kept here as the reference: zarr's own chunk reads, a fancy-indexed copy of every
  array per batch, and dense float32 targets by a boolean scatter (`targets[mask] = kept`). "Now" is
  `hskstore.experiments.bench.time_reader`, what `hskstore bench` prints: the kept dimensions straight
  from the packed mask bytes and the k kept values as float32, no full-width targets;
- host side before / now: the same without `to_device`, i.e. the host's work for a GPU student, whose
  `to_device` only pins and copies the packed arrays and unpacks the masks on the device;
- chunk reads alone: zarr's read against the direct whole-chunk read;
- the parts of CPU `to_device`, on batches read beforehand: the token arrays alone; the kept dimensions
  from the packed bytes as `to_device` finds them (`sparse_loss.kept_indices_packed`: unpacked, then
  numpy's branch-free search past its 10%-density switch), against plain `np.flatnonzero` on the
  unpacked bytes and unpacking and sorting in torch (`sparse_loss.kept_indices`); and the dense targets
  the reader made before (`select.densify_packed`). Each form's indices are checked equal before timing.
Both wall-clock rows/s and rows per CPU-second of this process are reported: on a shared machine the
second is the one other users' load distorts less. After timing, both readers' batches are checked
equal, byte for byte, and the kept values put back at the kept dimensions equal the dense targets. Goal:
>= 150k rows per CPU-second at d = 768 from one process (issue 18). Writes benchmarks/results/reader-*.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402  (sets the offline environment first)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hskstore.experiments.bench import time_reader  # noqa: E402
from hskstore.method.compression import Compression  # noqa: E402
from hskstore.stages.extract import ExtractConfig, extract  # noqa: E402
from hskstore.method.select import densify_packed, unpack_bits_numpy  # noqa: E402
from hskstore.method.sparse_loss import kept_indices, kept_indices_packed  # noqa: E402
from hskstore.store import open_store  # noqa: E402
from hskstore.store.stream import HSK_ARRAYS, TOKEN_ARRAYS, StoreStream, to_device  # noqa: E402

ARRAYS = list(TOKEN_ARRAYS + HSK_ARRAYS)


def make_store(work: Path, examples: int, hidden: int) -> str:
    teacher = common.random_bert_teacher(work / f"bert-{hidden}", layers=2, hidden=hidden, heads=12, ffn=4 * hidden)
    store = work / f"reader-{hidden}.zarr"
    extract(ExtractConfig(teacher=teacher, task="tweets", output=str(store), limit=examples, max_length=64,
                          compression=Compression(depth=1, length=9, width=0.1, student_layers=2), overwrite=True),
            progress=False)
    return str(store)


def batches_before(stream: StoreStream):
    """The previous reader's batches: zarr reads, concatenate, permute, a fancy-indexed copy per array per batch.

    The store is opened per epoch and its chunk listing made anew, as the previous `StoreStream.__iter__` did.
    """
    with open_store(stream.path) as store:
        yield from _batches_before(stream, store)


def _batches_before(stream: StoreStream, store):
    reader = store.split(stream.split)
    rng = np.random.default_rng([stream.seed, stream.epoch, 0, 0])  # one process: the global order's reader
    chunks = stream._chunk_order().tolist()
    sizes = stream.batch_plan(1)[0][::-1]
    buffer, buffered = {name: [] for name in stream.arrays}, 0
    for i, chunk in enumerate(chunks):
        start, stop = reader.chunk_bounds(chunk)
        for name in stream.arrays:
            store.missing_chunk(stream.split, name, start, stop)
            buffer[name].append(store._array(stream.split, name)[start:stop])
        buffered += stop - start
        if buffered >= stream.buffer_rows or i == len(chunks) - 1:
            rows = {name: np.concatenate(parts) for name, parts in buffer.items()}
            order = rng.permutation(buffered) if stream.shuffle else np.arange(buffered)
            begin = 0
            while sizes and buffered - begin >= sizes[-1]:
                index = order[begin:begin + sizes.pop()]
                begin += len(index)
                yield {name: rows[name][index] for name in stream.arrays}
            buffer = {name: [rows[name][order[begin:]]] for name in stream.arrays}
            buffered = len(order) - begin


def to_device_before(batch, hidden: int):
    """An earlier CPU `to_device`: the token arrays as now, then dense targets by a boolean scatter of the kept values."""
    moved = to_device({name: batch[name] for name in TOKEN_ARRAYS}, torch.device("cpu"))
    mask = np.unpackbits(batch["masks"], axis=-1, count=hidden, bitorder="little").view(bool)
    targets = np.zeros(mask.shape, dtype=np.float32)
    targets[mask] = batch["values"][batch["masks"].any(-1)].reshape(-1)
    return moved, torch.from_numpy(batch["positions"]).long(), torch.from_numpy(targets), torch.from_numpy(mask)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default=None)
    parser.add_argument("--examples", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=768, help="teacher width when the store is extracted here")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32, help="the HSK stage's batch size for tweets/SST-2")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads [torch's default]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    store_path = args.store or make_store(Path(tempfile.mkdtemp(prefix="hskstore-reader-")), args.examples, args.hidden)
    store = open_store(store_path)
    hidden = store.resolved.hidden_size
    stream = StoreStream(store_path, "train", args.batch_size, arrays=ARRAYS)
    batches = stream.num_batches()
    rows = store.split("train").num_examples
    reader = store.split("train")
    timings: dict[str, list[float]] = {}
    cpu_timings: dict[str, list[float]] = {}

    def timed(key, fn, count=rows):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        timings.setdefault(key, []).append(count / (time.perf_counter() - wall))
        cpu_timings.setdefault(key, []).append(count / max(time.process_time() - cpu, 1e-9))

    def epoch(source, transform=None):
        for batch in source:
            if transform:
                transform(batch)

    def each(items, fn):
        for item in items:
            fn(item)

    def zarr_reads():
        for k in range(reader.num_chunks):
            start, stop = reader.chunk_bounds(k)
            for name in stream.arrays:
                store._array("train", name)[start:stop]

    held = list(stream)
    token_batches = [{name: b[name] for name in TOKEN_ARRAYS} for b in held]
    k = held[0]["values"].shape[-1]

    def searched(batch):
        """Kept dimensions by searching the unpacked bits (empty slots filled with 0..k-1 as to_device does)."""
        bits = np.unpackbits(batch["masks"], axis=-1, count=hidden, bitorder="little").reshape(-1, hidden)
        empty = ~bits.any(-1)
        bits[empty, :k] = 1
        return (np.flatnonzero(bits).reshape(-1, k) % hidden).reshape(*batch["masks"].shape[:-1], k)

    def sorted_in_torch(batch):
        return kept_indices(torch.from_numpy(unpack_bits_numpy(batch["masks"], hidden)), k)

    for batch in held:   # every form gives the same indices
        ours = kept_indices_packed(batch["masks"], k, hidden)
        assert np.array_equal(ours, searched(batch)) and np.array_equal(ours, sorted_in_torch(batch).numpy())
    cpu_device = torch.device("cpu")
    for round_ in range(args.rounds):
        stream.set_epoch(round_)
        timed("reader_before", lambda: epoch(batches_before(stream), lambda b: to_device_before(b, hidden)))
        now = time_reader(store_path, batch_size=args.batch_size, batches=batches, repeats=1, device="cpu")
        timings.setdefault("reader_now", []).append(now["rows_per_second"][0])   # as `hskstore bench` times it
        cpu_timings.setdefault("reader_now", []).append(now["rows_per_cpu_second"][0])
        timed("host_side_before", lambda: epoch(batches_before(stream)))
        timed("host_side_now", lambda: epoch(stream))
        timed("chunk_reads_zarr", zarr_reads)
        timed("chunk_reads_direct", lambda: [reader.read_chunk(k, stream.arrays) for k in range(reader.num_chunks)])
        # Each result is dropped before the next, as in training: held, 256 batches of fresh targets cost page faults.
        timed("to_device_tokens_only", lambda: each(token_batches, lambda b: to_device(b, cpu_device)))
        timed("kept_indices_packed", lambda: each(held, lambda b: kept_indices_packed(b["masks"], k, hidden)))
        timed("unpackbits_flatnonzero", lambda: each(held, searched))
        timed("unpack_argsort_torch", lambda: each(held, sorted_in_torch))
        timed("dense_targets_before", lambda: each(held, lambda b: densify_packed(b["values"], b["masks"], hidden)))
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} ({cpu_timings[k][-1]:,.0f}/CPU-s)"
                                                  for k, v in timings.items()), flush=True)
    stream.set_epoch(0)
    for ours, theirs in zip(stream, batches_before(stream), strict=True):  # correctness after timing
        assert all(ours[n].tobytes() == theirs[n].tobytes() for n in stream.arrays), "batches differ"
        now, before = to_device(ours, torch.device("cpu"), hidden), to_device_before(theirs, hidden)
        rebuilt = torch.zeros(before[2].shape).scatter_(-1, now.kept, now.values)   # back to full width, here only
        assert torch.equal(rebuilt.view(torch.int32), before[2].view(torch.int32)), "values or kept dimensions differ"
    medians = {k: statistics.median(v) for k, v in timings.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu_timings.items()}
    result = {"store": store_path, "hidden_size": hidden, "rows": rows, "batch_size": args.batch_size,
              "rounds": args.rounds, "rows_per_second": timings, "median_rows_per_second": medians,
              "rows_per_cpu_second": cpu_timings, "median_rows_per_cpu_second": cpu_medians,
              "load_average": os.getloadavg(), "torch_threads": torch.get_num_threads(), "equal_after_timing": True}
    print(f"\nmedian rows/s over {args.rounds} rounds ({rows} rows, batch {args.batch_size}, d={hidden}, (1, 9, 0.1)):")
    for key, value in medians.items():
        print(f"  {key:<22} {value:>10,.0f} wall   {cpu_medians[key]:>10,.0f} per CPU-second")
    suffix = f"-d{hidden}" + (f"-threads{args.threads}" if args.threads else "")
    print(f"saved {common.save('reader' + suffix, result)}")


if __name__ == "__main__":
    main()
