"""How `hskstore finetune` makes a teacher: FinetuneConfig, and the task options extract and evaluate share."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ConfigError
from ..method.compression import strict_from_dict
from ..options import option
from .common import DEVICE, OVERWRITE, SEED_RANGE

__all__ = ["FinetuneConfig", "KEEP", "TASK_OPTIONS", "default_max_length"]

KEEP = ("best", "last")
# The options that name a task's data: finetune records them; extract and evaluate take them too.
TASK_OPTIONS = ("data_dir", "text_columns", "label_column", "validation_file", "task_name", "metric", "encoding")


def default_max_length(task) -> int:
    """The max length a task gets when none is given: 128 for GLUE and file tasks (the released code's),
    64 for the embedded tweets (short texts; the demo's teacher)."""
    return 64 if task == "tweets" else 128


def _metrics():
    from ..data.tasks import METRICS  # numpy: only for a command that shows or parses --metric

    return METRICS


@dataclass(frozen=True)
class FinetuneConfig:
    model: str = option(                   # BERT checkpoint directory (or hub name when online)
        help="BERT checkpoint directory.", cli_default=None, default_text="the packaged MiniLM-L6")
    task: str = option(help="GLUE name, 'tweets', a CSV/TSV/JSONL file or a save_to_disk directory.",
                       cli_default="tweets")
    output: str = option(help="Directory the teacher is written to.")
    max_length: int | None = option(None, "Tokens per example, [CLS]/[SEP] included.",
                                    default_text="128; tweets 64")  # None: default_max_length(task)
    batch_size: int = option(32, "Examples per optimizer step.")
    epochs: int = option(3, "Passes over the training split; the best epoch on validation is kept.")
    lr: float = option(1e-4, "Peak AdamW learning rate (1e-4 beat 5e-5 on MiniLM).")  # 0.726 vs 0.666 dev acc, 2000 tweets
    warmup_fraction: float = 0.1           # share of steps with linear warm-up, then linear decay to 0
    weight_decay: float = 0.01             # not applied to biases and LayerNorm weights
    max_grad_norm: float = 1.0
    limit: int | None = option(None, "Examples kept: LIMIT train, LIMIT//4 validation.", default_text="all")
    seed: int = option(0, "Classifier init, dropout and batch order.", **SEED_RANGE)  # the split uses data_seed
    data_seed: int = option(0, "Train/validation split and --limit subset.", **SEED_RANGE)  # keep it for all stages
    device: str = DEVICE.field("auto")
    keep: str = "best"                     # best: epoch with the best validation metric; last: final epoch
    text_columns: tuple[str, ...] | None = option(  # default ("text",)
        None, "File tasks: text column (twice for pairs).", flag="--text-column", multiple=True,
        parse=lambda columns: tuple(columns) or None)
    label_column: str | None = option(None, "File tasks: label column.", default_text="label")
    label_names: tuple[str, ...] | None = None    # file tasks: class names; () means regression
    validation_file: str | None = option(None, "File tasks: a separate validation file.")
    validation_fraction: float = 0.1       # tweets and file tasks: held-out share
    data_dir: str | None = option(
        None, "GLUE names: the task's GLUE folder, a save_to_disk directory, or a cached hub id.")
    task_name: str | None = option(None, "File tasks: the task's name.", default_text="the file's stem")
    metric: str | None = option(None, "File tasks: the metric.", choices=_metrics,
                                default_text="accuracy, or pearson_spearman for numeric scores")
    encoding: str | None = option(None, "File tasks: the files' text encoding (e.g. latin-1).",
                                  default_text="utf-8")
    resume: bool = option(True, "Ignore an unfinished run's checkpoint in --output.", flag="--no-resume",
                          negate=True)         # continue from output/checkpoint (written every epoch) when it matches
    overwrite: bool = OVERWRITE.field(False)  # replace an existing teacher in output

    def __post_init__(self):
        if self.max_length is None:
            object.__setattr__(self, "max_length", default_max_length(self.task))
        problems = []
        for name in ("max_length", "batch_size", "epochs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if isinstance(self.max_length, int) and self.max_length < 4:
            problems.append(f"max_length must leave room for [CLS], text and [SEP]: expected >= 4, got {self.max_length}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_fraction < 1:
            problems.append(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.max_grad_norm > 0:
            problems.append(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        for name in ("seed", "data_seed"):  # numpy and torch generators take 0..2**32-1
            if not isinstance(getattr(self, name), int) or not 0 <= getattr(self, name) < 2**32:
                problems.append(f"{name} must be an integer in 0..2**32-1, got {getattr(self, name)!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            problems.append(f"limit must be a positive integer or None, got {self.limit!r}")
        if self.keep not in KEEP:
            problems.append(f"keep must be one of {list(KEEP)}, got {self.keep!r}")
        if not (self.device in ("auto", "cpu", "mps") or str(self.device).startswith("cuda")):
            problems.append(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if not 0 < self.validation_fraction < 1:
            problems.append(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if problems:
            raise ConfigError(problems)
        for name in ("model", "task", "output", "validation_file", "data_dir"):  # Paths become str: the config goes to JSON
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str(getattr(self, name)))
        for name in ("text_columns", "label_names"):  # lists from JSON/CLI become tuples: frozen and hashable
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
            elif isinstance(value, str):
                object.__setattr__(self, name, (value,))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FinetuneConfig":
        return strict_from_dict(cls, data, "finetune")

    def task_options(self) -> dict:
        """Keyword arguments for `load_task` that reproduce this run's task and split."""
        return {"limit": self.limit, "seed": self.data_seed, **self.task_source()}

    def task_source(self) -> dict:
        """The `load_task` options that name the data (not the subset): recorded for later stages."""
        return {"text_columns": self.text_columns, "label_column": self.label_column,
                "label_names": self.label_names, "validation_file": self.validation_file,
                "validation_fraction": self.validation_fraction, "data_dir": self.data_dir,
                "task_name": self.task_name, "metric": self.metric,
                **({"encoding": self.encoding} if self.encoding is not None else {})}
