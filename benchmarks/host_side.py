"""Extraction's host side alone: how many examples/s the chunk assembly and store writer take.

    python benchmarks/host_side.py [--examples 16384] [--threads 1,2] [--mask-codecs zstd1,zstd19]

A synthetic teacher: every batch's selected arrays (logits, int16 positions, float16 values, bitpacked
masks, as a GPU teacher hands them to the host) are made up front, then fed to extract's host path as
fast as it takes them: each batch copied into the chunk's preallocated arrays (`_ChunkArrays`, rows in
a shuffled order as the length sort leaves them) and each finished chunk handed to the writer threads
(`_ChunkWriter`), which compress and write it to a local Zarr store with the codecs extract uses. The
rate is examples / wall seconds from the first batch to the last chunk recorded: the ceiling a GPU
teacher's extraction meets on this machine. BERT-base shapes: d = 768, 12 layers, max length 128,
batches of 256 rows. Masks are top-k of skewed random scores (a few dimensions often kept, as real
activations have), so their sizes are near, not equal to, a real store's.

Writes benchmarks/results/host-side-cpu.json with os.getloadavg() before and after each run: on a
shared machine the numbers are lower bounds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402

from hskstore.method.compression import Compression  # noqa: E402
from hskstore.stages.extract import _ChunkArrays, _ChunkWriter  # noqa: E402
from hskstore.store import array_specs, create_store, root_attributes  # noqa: E402

LAYERS, HIDDEN, MAX_LENGTH, LABELS, BATCH = 12, 768, 128, 3, 256
SETTINGS = {"1,9,0.1": (1, 9, 0.1), "3,8,0.2": (3, 8, 0.2), "1,all,0.1": (1, None, 0.1)}   # (N^D, N^L, N^W)


def _chunk_batches(resolved, rows: int, rng) -> list[tuple[np.ndarray, dict]]:
    """One chunk's batches as a teacher hands them over: (rows of the chunk they fill, arrays)."""
    D, n, k = resolved.depth, resolved.length, resolved.width
    order = rng.permutation(rows)
    skew = np.linspace(0.0, 2.0, HIDDEN, dtype=np.float32)
    out = []
    for start in range(0, rows, BATCH):
        b = min(BATCH, rows - start)
        scores = rng.standard_normal((b * D * n, HIDDEN), dtype=np.float32) + skew
        kept = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        mask = np.zeros((b * D * n, HIDDEN), bool)
        np.put_along_axis(mask, kept, True, axis=1)
        arrays = {"logits": rng.standard_normal((b, LABELS), dtype=np.float32),
                  "positions": rng.integers(0, MAX_LENGTH, (b, D, n)).astype(np.int16),
                  "values": rng.standard_normal((b, D, n, k), dtype=np.float32).astype(np.float16)}
        if k < HIDDEN:
            arrays["masks"] = np.packbits(mask, axis=1, bitorder="little").reshape(b, D, n, -1)
        out.append((order[start:start + b], arrays))
    return out


def _tokens(rows: int, rng) -> dict:
    lengths = rng.integers(8, MAX_LENGTH + 1, rows).astype(np.int16)
    ids = rng.integers(1000, 30000, (rows, MAX_LENGTH)).astype(np.uint16)
    ids[np.arange(MAX_LENGTH) >= lengths[:, None]] = 0
    return {"input_ids": ids, "token_type_ids": np.zeros((rows, MAX_LENGTH), np.uint8), "lengths": lengths,
            "labels": rng.integers(0, LABELS, rows).astype(np.int64)}


def _layout(compression, resolved, examples, chunk_rows, mask_codec):
    meta = {"created_by": "benchmarks/host_side.py", "compression": compression.to_dict(),
            "resolved": resolved.to_dict(), "amount_hsk": resolved.amount(),
            "teacher": {"path": "synthetic", "num_layers": LAYERS, "hidden_size": HIDDEN, "num_heads": 12,
                        "vocab_size": 30522, "num_labels": LABELS, "model_type": "bert"},
            "teacher_fingerprint": {"algorithm": "sha256", "weights": {}, "tokenizer": {}},
            "task": {"name": "synthetic", "metric": "accuracy"}, "task_ref": {"task": "synthetic", "options": {}},
            "label_names": ["a", "b", "c"], "num_labels": LABELS, "max_length": MAX_LENGTH, "limit": None,
            "data_seed": 0, "numerics": "synthetic", "batch_size": BATCH, "tokenizer": {"class": "none"}}
    specs = array_specs(resolved, compression, vocab_size=30522, num_labels=LABELS, mask_codec=mask_codec)
    return root_attributes(meta, {"train": examples}, chunk_rows, specs), specs


