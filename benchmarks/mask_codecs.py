"""Mask codecs compared on real stores: stored/raw bitpacked size, encode and decode speed.

    python benchmarks/mask_codecs.py STORE.zarr [STORE.zarr ...] [--repeats 5] [--chunk-rows 4096] [--output mask-codecs.json]

Reads each store's train masks (example, layer, slot, byte), cuts them into chunks of --chunk-rows
examples as the store does, and encodes every chunk with each candidate codec (numcodecs, the same
library zarr's codecs call). Sizes are the sum over chunks of the codec's output against the raw
bitpacked bytes; speeds are raw MB per CPU-second (time.process_time, one thread), the median over
--repeats. Writes benchmarks/results/<--output>.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import zarr
from numcodecs import GZip, Blosc, Zstd

Blosc.use_threads = False
sys.path.insert(0, str(Path(__file__).parent))
RESULTS = Path(__file__).parent / "results"


def candidates(row_bytes: int) -> dict:
    """Codec name -> numcodecs codec. `row_bytes` is one mask's packed size (48 at d = 384)."""
    bit = Blosc.BITSHUFFLE
    out = {f"zstd{level}": Zstd(level=level) for level in (1, 3, 9, 16, 17, 19)}
    out["gzip1 (hdf5 today)"] = GZip(level=1)
    out["gzip9"] = GZip(level=9)
    out["blosc-zstd5 bitshuffle typesize=1"] = Blosc("zstd", 5, bit, typesize=1)
    for level in (1, 3, 5, 9):
        for block in (0, 1 << 20, 4 << 20):
            out[f"blosc-zstd{level} bitshuffle typesize={row_bytes} block={block >> 10}K"] = \
                Blosc("zstd", level, bit, blocksize=block, typesize=row_bytes)
    return out


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def measure(masks: np.ndarray, chunk_rows: int, repeats: int) -> dict:
    row_bytes = masks.shape[-1]
    chunks = [np.ascontiguousarray(masks[i:i + chunk_rows]) for i in range(0, len(masks), chunk_rows)]
    raw = sum(c.nbytes for c in chunks)
    results = {}
    for name, codec in candidates(row_bytes).items():
        encoded = [codec.encode(c) for c in chunks]
        for chunk, enc in zip(chunks, encoded):
            assert np.array_equal(np.frombuffer(codec.decode(enc), dtype=np.uint8).reshape(chunk.shape), chunk), name
        enc_s = timed(lambda: [codec.encode(c) for c in chunks], repeats)
        dec_s = timed(lambda: [codec.decode(e) for e in encoded], repeats)
        results[name] = {"ratio": sum(len(e) for e in encoded) / raw,
                         "encode_mb_s": raw / 1e6 / max(enc_s, 1e-9), "decode_mb_s": raw / 1e6 / max(dec_s, 1e-9)}
    return {"shape": list(masks.shape), "raw_bytes": raw, "codecs": results}


def skew(masks: np.ndarray) -> dict:
    """How far the masks are from random: per-dimension frequency entropy against a uniform k-of-d mask."""
    bits = np.unpackbits(masks, axis=-1, bitorder="little").astype(bool)      # (N, D, n, d)
    k = int(bits[0, 0, 0].sum())
    d = bits.shape[-1]

    def h(p):
        p = np.clip(p, 1e-12, 1 - 1e-12)
        return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))

    per_layer = bits.mean(axis=(0, 2))                                        # (D, d)
    return {"k": k, "d": d, "uniform_bits_per_bit": float(h(k / d)),
            "per_dimension_bits_per_bit": float(h(bits.mean(axis=(0, 1, 2))).mean()),
            "per_layer_dimension_bits_per_bit": float(h(per_layer).mean()),
            "dims_in_90pct_of_masks": int((bits.mean(axis=(0, 1, 2)) > 0.9).sum())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stores", nargs="+")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk-rows", type=int, default=4096)
    parser.add_argument("--output", default="mask-codecs.json", help="file name under benchmarks/results")
    args = parser.parse_args(argv)
    report = {}
    for store in args.stores:
        masks = zarr.open_group(store, mode="r")["train"]["masks"][:]
        entry = measure(masks, args.chunk_rows, args.repeats)
        entry["skew"] = skew(masks)
        report[store] = entry
        print(f"== {store} masks {tuple(masks.shape)}  skew {entry['skew']}")
        for name, r in sorted(entry["codecs"].items(), key=lambda kv: kv[1]["ratio"]):
            print(f"  {name:<48} {r['ratio']:.3f}x  enc {r['encode_mb_s']:7.0f} MB/s  dec {r['decode_mb_s']:7.0f} MB/s")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.output).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
