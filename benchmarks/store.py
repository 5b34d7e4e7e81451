"""Store backends measured on the same real data: bytes per example, read rows/s, and the offline
training step time when the store is streamed from a local S3 server instead of local disk.

    python benchmarks/store.py --examples 8192 --repeats 3

The teacher is the packaged MiniLM-L6 (real hidden states) with a seeded head; the store is (1, 9, 0.1)
for L' = 3 at max length 64. Zarr on disk is extracted once, then converted to HDF5 and copied into
a moto S3 server on loopback (started here). Sources are timed interleaved, and medians reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import minilm_teacher, save  # noqa: E402


def _s3_server():
    import logging
    import socket

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {"endpoint_url": f"http://127.0.0.1:{port}"}
    s3fs.S3FileSystem(**options).mkdir("bench")
    return server, options


def _scan(location, options, batch_size=256) -> float:
    """Rows/s of one full pass over the train split into numpy batches (every array, shuffled)."""
    from hskstore.store.stream import Prefetcher, StoreStream

    stream = StoreStream(location, "train", batch_size, storage_options=options, seed=1)
    start, rows = time.perf_counter(), 0
    with Prefetcher(stream) as batches:
        for batch in batches:
            rows += len(batch["labels"])
    return rows / (time.perf_counter() - start)


def _step_times(location, options, student, steps, workdir) -> float:
    """Median seconds per offline HSK-stage step, data loading included (the loop a user runs)."""
    from hskstore.store.stream import Prefetcher
    from hskstore.stages.train import TrainConfig, Trainer

    trainer = Trainer(TrainConfig(store=location, student=student, output=str(workdir), device="cpu",
                                  storage_options=options), progress=False)
    optimizer = trainer.optimizer("hsk", 5e-5)
    stream = trainer.stream("train", 32, "hsk", seed=0)
    times = []
    with Prefetcher(stream) as batches:
        last = time.perf_counter()
        for batch in batches:
            trainer.step("hsk", optimizer, batch)
            now = time.perf_counter()
            times.append(now - last)
            last = now
            if len(times) >= steps:
                break
    return statistics.median(times[2:])  # the first steps include opening the store and warming up


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=8192)
    parser.add_argument("--chunk-rows", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--workdir", default="runs/bench-store")
    args = parser.parse_args()

    from hskstore.method.compression import Compression
    from hskstore.stages.extract import ExtractConfig, extract
    from hskstore.store.report import store_info
    from hskstore.store import open_store, store_state
    from hskstore.store.convert import convert_store
    from hskstore.models.student import build_bert_student, save_student

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    teacher = minilm_teacher(work / "teacher")
    local = str(work / "tweets.zarr")
    if store_state(local)[0] != "complete":
        extract(ExtractConfig(teacher=teacher, task="tweets", output=local, limit=args.examples,
                              chunk_rows=args.chunk_rows, max_length=64, overwrite=True,
                              compression=Compression(depth=1, length=9, width=0.1, student_layers=3)))
    h5 = str(work / "tweets.h5")
    if store_state(h5)[0] != "complete":
        convert_store(local, h5, overwrite=True)
    server, options = _s3_server()
    try:
        remote = "s3://bench/tweets.zarr"
        start = time.perf_counter()
        convert_store(local, remote, dst_options=options)
        upload_seconds = time.perf_counter() - start
        sources = {"zarr-dir": (local, {}), "hdf5": (h5, {}), "zarr-s3": (remote, options)}
        sizes = {}
        for name, (location, opts) in sources.items():
            info = store_info(location, storage_options=opts)
            sizes[name] = {k: round(v, 1) for k, v in info["bytes_per_example"].items()}
        with open_store(local) as store:
            vocab, labels = store.teacher["vocab_size"], store.num_labels
        student_dir = work / "student"
        save_student(build_bert_student(num_labels=labels, vocab_size=vocab, num_layers=3, hidden_size=384,
                                        intermediate_size=1536, num_heads=12, seed=0), student_dir)
        scans = {name: [] for name in sources}
        steps = {name: [] for name in ("zarr-dir", "zarr-s3")}
        for repeat in range(args.repeats):
            for name, (location, opts) in sources.items():  # interleaved: load drifts hit every source alike
                scans[name].append(_scan(location, opts))
            for name in steps:
                location, opts = sources[name]
                steps[name].append(_step_times(location, opts, str(student_dir), args.steps, work / f"run-{name}"))
            print(f"repeat {repeat + 1}: rows/s " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in scans.items())
                  + "; step s " + ", ".join(f"{n} {v[-1]:.4f}" for n, v in steps.items()), flush=True)
    finally:
        server.stop()
    result = {
        "examples": {"train": args.examples, "validation": args.examples // 4}, "chunk_rows": args.chunk_rows,
        "bytes_per_example": sizes,
        "scan_rows_per_second": {n: {"runs": [round(x) for x in v], "median": round(statistics.median(v))}
                                 for n, v in scans.items()},
        "step_seconds": {n: {"runs": [round(x, 4) for x in v], "median": round(statistics.median(v), 4)}
                         for n, v in steps.items()},
        "s3_over_local_step_ratio": round(statistics.median(steps["zarr-s3"]) / statistics.median(steps["zarr-dir"]), 3),
        "s3_upload_seconds": round(upload_seconds, 2),
    }
    print(result)
    print(f"saved {save('store', result)}")


if __name__ == "__main__":
    main()
