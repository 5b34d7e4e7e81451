"""Extraction speed against plain teacher inference, and bytes per example per component.

    python benchmarks/extract.py [--teacher DIR] [--examples 8192] [--repeats 3]

Both sides run the same length-sorted, dynamically padded batches over the same tokenised tweets; plain
inference computes logits only (no hidden states, hooks, selection or writing). Prints medians and
their ratio (goal >= 0.9) and writes benchmarks/results/extract-<device>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402  (sets the offline environment first)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hskstore.method.compression import Compression  # noqa: E402
from hskstore.data.tasks import load_task, tokenize  # noqa: E402
from hskstore.runtime.device import resolve_device  # noqa: E402
from hskstore.stages.extract import ExtractConfig, extract  # noqa: E402
from hskstore.store.report import store_info  # noqa: E402
from hskstore.models.teacher import load_teacher, load_tokenizer  # noqa: E402


def plain_inference(model, encoded, batch_size, chunk_rows, device) -> float:
    """Examples/s of logits-only inference over the extraction's batches."""
    n = len(encoded["lengths"])
    autocast = device.type == "cuda"
    started = time.perf_counter()
    outputs = []
    for chunk_start in range(0, n, chunk_rows):
        rows = np.arange(chunk_start, min(chunk_start + chunk_rows, n))
        order = rows[np.argsort(-encoded["lengths"][rows], kind="stable")]
        for start in range(0, len(order), batch_size):
            batch_rows = order[start:start + batch_size]
            width = int(encoded["lengths"][batch_rows].max())
            batch = {k: torch.from_numpy(encoded[k][batch_rows, :width]).to(device, non_blocking=True)
                     for k in ("input_ids", "attention_mask", "token_type_ids")}
            with torch.inference_mode(), torch.autocast(device.type, enabled=autocast, dtype=torch.float16):
                outputs.append(model(**batch).logits.float())
        torch.cat(outputs).cpu()
        outputs.clear()
    return n / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", default=None, help="fine-tuned teacher [packaged MiniLM + seeded head]")
    parser.add_argument("--examples", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--value-bits", type=int, default=None, help="lossy mantissa rounding (e.g. 7)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hskstore-bench-"))
    teacher = args.teacher or common.minilm_teacher(work / "teacher")
    device = resolve_device("auto")
    batch_size = args.batch_size or (256 if device.type == "cuda" else 64)
    task = load_task("tweets", limit=args.examples)
    encoded = tokenize(load_tokenizer(teacher), task.split("train"), task.spec, args.max_length)
    model, _ = load_teacher(teacher, device=device)
    compression = Compression(depth=1, length=9, width=0.1, student_layers=3, value_bits=args.value_bits)

    plain_inference(model, {k: v[:512] for k, v in encoded.items()}, batch_size, 4096, device)  # warm-up
    plain, extracted = [], []
    for repeat in range(args.repeats):
        plain.append(plain_inference(model, encoded, batch_size, 4096, device))
        summary = extract(ExtractConfig(teacher=teacher, task="tweets", output=str(work / "store.zarr"),
                                        compression=compression, max_length=args.max_length, limit=args.examples,
                                        splits=("train",), batch_size=batch_size, overwrite=True), progress=False)
        extracted.append(summary["examples_per_second"])
        print(f"repeat {repeat + 1}: plain {plain[-1]:.0f} ex/s, extract {extracted[-1]:.0f} ex/s", flush=True)

    info = store_info(work / "store.zarr")
    resolved = info["triple"]
    raw = {  # uncompressed bytes per example of each component
        "values": resolved[0] * resolved[1] * resolved[2] * 2,
        "masks": resolved[0] * resolved[1] * ((384 + 7) // 8),
        "positions": resolved[0] * resolved[1] * 2,
        "tokens": args.max_length * (2 + 1) + 2,
        "logits": 3 * 4,
        "labels": 8,
    }
    stored = {k: info["bytes_per_example"][k] for k in raw}
    result = {
        "teacher": teacher, "device": str(device), "batch_size": batch_size, "examples": args.examples,
        "max_length": args.max_length, "compression": [1, 9, 0.1], "value_bits": args.value_bits,
        "plain_examples_per_second": plain, "extract_examples_per_second": extracted,
        "median_plain": statistics.median(plain), "median_extract": statistics.median(extracted),
        "ratio": statistics.median(extracted) / statistics.median(plain),
        "bytes_per_example": stored, "raw_bytes_per_example": raw,
        "total_bytes_per_example": info["bytes_per_example"]["total"],
        "full_hsk_bytes_per_example": info["full_hsk_bytes"] / args.examples,
        "fraction_of_full": info["fraction_of_full"],
    }
    print(f"\nextraction / plain inference: {result['median_extract']:.0f} / {result['median_plain']:.0f} ex/s "
          f"= {result['ratio']:.3f} (median of {args.repeats}, {device}, batch {batch_size})")
    print(f"{'component':<10} {'stored B/ex':>12} {'raw B/ex':>9}")
    for name in raw:
        print(f"{name:<10} {stored[name]:>12.1f} {raw[name]:>9}")
    print(f"{'total':<10} {info['bytes_per_example']['total']:>12.1f}   full HSK (float16) "
          f"{result['full_hsk_bytes_per_example']:.0f} B/ex, A^HSK = {100 * info['fraction_of_full']:.3f}% of it")
    name = "extract" if args.value_bits is None else f"extract-bits{args.value_bits}"
    print(f"saved {common.save(name, result)}")


if __name__ == "__main__":
    main()
