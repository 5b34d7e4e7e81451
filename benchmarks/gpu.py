"""The GPU check that lives in the repo: one command on a CUDA machine, under 8 minutes on one modern GPU.

    python benchmarks/gpu.py [--teacher DIR] [--examples 4096] [--compare-rows 512] [--skip-tests]
    python benchmarks/gpu.py --dry-run      # the CPU at a tiny size: checks this script, measures nothing

1. Runs the GPU tests (`pytest -m gpu` over tests/runtime/test_gpu.py, CUDA against the CPU with a
   fine-tuned MiniLM, and the quantized-value and packed-mask decoding on the device; the dry run only
   collects them).
2. Extracts --examples tweets on CUDA, and on the CPU a seeded subset of them (--compare-rows; `limit`
   subsets nest, so every CPU row is a GPU row, matched by its tokens). Compares token positions and
   masks (the fraction equal: float16 can swap near-ties), the teacher's logits, and the values where both
   kept the same token (error relative to the vector's largest value: float16 precision is 2^-11).
3. Times extraction against plain teacher inference (logits only: no hooks, selection or writing) over the
   same chunks and batches, the median of --repeats each.
4. Times HSK-stage training steps offline (from the store) against online (the teacher in the loop) and
   the student alone: the package's own `hskstore bench` timing, on a ROSITA student of the teacher.

Writes benchmarks/results/gpu-<GPU name>.json (with --dry-run: a file in a temporary directory, or
--output) and exits 1 when a check fails. The teacher defaults to the packaged MiniLM-L6 with a seeded
head (timing does not depend on fine-tuning; the GPU tests fine-tune their own); --teacher takes another.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's hskstore, as its tests use
import common  # noqa: E402  (sets the offline environment first)

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 8 * 60
# What counts as agreement between the CUDA and the CPU store (tests/runtime/test_gpu.py's bounds).
MIN_SAME_CHOICE = 0.97      # positions, masks: float16 may swap near-ties among tokens and dimensions
MIN_SAME_ARGMAX = 0.99      # the teacher's predicted class
MAX_VALUE_ERROR = 1e-2      # 99.9% quantile of |cuda - cpu| / max |vector|, where both kept an entry


def sizes(dry_run: bool) -> dict:
    if dry_run:
        # one timed step a mode: the dry run checks that every step runs and reports, not the timings
        return dict(examples=64, compare_rows=24, chunk_rows=32, max_length=32, repeats=1, steps=1, rounds=1,
                    warmup=1, batch_size=8, student_layers=2)
    return dict(examples=4096, compare_rows=512, chunk_rows=1024, max_length=64, repeats=3, steps=20, rounds=3,
                warmup=3, batch_size=64, student_layers=3)


GPU_TEST_FILES = ("tests/runtime/test_gpu.py", "tests/method/test_quantize.py", "tests/store/test_stream.py")


def run_gpu_tests(timeout: int, collect_only: bool = False) -> dict:
    """The CUDA tests (marked `gpu`: tests/runtime/test_gpu.py, and the on-device decoding of quantized values
    and packed masks) in a fresh process, or only collected; the counts from pytest's summary line."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *GPU_TEST_FILES]
    if collect_only:
        command.append("--collect-only")
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"command": " ".join(command[1:]), "returncode": None, "timed_out": True, "ok": False,
                "seconds": time.perf_counter() - started}
    tail = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    counts = {kind.split()[-1]: int(n) for n, kind in
              re.findall(r"(\d+)(?:/\d+)? (passed|failed|skipped|errors?|tests? collected)", tail)}
    return {"command": " ".join(command[1:]), "returncode": result.returncode, "summary": tail, "counts": counts,
            "ok": result.returncode == 0, "seconds": time.perf_counter() - started,
            "output_tail": (result.stdout + result.stderr)[-4000:] if result.returncode else ""}


def extract_store(teacher, output, device, limit, size, compression, batch_tokens) -> dict:
    from hskstore.stages.extract import ExtractConfig, extract

    return extract(ExtractConfig(teacher=teacher, task="tweets", output=str(output), compression=compression,
                                 max_length=size["max_length"], limit=limit, splits=("train",),
                                 chunk_rows=size["chunk_rows"], batch_tokens=batch_tokens, device=device,
                                 overwrite=True), progress=False)


