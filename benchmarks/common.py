"""Shared set-up for the benchmarks: real teachers and real text, timing helpers, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

RESULTS = Path(__file__).parent / "results"


def minilm_teacher(directory: Path, num_labels: int = 3, seed: int = 0) -> str:
    """The packaged MiniLM-L6 with a seeded classifier head, saved as a teacher directory.

    Timing does not depend on fine-tuning; pass a fine-tuned teacher with --teacher to use one instead.
    """
    from hskstore.experiments.demo import packaged_teacher_path
    from hskstore.models.teacher import load_teacher, load_tokenizer

    if not (directory / "config.json").is_file():
        torch.manual_seed(seed)
        model, _ = load_teacher(packaged_teacher_path(), num_labels=num_labels)
        model.save_pretrained(directory, safe_serialization=True)
        load_tokenizer(packaged_teacher_path()).save_pretrained(directory)
    return str(directory)


def random_bert_teacher(directory: Path, layers=12, hidden=768, heads=12, ffn=3072, num_labels=3, seed=0) -> str:
    """A BERT-base-shaped teacher with random weights and the real uncased WordPiece tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification

    from hskstore.experiments.demo import packaged_teacher_path
    from hskstore.models.teacher import load_tokenizer

    if not (directory / "config.json").is_file():
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=ffn, num_labels=num_labels)
        BertForSequenceClassification(config).save_pretrained(directory, safe_serialization=True)
        load_tokenizer(packaged_teacher_path()).save_pretrained(directory)
    return str(directory)


def long_tweets_csv(path: Path, rows: int, min_words: int = 140, seed: int = 0) -> str:
    """Real tweets joined until each text fills a 128-token sequence (the paper times at max length 128)."""
    import csv
    import random

    from hskstore.data.tasks import load_task

    if path.is_file():
        return str(path)
    task = load_task("tweets")
    texts, labels = task.split("train")["text"], task.split("train")["sentiment"]
    rng = random.Random(seed)
    names = task.spec.label_names
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for _ in range(rows):
            words, label = [], None
            while len(words) < min_words:
                i = rng.randrange(len(texts))
                words += texts[i].split()
                label = names[labels[i]] if label is None else label
            writer.writerow([" ".join(words), label])
    return str(path)


def median_rate(samples: list[float]) -> float:
    return statistics.median(samples)


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = RESULTS / f"{name}-{device}.json"
    path.write_text(json.dumps(result | {"machine": machine()}, indent=2))
    return path


def study_parser(description: str, plots_help: str):
    """The options every accuracy study shares (findings.py, frontier.py): teacher, task, budget, tuning."""
    import argparse

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--hsk-epochs", type=int, default=1)
    parser.add_argument("--pred-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16, help="Both stages' batch size.")
    parser.add_argument("--lr-grid", default="2e-4,5e-4,1e-3", help="The learning rates every fair arm is tuned over.")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--plots", default=None, help=plots_help)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--task", default=None, help="Any task source [default: the task the teacher recorded].")
    parser.add_argument("--data-dir", default=None, help="GLUE names: the task's GLUE folder (as extract).")
    parser.add_argument("--text-column", action="append", default=None, help="File tasks: text column (twice for pairs).")
    parser.add_argument("--label-column", default=None, help="File tasks: label column.")
    return parser


def study_settings(args) -> dict:
    """`SweepConfig.of` keywords every arm of a study shares, from `study_parser`'s arguments."""
    task_options = {k: v for k, v in (("data_dir", args.data_dir), ("label_column", args.label_column),
                                      ("text_columns", tuple(args.text_column) if args.text_column else None))
                    if v is not None}
    return dict(teacher=args.teacher, task=args.task, task_options=task_options,
                seeds=tuple(int(s) for s in args.seeds.split(",")), student_layers=3, hsk_epochs=args.hsk_epochs,
                pred_epochs=args.pred_epochs, hsk_batch_size=args.batch_size, pred_batch_size=args.batch_size,
                limit=args.limit, device=args.device)


def lr_grid(args) -> tuple[float, ...]:
    return tuple(float(v) for v in args.lr_grid.split(","))
