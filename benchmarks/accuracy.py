"""Student dev accuracy against the amount of HSK, and the method's open choices, on one teacher.

    python benchmarks/accuracy.py --teacher runs/default/teacher [--limit 4000] [--hsk-epochs 3] [--pred-epochs 3]

One ROSITA student initialisation, one seed; each row extracts its own store from the same teacher and
trains HSK stage then prediction stage (or prediction only). Rows: prediction-only KD; (1, 9, 0.1) with
post-softmax scores (default), pre-softmax scores, and the `kept` loss; a one-token store; full HSK.
Single-seed differences of about a point are within noise on 1,000 validation tweets.
Writes benchmarks/results/accuracy-<device>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402  (sets the offline environment first)

from hskstore.method.compression import Compression  # noqa: E402
from hskstore.stages.extract import ExtractConfig, extract  # noqa: E402
from hskstore.experiments.demo import build_student  # noqa: E402
from hskstore.store.report import store_info  # noqa: E402
from hskstore.stages.train import TrainConfig, train  # noqa: E402

ROWS = [
    # name, compression kwargs (None: reuse the default store), train kwargs
    ("prediction only", "default", dict(stages=("pred",))),
    ("(1,9,0.1) softmax, masked-zero", "default", {}),
    ("(1,9,0.1) logits, masked-zero", dict(score_kind="logits"), {}),
    ("(1,9,0.1) softmax, kept", "default", dict(hsk_loss="kept")),
    ("(1,1,0.1)", dict(length=1), {}),
    ("full HSK (4, all, all)", "full", {}),
    ("(1,9,0.1) values rounded to 7 mantissa bits", dict(value_bits=7), {}),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", required=True, help="fine-tuned teacher (e.g. runs/default/teacher)")
    parser.add_argument("--limit", type=int, default=4000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--hsk-epochs", type=int, default=3)
    parser.add_argument("--pred-epochs", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--rows", nargs="*", type=int, default=None, help="indices of ROWS to run [all]")
    parser.add_argument("--seed", type=int, default=0, help="training seed (batch order, dropout)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="hskstore-accuracy-"))
    base = Compression(depth=1, length=9, width=0.1, student_layers=3)
    stores: dict[str, str] = {}

    def store_for(spec) -> str:
        key = str(spec)
        if key not in stores:
            if spec == "default":
                compression = base
            elif spec == "full":
                compression = Compression.full(student_layers=3)
            else:
                compression = Compression(**(base.to_dict() | spec))
            digest = hashlib.sha1(json.dumps(compression.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
            path = work / f"store-{digest}.zarr"  # named by its compression, so reruns reuse the right store
            if not path.exists():
                extract(ExtractConfig(teacher=args.teacher, task="tweets", output=str(path), compression=compression,
                                      max_length=args.max_length, limit=args.limit), progress=False)
            stores[key] = str(path)
        return stores[key]

    student = work / "student-init"
    if not (student / "student.json").is_file():
        build_student("rosita", student, teacher=args.teacher, store=store_for("default"),
                      importance_examples=2000, progress=False)
    results = []
    for index, (name, spec, overrides) in enumerate(ROWS):
        if args.rows is not None and index not in args.rows:
            continue
        store = store_for(spec)
        started = time.perf_counter()
        metrics = train(TrainConfig(store=store, student=str(student), output=str(work / f"run-{index}-seed{args.seed}"),
                                    hsk_epochs=args.hsk_epochs, pred_epochs=args.pred_epochs, resume=False, overwrite=True,
                                    seed=args.seed,
                                    **overrides), progress=False)
        info = store_info(store)
        row = {"name": name, "dev_accuracy": metrics["student_dev"]["accuracy"],
               "teacher_accuracy": metrics["teacher_dev"]["accuracy"],
               "amount_hsk": info["amount_hsk"] if "hsk" in metrics["config"]["stages"] else 0.0,
               "fraction_of_full": info["fraction_of_full"] if "hsk" in metrics["config"]["stages"] else 0.0,
               "hsk_bytes_per_example": info["bytes_per_example"]["hsk"] if "hsk" in metrics["config"]["stages"] else 0.0,
               "train_seconds": time.perf_counter() - started}
        results.append(row)
        print(f"{name:<34} dev acc {row['dev_accuracy']:.4f}  A^HSK {row['amount_hsk']:.2f} "
              f"({100 * row['fraction_of_full']:.2f}% of full)  HSK {row['hsk_bytes_per_example']:.0f} B/ex  "
              f"{row['train_seconds']:.0f} s", flush=True)
    name = "accuracy" if args.rows is None else "accuracy-rows-" + "-".join(map(str, args.rows))
    name += "" if args.seed == 0 else f"-seed{args.seed}"
    out = {"teacher": args.teacher, "limit": args.limit, "hsk_epochs": args.hsk_epochs,
           "pred_epochs": args.pred_epochs, "seed": args.seed, "rows": results}
    print(f"saved {common.save(name, out)}")


if __name__ == "__main__":
    main()
