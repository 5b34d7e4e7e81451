"""How `hskstore train` distils a student from a store: TrainConfig."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import ConfigError
from ..method.losses import HSK_LOSSES
from ..options import option
from ..runtime.schedules import StageSchedule, default_schedules
from .common import DEVICE, OVERWRITE, SEED_RANGE, STORAGE_OPTIONS

__all__ = ["TrainConfig", "STAGES"]

STAGES = ("hsk", "pred")
_TASKS = "the task's schedule"


def _stages(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


@dataclass(frozen=True)
class TrainConfig:
    store: str                          # store written by `hskstore extract`: directory, .h5 file or URL
    student: str = option(help="Student directory (`hskstore student`).")
    output: str = option(help="Run directory: checkpoint/, student/, metrics.json.")
    teacher: str | None = option(None, "Online mode: run this teacher in the loop instead of reading HSK.")
    stages: tuple[str, ...] = option(STAGES, "hsk, pred, or hsk,pred.", parse=_stages)  # in that order
    hsk_epochs: int | None = option(None, "HSK-stage epochs.", default_text=_TASKS)  # runtime/schedules.py
    hsk_lr: float | None = option(None, "HSK-stage learning rate, constant.", default_text="5e-5")
    hsk_batch_size: int | None = option(None, "HSK-stage batch size.", default_text=_TASKS)
    pred_epochs: int | None = option(None, "Prediction-stage epochs.", default_text="5")
    pred_lr: float | None = option(None, "Prediction-stage learning rate, linear decay.", default_text=_TASKS)
    pred_batch_size: int | None = option(None, "Prediction-stage batch size.", default_text=_TASKS)
    hsk_loss: str = option("masked-zero", "masked-zero: MSE over every entry of a stored vector, the dropped "
                           "ones as zeros; kept: over the kept entries only.", choices=HSK_LOSSES)
    temperature: float = option(1.0, "Prediction-stage soft cross-entropy temperature.")
    weight_decay: float = option(0.0, "AdamW weight decay.", min=0)
    max_steps: int | None = option(None, "Stop each stage after this many steps.")  # smoke runs, benchmarks
    checkpoint_every: int | None = option(None, "Also checkpoint every N steps inside an epoch: a killed run "
                                          "resumes there, at any number of processes.")
    device: str = DEVICE.field("auto")
    amp: bool = option(True, "Float32 on CUDA: no bf16 or fp16 autocast.", flag="--no-amp", negate=True)
    #                                     CUDA: bf16 autocast (capability >= 8.0) or fp16 + GradScaler; CPU/mps: fp32
    seed: int = option(0, "Projection init, dropout and batch order.", **SEED_RANGE)
    num_workers: int = option(0, "DataLoader workers reading the store.", flag="--workers", min=0)
    eval_batch_size: int = 128
    resume: bool = option(True, "Ignore an existing checkpoint in --output (needs --overwrite).",
                          flag="--no-resume", negate=True)  # continue from output/checkpoint when it matches this run
    overwrite: bool = OVERWRITE.field(False)  # replace an existing run in output (when not resuming it)
    storage_options: dict = STORAGE_OPTIONS.field(factory=dict)  # fsspec options for a store URL (endpoint_url, ...)

    def __post_init__(self):
        problems = []
        if not self.stages or any(s not in STAGES for s in self.stages) or list(self.stages) != sorted(
                self.stages, key=STAGES.index):
            problems.append(f"stages must be a non-empty ordered subset of {list(STAGES)}, got {list(self.stages)}")
        if self.hsk_loss not in HSK_LOSSES:
            problems.append(f"hsk_loss must be one of {list(HSK_LOSSES)}, got {self.hsk_loss!r}")
        for name in ("hsk_epochs", "pred_epochs", "hsk_batch_size", "pred_batch_size", "max_steps",
                     "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1, got {value}")
        for name in ("hsk_lr", "pred_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                problems.append(f"{name} must be > 0, got {value}")
        if self.temperature <= 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.num_workers < 0:
            problems.append(f"num_workers must be >= 0 (0 reads in the main process), got {self.num_workers}")
        if not 0 <= self.seed < 2**32:
            problems.append(f"seed must be in 0..2**32-1, got {self.seed}")
        if self.eval_batch_size < 1:
            problems.append(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if problems:
            raise ConfigError(problems)

    def schedule(self, stage: str, task: str) -> StageSchedule:
        default = default_schedules(task)[stage]
        overrides = {k: getattr(self, f"{stage}_{k}") for k in ("epochs", "lr", "batch_size")}
        return replace(default, **{k: v for k, v in overrides.items() if v is not None})
