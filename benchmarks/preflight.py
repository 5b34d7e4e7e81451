"""What identity and up-front checks cost: the teacher fingerprint and the pre-load checks against loading the teacher.

    python benchmarks/preflight.py [--repeats 5] [--no-bert-base]

For the packaged MiniLM-L6 teacher (90 MB of safetensors) and a BERT-base-shaped one (440 MB), times
`teacher_fingerprint` (SHA-256 of config, weights and tokenizer, streamed, uncached: run once per
`extract`), the checks that run before anything loads (`check_writable`, `check_bert_family`,
`check_tokenizer_files`, `check_max_length`), and, as the baseline in the same run, `load_teacher`.
Prints medians and the fingerprint/load ratio; writes benchmarks/results/preflight-<device>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402  (sets the offline environment first)

from hskstore.runtime.preflight import check_writable  # noqa: E402
from hskstore.models.teacher import (check_bert_family, check_max_length, check_tokenizer_files, load_teacher,  # noqa: E402
                              teacher_fingerprint)


def _checks(teacher: str, output: Path) -> None:
    check_writable(output)
    config = check_bert_family(teacher)
    check_tokenizer_files(teacher)
    check_max_length(128, config, "the teacher", teacher)


def measure(name: str, teacher: str, repeats: int, workdir: Path) -> dict:
    weights = sum(p.stat().st_size for p in Path(teacher).glob("*.safetensors"))
    teacher_fingerprint(teacher)  # first read warms the page cache: every timing below reads from memory
    fingerprint = common.timed(lambda: teacher_fingerprint(teacher), repeats)
    checks = common.timed(lambda: _checks(teacher, workdir / "out" / "s.zarr"), repeats)
    load = common.timed(lambda: load_teacher(teacher), max(1, repeats // 2 + 1))
    row = {"teacher": name, "weight_bytes": weights, "repeats": repeats,
           "fingerprint_seconds_median": statistics.median(fingerprint),
           "fingerprint_mb_per_second": weights / 1e6 / statistics.median(fingerprint),
           "checks_seconds_median": statistics.median(checks),
           "load_teacher_seconds_median": statistics.median(load),
           "fingerprint_over_load": statistics.median(fingerprint) / statistics.median(load)}
    print(f"{name:10s} {weights / 1e6:6.0f} MB  fingerprint {row['fingerprint_seconds_median']:.3f} s "
          f"({row['fingerprint_mb_per_second']:.0f} MB/s)  checks {row['checks_seconds_median'] * 1e3:.2f} ms  "
          f"load_teacher {row['load_teacher_seconds_median']:.3f} s  fingerprint/load {row['fingerprint_over_load']:.2f}")
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-bert-base", action="store_true", help="Skip the 440 MB BERT-base-shaped teacher.")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows.append(measure("MiniLM-L6", common.minilm_teacher(tmp / "minilm"), args.repeats, tmp))
        if not args.no_bert_base:
            rows.append(measure("BERT-base", common.random_bert_teacher(tmp / "bert-base"), args.repeats, tmp))
    path = common.save("preflight", {"rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
