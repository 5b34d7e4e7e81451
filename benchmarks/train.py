"""Per-step training time: student-only vs offline (from a store) vs online (teacher in the loop).

    python benchmarks/train.py [--steps 20] [--rounds 3] [--settings bert-base minilm]

Settings: `bert-base` — a 12x768 BERT-base-shaped teacher (random weights) and a fresh TinyBERT_4
student (4x312), texts of 128 tokens; `minilm` — the packaged MiniLM-L6 teacher and the default
3-layer ROSITA student, tweets at max length 64. Batch 16 on CPU, 64 on GPU; store (1, 9, 0.1).
Modes run interleaved in rounds so machine noise hits all of them alike; medians are reported.
Goals (CPU, bert-base): offline / student-only <= 1.05, online / offline >= 4.2.
Writes benchmarks/results/train-<device>.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402  (sets the offline environment first)

from hskstore.experiments.bench import time_steps  # noqa: E402
from hskstore.method.compression import Compression  # noqa: E402
from hskstore.runtime.device import resolve_device  # noqa: E402
from hskstore.stages.extract import ExtractConfig, extract  # noqa: E402
from hskstore.experiments.demo import build_student  # noqa: E402


def time_setting(name, teacher, student_dir, store, batch_size, steps, rounds, device, work) -> dict:
    """The package's own `hskstore bench` step timing (hskstore/experiments/bench.py), printed per round."""
    return time_steps(store, student_dir, teacher, steps=steps, rounds=rounds, batch_size=batch_size,
                      device=str(device), echo=lambda line: print(f"  {name} {line}", flush=True))


def prepare(setting: str, work: Path, batch_size: int, steps: int, device) -> tuple[str, str, str]:
    """(teacher, student, store) for a setting; the store holds enough rows for warm-up and all rounds."""
    examples = batch_size * (steps * 2 + 8)  # rows are reused across rounds (epochs of the store)
    if setting == "bert-base":
        teacher = common.random_bert_teacher(work / "bert-base")
        task = common.long_tweets_csv(work / "long-tweets.csv", rows=int(examples * 1.15) + 10)
        compression = Compression(depth=1, length=9, width=0.1, student_layers=4)
        max_length = 128
    else:
        teacher = common.minilm_teacher(work / "minilm")
        task = "tweets"
        compression = Compression(depth=1, length=9, width=0.1, student_layers=3)
        max_length = 64
    store = work / f"{setting}.zarr"
    extract(ExtractConfig(teacher=teacher, task=task, output=str(store), compression=compression,
                          max_length=max_length, limit=examples, splits=("train", "validation"), overwrite=True),
            progress=False)
    student = work / f"{setting}-student"
    if setting == "bert-base":
        build_student("bert", student, store=str(store), num_layers=4, hidden_size=312, intermediate_size=1200,
                      num_heads=12, progress=False, overwrite=True)
    else:
        build_student("rosita", student, teacher=teacher, store=str(store), importance_examples=64, progress=False, overwrite=True)
    return teacher, str(student), str(store)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=["bert-base", "minilm"], choices=["bert-base", "minilm"])
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()
    device = resolve_device("auto")
    batch_size = args.batch_size or (64 if device.type == "cuda" else 16)
    work = Path(tempfile.mkdtemp(prefix="hskstore-train-bench-"))
    results = {"device": str(device)}
    for setting in args.settings:
        print(f"preparing {setting} (teacher, store, student) ...", flush=True)
        teacher, student, store = prepare(setting, work, batch_size, args.steps, device)
        results[setting] = time_setting(setting, teacher, student, store, batch_size, args.steps, args.rounds,
                                        device, work)
    print(f"\nper-step time, median of {args.rounds} rounds x {args.steps} steps ({device}, batch {batch_size}):")
    print(f"{'setting':<10} {'student-only':>13} {'offline':>9} {'online':>9} {'off/student':>12} {'on/off':>7}")
    for setting in args.settings:
        r = results[setting]
        m = r["median_seconds_per_step"]
        print(f"{setting:<10} {1000 * m['student_only']:>10.0f} ms {1000 * m['offline']:>6.0f} ms "
              f"{1000 * m['online']:>6.0f} ms {r['offline_over_student_only']:>12.3f} {r['online_over_offline']:>7.2f}")
    print(f"saved {common.save('train', results)}")


if __name__ == "__main__":
    main()
