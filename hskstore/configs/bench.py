"""What `hskstore bench` times: BenchConfig."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..options import option
from .common import DEVICE

__all__ = ["BenchConfig"]


@dataclass(frozen=True)
class BenchConfig:
    store: str                      # store written by `hskstore extract`
    student: str = option(help="Student directory (`hskstore student`).")
    teacher: str | None = option(None, "The store's teacher: also time online distillation.")  # adds the online mode
    steps: int = option(20, "Timed steps per mode per round.")
    rounds: int = option(3, "Interleaved rounds; medians are reported.")
    warmup: int = 3                 # untimed steps per mode first (allocator, kernels, first chunk reads)
    batch_size: int | None = option(None, "Step batch size.", default_text="64 on GPU, 16 on CPU")
    reader_batches: int = option(200, "Batches per reader timing.")
    reader_batch_size: int | None = option(None, "Batch size of the reader timing.",
                                           default_text="the task's HSK-stage batch size")
    device: str = DEVICE.field("auto")

    def __post_init__(self):
        problems = [f"{name} must be >= 1, got {getattr(self, name)}"
                    for name in ("steps", "rounds", "reader_batches") if getattr(self, name) < 1]
        if self.warmup < 0:
            problems.append(f"warmup must be >= 0, got {self.warmup}")
        for name in ("batch_size", "reader_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1, got {value}")
        if problems:
            raise ConfigError(problems)
