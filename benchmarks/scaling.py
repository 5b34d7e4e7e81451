"""Scaling out with torchrun on one machine: extraction examples/s and DDP training steps/s, 1 vs 2 processes.

    python benchmarks/scaling.py [--examples 2048] [--rounds 3] [--steps 40] [--threads N]

Every configuration gets the same CPU threads in total (`--threads`, default all cores): one process
with N threads against two with N/2 each (OMP_NUM_THREADS, which torch takes as its thread count),
so the comparison is processes against threads, not more cores against fewer. Configurations run
interleaved in rounds so machine noise hits them alike; medians are reported. Extraction uses the
packaged MiniLM-L6 teacher on tweets (max length 64, (1, 9, 0.1), 256-row chunks); training a
TinyBERT-4 student on the store's HSK stage with a global batch of 32 (16 per process with 2).
The rates are the runs' own timings (store summary; metrics.json), without process start-up, which
is reported separately as wall time. Also measured, for the wall-time estimates in docs/scaling.md:
one process extracting with a BERT-base-shaped teacher (12 x 768, random weights) at length 128.
Writes benchmarks/results/scaling-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).parent), str(ROOT)]  # this checkout's hskstore, as in the torchrun children
import common  # noqa: E402  (sets the offline environment first)


def torchrun(processes: int, threads: int, args: list[str], timeout: int = 1800) -> float:
    """Run `hskstore ARGS` under torchrun; returns the wall time, start-up included."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(max(1, threads // processes)),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "hskstore", *args]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode:
        raise SystemExit(f"torchrun failed: {' '.join(args[:3])}...\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def extract_args(teacher, output, examples, extra=()):
    return ["extract", "--teacher", teacher, "--output", str(output), "--limit", str(examples), "--max-length", "64",
            "--chunk-rows", "256", "--device", "cpu", "--overwrite", "--json", *extra]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=2048, help="train examples (plus a quarter for validation)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="training steps per run")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads per configuration, in all")
    parser.add_argument("--base-examples", type=int, default=256, help="BERT-base-shaped extraction, one process")
    args = parser.parse_args()

    from hskstore.experiments.demo import build_student
    from hskstore.store import open_store

    work = Path(tempfile.mkdtemp(prefix="hskstore-scaling-"))
    teacher = common.minilm_teacher(work / "teacher")
    store = work / "store.zarr"
    extraction = {1: [], 2: []}
    wall = {"extract": {1: [], 2: []}, "train": {1: [], 2: []}}
    for _ in range(args.rounds):
        for processes in (1, 2):
            wall["extract"][processes].append(torchrun(processes, args.threads, extract_args(teacher, store, args.examples)))
            summary = open_store(store).attrs["summary"]
            assert summary["processes"] == processes
            extraction[processes].append(summary["examples_per_second"])
    student = work / "student"
    build_student("bert", student, store=str(store), progress=False)  # TinyBERT-4 defaults (4 x 312)
    training = {1: [], 2: []}
    for _ in range(args.rounds):
        for processes in (1, 2):
            run = work / f"run{processes}"
            wall["train"][processes].append(torchrun(processes, args.threads, [
                "train", str(store), "--student", str(student), "--output", str(run), "--stages", "hsk",
                "--hsk-epochs", "1", "--hsk-batch-size", "32", "--max-steps", str(args.steps), "--device", "cpu",
                "--no-resume"]))
            record = json.loads((run / "metrics.json").read_text())["history"][0]
            assert json.loads((run / "metrics.json").read_text())["world_size"] == processes
            training[processes].append(record["step"] / record["seconds"])

    # One process, BERT-base shape at length 128: the per-process rate the wall-time estimates start from.
    base_teacher = common.random_bert_teacher(work / "bert-base")
    texts = common.long_tweets_csv(work / "long.csv", rows=args.base_examples + args.base_examples // 4 + 64)
    base_store = work / "base.zarr"
    torchrun(1, args.threads, ["extract", "--teacher", base_teacher, "--task", texts, "--output", str(base_store),
                               "--limit", str(args.base_examples), "--max-length", "128", "--chunk-rows", "256",
                               "--device", "cpu", "--overwrite", "--json"])
    base = open_store(base_store).attrs["summary"]

    med = {k: {p: statistics.median(v) for p, v in d.items()} for k, d in (("extract", extraction), ("train", training))}
    result = {
        "threads_in_all": args.threads,
        "extract": {"teacher": "MiniLM-L6 (packaged), tweets, max length 64", "examples": args.examples,
                    "examples_per_second": extraction, "median": med["extract"],
                    "speedup_2_vs_1": med["extract"][2] / med["extract"][1]},
        "train": {"student": "TinyBERT-4 (4 x 312)", "stage": "hsk", "global_batch": 32, "steps": args.steps,
                  "steps_per_second": training, "median": med["train"],
                  "speedup_2_vs_1": med["train"][2] / med["train"][1]},
        "wall_seconds_with_startup": {k: {p: statistics.median(v) for p, v in d.items()} for k, d in wall.items()},
        "bert_base_128_one_process": {"examples": base["examples_extracted"],
                                      "examples_per_second": base["examples_per_second"],
                                      "threads": args.threads, "batch_tokens": base["batch_tokens"]},
        "load_average_at_end": os.getloadavg(),
    }
    path = common.save("scaling", result)
    print(f"extraction ex/s  1 process {med['extract'][1]:.1f}  2 processes {med['extract'][2]:.1f}  "
          f"ratio {result['extract']['speedup_2_vs_1']:.2f} (medians of {args.rounds}, {args.threads} threads in all)")
    print(f"training steps/s 1 process {med['train'][1]:.2f}  2 processes {med['train'][2]:.2f}  "
          f"ratio {result['train']['speedup_2_vs_1']:.2f}")
    print(f"BERT-base-shaped, length 128, one process: {base['examples_per_second']} ex/s")
    print(f"load average {os.getloadavg()} (a shared machine: other work runs beside this)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