def compare_stores(accelerated: str, reference: str) -> dict:
    """Rows of `reference` (a nested subset) against the same rows of `accelerated`, matched by tokens."""
    from hskstore.method.select import densify_packed
    from hskstore.store import open_store

    fast, slow = (open_store(s) for s in (accelerated, reference))
    d = fast.resolved.hidden_size
    a, b = (s.split("train").read_rows(0, s.split("train").num_examples) for s in (fast, slow))
    index = {a["input_ids"][i, :a["lengths"][i]].tobytes(): i for i in range(len(a["lengths"]))}
    rows = [index.get(b["input_ids"][j, :b["lengths"][j]].tobytes()) for j in range(len(b["lengths"]))]
    matched = np.array([j for j, i in enumerate(rows) if i is not None])
    picked = np.array([rows[j] for j in matched])
    out = {"rows_compared": int(len(matched)), "rows_unmatched": int(len(rows) - len(matched))}
    if not len(matched):
        return out | {"ok": False}
    fast_rows = {k: v[picked] for k, v in a.items()}
    slow_rows = {k: v[matched] for k, v in b.items()}
    same_positions = fast_rows["positions"] == slow_rows["positions"]                     # (N, D, n)
    out["positions_equal"] = float(same_positions.mean())
    out["rows_with_all_positions_equal"] = float(same_positions.reshape(len(matched), -1).all(1).mean())
    out["logits_max_abs_error"] = float(np.abs(fast_rows["logits"] - slow_rows["logits"]).max())
    out["argmax_equal"] = float((fast_rows["logits"].argmax(1) == slow_rows["logits"].argmax(1)).mean())
    if "masks" in fast_rows:
        out["masks_equal"] = float((fast_rows["masks"] == slow_rows["masks"]).all(-1)[same_positions].mean())
        full_fast, kept_fast = densify_packed(fast_rows["values"], fast_rows["masks"], d)
        full_slow, kept_slow = densify_packed(slow_rows["values"], slow_rows["masks"], d)
        kept = (kept_fast & kept_slow)[same_positions]                                    # (vectors, d)
    else:  # one static mask for every vector: the values line up as they are
        full_fast, full_slow = (x.astype(np.float32) for x in (fast_rows["values"], slow_rows["values"]))
        kept = np.ones(full_fast[same_positions].shape, dtype=bool)
        out["masks_equal"] = 1.0
    scale = np.maximum(np.abs(full_slow[same_positions]).max(-1, keepdims=True), 1e-6)
    error = np.abs(full_fast[same_positions] - full_slow[same_positions]) / scale
    out["value_error_q999"] = float(np.quantile(error[kept], 0.999)) if kept.any() else 0.0
    out["value_error_max"] = float(error[kept].max()) if kept.any() else 0.0
    out["ok"] = bool(out["positions_equal"] >= MIN_SAME_CHOICE and out["masks_equal"] >= MIN_SAME_CHOICE
                     and out["argmax_equal"] >= MIN_SAME_ARGMAX and out["value_error_q999"] <= MAX_VALUE_ERROR)
    return out


def plain_inference(teacher, size, device, batch_tokens, limit, store) -> float:
    """Examples/s of logits-only inference over the extraction's own chunks, batches and precision."""
    from hskstore.data.tasks import load_task, tokenize
    from hskstore.models.teacher import load_teacher, load_tokenizer
    from hskstore.runtime.device import autocast
    from hskstore.stages.extract import batch_bounds
    from hskstore.store import open_store

    task = load_task("tweets", limit=limit)
    encoded = tokenize(load_tokenizer(teacher), task.split("train"), task.spec, size["max_length"])
    model, _ = load_teacher(teacher, device=device)
    dtype = torch.float16 if open_store(store).attrs["precision"] == "fp16-autocast" else None  # as extracted
    n, chunk = len(encoded["lengths"]), size["chunk_rows"]

    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for first in range(0, n, chunk):
            rows = np.arange(first, min(first + chunk, n))
            order = rows[np.argsort(-encoded["lengths"][rows], kind="stable")]
            logits = []
            for start, stop in batch_bounds(encoded["lengths"][order], None, batch_tokens):
                batch_rows = order[start:stop]
                width = int(encoded["lengths"][batch_rows].max())
                batch = {k: torch.from_numpy(encoded[k][batch_rows, :width]).to(device)
                         for k in ("input_ids", "attention_mask", "token_type_ids")}
                with torch.inference_mode(), autocast(device, dtype):
                    logits.append(model(**batch).logits.float())
            torch.cat(logits).cpu()
        return n / (time.perf_counter() - started)

    run()  # warm-up: kernels, allocator
    return statistics.median(run() for _ in range(size["repeats"]))


