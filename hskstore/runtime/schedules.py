"""The paper's training schedules (appendix B, Table 4) as defaults per task."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StageSchedule", "default_schedules"]


@dataclass(frozen=True)
class StageSchedule:
    epochs: int
    lr: float
    batch_size: int
    decay: str            # "constant" (HSK stage) | "linear" (prediction stage)


# task: (HSK epochs, HSK batch, prediction lr, prediction batch). HSK lr is 5e-5 constant everywhere;
# prediction runs 5 epochs with linear decay. QQP is not in Table 4: it follows MNLI, its sibling in size.
_TABLE4 = {
    "cola": (30, 32, 2e-5, 32),
    "sst2": (10, 32, 2e-5, 32),
    "qnli": (5, 64, 2e-5, 64),
    "mnli": (5, 64, 5e-5, 64),
    "qqp": (5, 64, 5e-5, 64),
    "mrpc": (20, 32, 2e-5, 32),
    "rte": (20, 32, 2e-5, 32),
    "stsb": (20, 32, 2e-5, 32),
}
# Other tasks (tweets, local files): SST-2's row, the closest in kind (short single sentences).
_OTHER = _TABLE4["sst2"]


def default_schedules(task: str) -> dict[str, StageSchedule]:
    hsk_epochs, hsk_batch, pred_lr, pred_batch = _TABLE4.get(task, _OTHER)
    return {
        "hsk": StageSchedule(epochs=hsk_epochs, lr=5e-5, batch_size=hsk_batch, decay="constant"),
        "pred": StageSchedule(epochs=5, lr=pred_lr, batch_size=pred_batch, decay="linear"),
    }
