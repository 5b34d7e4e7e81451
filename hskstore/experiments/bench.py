"""How fast a user's own setup trains: HSK-stage steps student-only, offline and online, and the reader alone.

The three step modes run interleaved in rounds, so machine noise hits all of them alike, and medians
are reported (this project's CPU box is noisy: +-25% between runs). Every mode reads its batches from
the same store through the trainer's own `Trainer.step`:
- student-only: the student trains on gold labels, no distillation target (the floor);
- offline: HSK read from the store (masks turned into kept dimensions, the loss on the kept entries);
- online: the teacher runs in the loop with the same selection (needs `teacher`).
The reader is timed alone too: store chunks to device-ready `DeviceBatch`es (kept values and dimensions,
no full-width targets), in this process, in rows per second and per CPU-second.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from ..configs.bench import BenchConfig
from ..errors import StoreError

__all__ = ["BenchConfig", "bench", "time_steps", "time_reader", "format_bench"]


def _forever(trainer, stage: str, batch_size: int):
    """Batches of the store's train split, epoch after epoch."""
    epoch = 0
    while True:
        stream = trainer.stream("train", batch_size, stage, seed=epoch)
        stream.set_epoch(epoch)
        yield from stream
        epoch += 1


class _StudentOnly:
    """The floor: one step on gold labels, nothing from the teacher."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.optimizer = torch.optim.AdamW(trainer.student.parameters(), lr=5e-5)

    def step(self, batch) -> float:
        from ..store.stream import to_device

        moved = to_device(batch, self.trainer.device)
        with self.trainer.precision.autocast(self.trainer.device):
            logits = self.trainer.student(moved.input_ids, moved.attention_mask, moved.token_type_ids).logits
        loss = F.cross_entropy(logits.float(), moved.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def time_steps(store: str, student: str, teacher: str | None, *, steps: int = 20, rounds: int = 3, warmup: int = 3,
               batch_size: int | None = None, device: str = "auto", echo=None) -> dict:
    """Median seconds per HSK-stage step of each mode and the ratios between them.

    Returns:
        {"median_seconds_per_step": {mode: s}, "seconds_per_step": {mode: [s per round]},
         "offline_over_student_only": float, "online_over_offline": float | None, ...}
    """
    from ..runtime.device import resolve_device
    from ..stages.train import TrainConfig, Trainer

    resolved_device = resolve_device(device)
    batch_size = batch_size or (64 if resolved_device.type == "cuda" else 16)
    with tempfile.TemporaryDirectory(prefix="hskstore-bench-") as work:
        shared = dict(store=store, student=student, device=str(resolved_device), stages=("hsk",), resume=False,
                      overwrite=True)
        offline = Trainer(TrainConfig(output=str(Path(work) / "offline"), **shared), progress=False)
        floor = Trainer(TrainConfig(output=str(Path(work) / "floor"), **shared), progress=False)
        trainers = {"offline": offline, "floor": floor}
        if teacher:
            trainers["online"] = Trainer(TrainConfig(output=str(Path(work) / "online"), teacher=teacher, **shared),
                                         progress=False)
        for trainer in trainers.values():
            trainer.student.train()
            trainer.projection.train()
        only = _StudentOnly(floor)
        modes = {"student_only": (only.step, _forever(floor, "pred", batch_size))}
        for mode in ("offline", "online"):
            if mode in trainers:
                trainer = trainers[mode]
                optimizer = trainer.optimizer("hsk", 5e-5)
                modes[mode] = (lambda b, t=trainer, o=optimizer: t.step("hsk", o, b), _forever(trainer, "hsk", batch_size))
        per_step = {mode: [] for mode in modes}
        for step, batches in modes.values():
            for _ in range(warmup):
                step(next(batches))
        for round_ in range(rounds):
            for mode, (step, batches) in modes.items():
                started = time.perf_counter()
                for _ in range(steps):
                    step(next(batches))
                if resolved_device.type == "cuda":
                    torch.cuda.synchronize()
                per_step[mode].append((time.perf_counter() - started) / steps)
            if echo:
                echo(f"round {round_ + 1}/{rounds}: " + ", ".join(f"{m} {1000 * v[-1]:.0f} ms" for m, v in per_step.items()))
    medians = {mode: statistics.median(v) for mode, v in per_step.items()}
    return {
        "device": str(resolved_device), "batch_size": batch_size, "steps_per_round": steps, "rounds": rounds,
        "seconds_per_step": per_step, "median_seconds_per_step": medians,
        "offline_over_student_only": medians["offline"] / medians["student_only"],
        "online_over_offline": medians["online"] / medians["offline"] if "online" in medians else None,
    }


def time_reader(store: str, *, batch_size: int | None = None, batches: int = 200, repeats: int = 3,
                device: str = "auto", split: str = "train") -> dict:
    """Rows per second from the store into device-ready HSK batches (read, shuffle, kept dimensions, values).

    Returns:
        {"rows_per_second": [per repeat], "median_rows_per_second": float, "rows_per_cpu_second": [per repeat],
         "median_rows_per_cpu_second": float, "batch_size": int, ...}
    """
    from ..runtime.device import resolve_device
    from ..runtime.schedules import default_schedules
    from ..store import open_store
    from ..store.format import value_format_of
    from ..store.stream import HSK_ARRAYS, TOKEN_ARRAYS, StoreStream, to_device

    opened = open_store(store)
    resolved_device = resolve_device(device)
    batch_size = batch_size or default_schedules(opened.task["name"])["hsk"].batch_size
    static = opened.static_mask()
    static_kept = None if static is None else torch.from_numpy(static.nonzero()[0]).to(resolved_device)
    hidden = opened.resolved.hidden_size
    value_format = value_format_of(opened.compression, opened.resolved)   # int8/int4 stores decode on the device
    stream = StoreStream(store, split, batch_size, arrays=list(TOKEN_ARRAYS + HSK_ARRAYS))
    rates, cpu_rates = [], []
    for repeat in range(repeats):
        rows, started, epoch = 0, time.perf_counter(), repeat * 1000
        cpu_started = time.process_time()
        done = 0
        while done < batches:
            stream.set_epoch(epoch)
            before = done
            for batch in stream:
                to_device(batch, resolved_device, hidden, static_kept, value_format)
                rows += len(batch["labels"])
                done += 1
                if done >= batches:
                    break
            if done == before:
                raise StoreError(f"split {split!r} of {store} holds no rows to time")
            epoch += 1
        if resolved_device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(rows / (time.perf_counter() - started))
        # CPU seconds of the whole process (read-ahead thread included): on a shared machine other users'
        # load distorts this less than wall time.
        cpu_rates.append(rows / max(time.process_time() - cpu_started, 1e-9))
    return {"device": str(resolved_device), "batch_size": batch_size, "batches": batches, "repeats": repeats,
            "rows_per_second": rates, "median_rows_per_second": statistics.median(rates),
            "rows_per_cpu_second": cpu_rates, "median_rows_per_cpu_second": statistics.median(cpu_rates),
            "hidden_size": hidden, "compression": opened.compression.to_dict()}


def bench(config: BenchConfig, echo=None) -> dict:
    """Time the reader, then the step modes; returns both results and the config."""
    reader = time_reader(config.store, batch_size=config.reader_batch_size, batches=config.reader_batches,
                         device=config.device)
    steps = time_steps(config.store, config.student, config.teacher, steps=config.steps, rounds=config.rounds,
                       warmup=config.warmup, batch_size=config.batch_size, device=config.device, echo=echo)
    return {"config": asdict(config), "reader": reader, "steps": steps}


def format_bench(result: dict) -> str:
    steps, reader = result["steps"], result["reader"]
    m = steps["median_seconds_per_step"]
    lines = [f"HSK-stage step, median of {steps['rounds']} rounds x {steps['steps_per_round']} steps "
             f"({steps['device']}, batch {steps['batch_size']}):"]
    for mode in ("student_only", "offline", "online"):
        if mode in m:
            lines.append(f"  {mode:<13} {1000 * m[mode]:8.1f} ms")
    lines.append(f"  offline / student-only  {steps['offline_over_student_only']:.3f}")
    if steps["online_over_offline"] is not None:
        lines.append(f"  online / offline        {steps['online_over_offline']:.2f}")
    else:
        lines.append("  online / offline        (pass --teacher to time the online mode)")
    lines.append(f"reader: {reader['median_rows_per_second']:,.0f} rows/s into device batches, "
                 f"{reader['median_rows_per_cpu_second']:,.0f} per CPU-second "
                 f"(median of {reader['repeats']} x {reader['batches']} batches of {reader['batch_size']}, d={reader['hidden_size']})")
    return "\n".join(lines)