def gpu_name() -> str:
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the CPU, a tiny random teacher, a few rows")
    parser.add_argument("--teacher", default=None, help="teacher directory [packaged MiniLM-L6 + seeded head]")
    parser.add_argument("--examples", type=int, default=None, help="tweets extracted on the GPU [4096]")
    parser.add_argument("--compare-rows", type=int, default=None, help="of them, extracted on the CPU too [512]")
    parser.add_argument("--skip-tests", action="store_true", help="do not run tests/runtime/test_gpu.py")
    parser.add_argument("--output", default=None, help="result JSON [benchmarks/results/gpu-<GPU name>.json]")
    args = parser.parse_args(argv)

    from hskstore.experiments.bench import time_steps
    from hskstore.experiments.demo import build_student
    from hskstore.method.compression import Compression
    from hskstore.runtime.device import describe_device, precision_for
    from hskstore.store import open_store

    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here: run this on a GPU machine, or pass --dry-run to check the script",
              file=sys.stderr)
        return 2
    began = time.perf_counter()
    size = sizes(args.dry_run)
    size.update({k: v for k, v in dict(examples=args.examples, compare_rows=args.compare_rows).items() if v})
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    work = Path(tempfile.mkdtemp(prefix="hskstore-gpu-check-"))
    phases: dict[str, float] = {}

    def phase(name, started):
        phases[name] = round(time.perf_counter() - started, 1)
        print(f"{name}: {phases[name]} s", flush=True)

    result = {"dry_run": args.dry_run, "device": describe_device(device), "sizes": size,
              "training_precision": precision_for(device).name}

    started = time.perf_counter()
    result["tests"] = ({"skipped": True, "ok": True} if args.skip_tests
                       else run_gpu_tests(timeout=BUDGET_S // 2, collect_only=args.dry_run))
    phase("gpu tests", started)

    started = time.perf_counter()
    if args.teacher:
        teacher = args.teacher
    elif args.dry_run:
        teacher = common.random_bert_teacher(work / "teacher", layers=4, hidden=32, heads=4, ffn=64)
    else:
        teacher = common.minilm_teacher(work / "teacher")
    compression = Compression(depth=2, length=9, width=0.1, student_layers=size["student_layers"])
    batch_tokens = 32768 if device.type == "cuda" else 8192  # extraction's own default per device
    stores = {"accelerated": work / "accelerated.zarr", "reference": work / "cpu.zarr"}
    rates = []
    for _ in range(size["repeats"]):
        summary = extract_store(teacher, stores["accelerated"], str(device), size["examples"], size,
                                compression, batch_tokens)
        rates.append(summary["examples_per_second"])
    extract_store(teacher, stores["reference"], "cpu", size["compare_rows"], size, compression, 8192)
    result["inference_precision"] = open_store(str(stores["accelerated"])).attrs["precision"]  # as extracted
    result["comparison"] = compare_stores(str(stores["accelerated"]), str(stores["reference"]))
    phase("extract and compare", started)

    started = time.perf_counter()
    plain = plain_inference(teacher, size, device, batch_tokens, size["examples"], str(stores["accelerated"]))
    result["extraction"] = {"examples": size["examples"], "batch_tokens": batch_tokens,
                            "extract_examples_per_second": rates, "median_extract": statistics.median(rates),
                            "median_plain": plain, "extract_over_plain": statistics.median(rates) / plain}
    phase("plain inference", started)

    started = time.perf_counter()
    student = work / "student"
    shape = dict(num_layers=2, num_heads=2, intermediate_size=32, embedding_rank=8) if args.dry_run else {}
    build_student("rosita", student, teacher=teacher, store=str(stores["accelerated"]), importance_examples=64,
                  device=str(device), progress=False, overwrite=True, **shape)
    result["training"] = time_steps(str(stores["accelerated"]), str(student), teacher, steps=size["steps"],
                                    rounds=size["rounds"], warmup=size["warmup"], batch_size=size["batch_size"],
                                    device=str(device))
    phase("training steps", started)

    result["phases_seconds"] = phases
    result["seconds"] = round(time.perf_counter() - began, 1)
    result["within_budget"] = result["seconds"] <= BUDGET_S
    result["ok"] = bool(result["tests"]["ok"] and result["comparison"]["ok"])
    result["machine"] = common.machine()
    output = Path(args.output) if args.output else (work / "gpu-dry-run.json" if args.dry_run
                                                    else common.RESULTS / f"gpu-{gpu_name()}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))

    c, e, t = result["comparison"], result["extraction"], result["training"]
    print(f"\n{result['device']}: tests {'ok' if result['tests']['ok'] else 'FAILED'}"
          f" ({result['tests'].get('summary', 'skipped')})")
    print(f"{device.type.upper()} vs CPU on {c['rows_compared']} rows: positions {c.get('positions_equal', 0):.4f} "
          f"equal, masks {c.get('masks_equal', 0):.4f}, argmax {c.get('argmax_equal', 0):.4f}, value error (99.9%) "
          f"{c.get('value_error_q999', float('nan')):.2e}: {'ok' if c['ok'] else 'FAILED'}")
    print(f"extraction {e['median_extract']:.0f} ex/s, plain inference {e['median_plain']:.0f} ex/s: "
          f"{e['extract_over_plain']:.3f}")
    m = t["median_seconds_per_step"]
    print(f"HSK step: student-only {1000 * m['student_only']:.1f} ms, offline {1000 * m['offline']:.1f} ms, "
          f"online {1000 * m['online']:.1f} ms (online / offline {t['online_over_offline']:.2f})")
    print(f"{result['seconds']} s in all (budget {BUDGET_S} s); saved {output}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    from hskstore.cli import quick_exit_gc

    try:
        code = main()
    finally:
        quick_exit_gc()  # a quicker interpreter shutdown, as hskstore's CLI
    sys.exit(code)