def run_one(setting, examples, chunk_rows, threads, mask_codec, pool=2) -> dict:
    depth, length, width = setting
    compression = Compression(depth=depth, length=length, width=width, student_layers=max(depth, 3),
                              length_strategy="att-nosep" if length else "all")
    resolved = compression.resolve(LAYERS, HIDDEN, MAX_LENGTH)
    rng = np.random.default_rng(0)
    # `pool` distinct chunks, reused in turn: each chunk is compressed on its own, so no codec sees a repeat.
    made = [(_chunk_batches(resolved, chunk_rows, rng), _tokens(chunk_rows, rng)) for _ in range(pool)]
    attrs, specs = _layout(compression, resolved, examples, chunk_rows, mask_codec)
    num_chunks = -(-examples // chunk_rows)
    with tempfile.TemporaryDirectory(dir=os.environ.get("HOST_SIDE_TMP")) as tmp:
        writer = create_store(str(Path(tmp) / "s.zarr"), attrs, specs, None, {})
        load_before = os.getloadavg()
        started = time.perf_counter()
        cpu_started = time.process_time()
        chunk_writer = _ChunkWriter(writer, threads)
        for index in range(num_chunks):
            rows = min(chunk_rows, examples - index * chunk_rows)
            batches, tokens = made[index % pool]
            chunk = _ChunkArrays(rows)
            for where, arrays in batches:
                keep = where < rows
                for name, data in arrays.items():
                    chunk.put(name, where[keep], data[keep])
            chunk_writer.put("train", index, chunk.arrays | {name: t[:rows] for name, t in tokens.items()})
        chunk_writer.close()
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        load_after = os.getloadavg()
        writer.close()
        masks_dir = Path(tmp) / "s.zarr" / "train" / "masks"
        stored_masks = sum(p.stat().st_size for p in masks_dir.rglob("*") if p.is_file() and p.name != "zarr.json")
    raw_masks = examples * resolved.depth * resolved.length * resolved.mask_bytes if resolved.width < HIDDEN else 0
    return {"examples": examples, "chunk_rows": chunk_rows, "threads": threads, "mask_codec": mask_codec,
            "resolved": {"depth": resolved.depth, "length": resolved.length, "width": resolved.width},
            "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
            "examples_per_second": round(examples / seconds, 1),
            "mask_mb_per_second": round(raw_masks / seconds / 1e6, 2),
            "masks_stored_over_raw": round(stored_masks / raw_masks, 4) if stored_masks and raw_masks else None,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=16384)
    parser.add_argument("--full-examples", type=int, default=4096, help="examples for the every-token setting")
    parser.add_argument("--slow-examples", type=int, default=4096, help="examples for zstd19 masks (2-3 MB/s a core)")
    parser.add_argument("--chunk-rows", type=int, default=4096)
    parser.add_argument("--threads", default=f"1,{len(os.sched_getaffinity(0))}")
    parser.add_argument("--mask-codecs", default="zstd1,zstd19")
    parser.add_argument("--settings", default=";".join(SETTINGS), help="';'-separated, from: " + "; ".join(SETTINGS))
    parser.add_argument("--note", default=None, help="recorded with the results (e.g. 'measured on a shared box')")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    runs = []
    names = [name for name in args.settings.split(";") if name in SETTINGS]
    for name in names:
        full = SETTINGS[name][1] is None
        for codec in args.mask_codecs.split(","):
            if full and codec == "zstd19":
                continue  # ~100 MB of masks per 8k examples at 2-3 MB/s a core: minutes for a known answer
            for t in threads:
                examples = args.full_examples if full else args.slow_examples if codec == "zstd19" else args.examples
                result = run_one(SETTINGS[name], examples, args.chunk_rows, t, codec)
                result["setting"] = name
                runs.append(result)
                print(f"({name:10s}) masks {codec:6s} threads {t}: {result['examples_per_second']:>9,.0f} examples/s  "
                      f"masks {result['mask_mb_per_second']:6.1f} MB/s  stored/raw {result['masks_stored_over_raw']}  "
                      f"load {result['load_average_before'][0]:.2f}", flush=True)
    path = save("host-side", {"benchmark": "host_side", "note": args.note, "hidden_size": HIDDEN,
                              "max_length": MAX_LENGTH, "batch_rows": BATCH, "runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
