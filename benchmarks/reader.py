"""Store reader throughput: rows/s from a (1, 9, 0.1) store at d=768 into device-ready CPU batches.

    python benchmarks/reader.py [--store S.zarr] [--examples 8192] [--rounds 5] [--batch-size 32]

Without --store, a d=768 store is extracted first from a random 2-layer, 768-wide BERT (the reader's
work depends only on the stored shapes: 1 layer x 9 tokens x 77 of 768 activations, not on the
teacher's depth). Three things are timed, interleaved in rounds, medians reported:
- `to_device` before: masks unpacked with numpy, then the torch stable-argsort `densify` (the old path);
- `to_device` now: one numpy boolean scatter from the packed bytes (`densify_packed`);
- the whole reader: chunk reads, shuffle, batching and `to_device` now (`hskstore.bench.time_reader`).
Both wall-clock rows/s and rows per CPU-second of this process are reported: on a shared machine the
second is the one other users' load distorts less. Correctness is checked after timing: both paths give equal targets and masks on every batch.
Goal: >= 100k rows/s from one process on CPU. Writes benchmarks/results/reader-<device>.json.
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

from hskstore.bench import time_reader  # noqa: E402
from hskstore.config import Compression  # noqa: E402
from hskstore.extract import ExtractConfig, extract  # noqa: E402
from hskstore.select import densify  # noqa: E402
from hskstore.stream import HSK_ARRAYS, TOKEN_ARRAYS, StoreStream, to_device  # noqa: E402


def make_store(work: Path, examples: int) -> str:
    teacher = common.random_bert_teacher(work / "bert-768", layers=2, hidden=768, heads=12, ffn=3072)
    store = work / "reader-768.zarr"
    extract(ExtractConfig(teacher=teacher, task="tweets", output=str(store), limit=examples, max_length=64,
                          compression=Compression(depth=1, length=9, width=0.1, student_layers=2), overwrite=True),
            progress=False)
    return str(store)


def before(batch, hidden: int):
    """The reader's HSK targets as they were made before: numpy unpack, torch sort-based densify."""
    mask = torch.from_numpy(np.unpackbits(batch["masks"], axis=-1, count=hidden, bitorder="little").astype(bool))
    return densify(torch.from_numpy(batch["values"]).float(), mask), mask


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default=None)
    parser.add_argument("--examples", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32, help="the HSK stage's batch size for tweets/SST-2")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads [torch's default]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    store = args.store or make_store(Path(tempfile.mkdtemp(prefix="hskstore-reader-")), args.examples)
    stream = StoreStream(store, "train", args.batch_size, arrays=list(TOKEN_ARRAYS + HSK_ARRAYS))
    batches = list(stream)
    hidden = 768
    rows = sum(len(b["labels"]) for b in batches)
    cpu = torch.device("cpu")
    timings = {"to_device_before": [], "to_device_now": [], "reader_now": []}
    cpu_timings = {key: [] for key in timings}  # rows per CPU-second of this process: less hit by other users

    def timed(key, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        timings[key].append(rows / (time.perf_counter() - wall))
        cpu_timings[key].append(rows / max(time.process_time() - cpu, 1e-9))

    for round_ in range(args.rounds):
        timed("to_device_before", lambda: [before(batch, hidden) for batch in batches])
        timed("to_device_now", lambda: [to_device(batch, cpu, hidden) for batch in batches])
        timed("reader_now", lambda: time_reader(store, batch_size=args.batch_size, batches=len(batches), repeats=1,
                                                device="cpu"))
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} rows/s ({cpu_timings[k][-1]:,.0f} per CPU-s)"
                                                  for k, v in timings.items()), flush=True)
    for batch in batches:  # correctness after timing
        targets, mask = before(batch, hidden)
        moved = to_device(batch, cpu, hidden)
        assert torch.equal(moved.targets, targets) and torch.equal(moved.mask, mask), "fast path differs"
    medians = {k: statistics.median(v) for k, v in timings.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu_timings.items()}
    result = {"store": store, "rows": rows, "batch_size": args.batch_size, "rounds": args.rounds,
              "rows_per_second": timings, "median_rows_per_second": medians,
              "rows_per_cpu_second": cpu_timings, "median_rows_per_cpu_second": cpu_medians,
              "load_average": os.getloadavg(),
              "to_device_speedup": medians["to_device_now"] / medians["to_device_before"],
              "torch_threads": torch.get_num_threads(), "equal_after_timing": True}
    print(f"\nmedian rows/s over {args.rounds} rounds ({rows} rows, batch {args.batch_size}, d=768, (1, 9, 0.1)):")
    for key, value in medians.items():
        print(f"  {key:<18} {value:>10,.0f} wall   {cpu_medians[key]:>10,.0f} per CPU-second")
    print(f"  to_device now / before: {result['to_device_speedup']:.1f}x")
    suffix = f"-threads{args.threads}" if args.threads else ""
    print(f"saved {common.save('reader' + suffix, result)}")


if __name__ == "__main__":
    main()
