"""Teacher-free student distillation from a store: HSK stage, then prediction stage.

A plain-PyTorch recipe over library pieces, read top to bottom: `Trainer.__init__` sets up (store, student,
projection, where the teacher's targets come from), `train()` runs the stages, `_run_stage` runs one
(epochs of steps, each epoch ending in a checkpoint), `_loss_step` returns the named loss of one batch.
The pieces live below: the teacher's side of a batch in `store.targets` (read from the store offline,
computed by the teacher in the loop online: one interface), batches in `store.stream`, the losses in
`method.sparse_loss` (HSK, from the kept entries) and `method.losses` (prediction), checkpoints (shared
with finetune) in `runtime.checkpoint`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import weakref
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.metrics import compute_metrics, primary_metric
from ..errors import ConfigError, StoreError
from ..configs.train import STAGES, TrainConfig
from ..method.losses import prediction_loss
from ..method.sparse_loss import sparse_hsk_loss
from ..models.student import load_student, read_student_meta, save_student
from ..runtime import distributed
from ..runtime.checkpoint import fingerprint_files, load_weights, read_state, recover, restore_optimizer, resumable, save_checkpoint
from ..runtime.device import describe_device, precision_for
from ..runtime.outputs import check_output_dir
from ..runtime.preflight import check_writable
from ..runtime.schedules import StageSchedule
from ..store import normalize_location, open_store
from ..store.stream import DeviceBatch, Prefetcher, StoreStream, keep_numpy, to_device
from ..store.targets import targets_for

__all__ = ["TrainConfig", "Trainer", "train", "store_identity", "STAGES"]

LOG_EVERY = 20  # steps between reads of the loss: each read waits for the accelerator to catch up


class Trainer:
    """Setup in `__init__`; `train()` runs the stages, `step` and `loss_on` are one batch (bench, checks)."""

    def __init__(self, config: TrainConfig, progress: bool = True):
        self.config = config
        self.progress = progress
        # Under torchrun: this rank, its device (cuda:LOCAL_RANK) and an open process group.
        self.world, self.device = distributed.setup(config.device)
        # Before the store and student load; by rank 0 alone (--overwrite deletes), the others wait for it.
        distributed.run_on_main(self.world, "preparing the output",
                                lambda: (_check_output(config), check_writable(config.output)))
        self.store = open_store(config.store, storage_options=config.storage_options)
        self.resolved = self.store.resolved
        self.task = self.store.task
        self._check_student_positions()
        torch.manual_seed(config.seed)
        self.student = load_student(config.student, device=self.device)
        self._student_fingerprint = fingerprint_files(config.student)   # the initial student, for the run key
        self._check_student()
        d_s, d = self.student.hidden_size, self.resolved.hidden_size
        # P: one projection d_S -> d shared by all layers (TinyBERT); none when the widths agree.
        self.projection = (nn.Linear(d_s, d) if d_s != d else nn.Identity()).to(self.device)
        depth = self.resolved.depth
        self.student_layers = list(range(self.student.num_layers - depth + 1, self.student.num_layers + 1))
        # The teacher's logits and HSK: read from the store, or from config.teacher run in the loop.
        self.targets = targets_for(self.store, config.teacher, self.device)
        self.precision = precision_for(self.device, config.amp)
        self._scalers = weakref.WeakKeyDictionary()  # one loss scaler per optimizer (scaler_for)
        self._ddp = None  # the DistributedDataParallel wrapper of the running stage, under torchrun
        self.history: list[dict] = []
        self.output = Path(config.output)
        self.checkpoint = self.output / "checkpoint"

    # ------------------------------------------------------------------ setup checks
    def _check_student_positions(self):
        """The store's max length must fit the student's position embeddings (read from student.json, no weights)."""
        positions = read_student_meta(self.config.student)["config"].get("max_position_embeddings", 512)
        if self.resolved.max_length > positions:
            raise StoreError(f"store {self.config.store} holds sequences of up to {self.resolved.max_length} tokens but "
                             f"the student {self.config.student} has {positions} positions (max_position_embeddings): "
                             "build a student with more positions, or extract with a smaller --max-length")

    def _check_student(self):
        teacher, student, depth = self.store.teacher, self.student, self.resolved.depth
        problems = []
        if student.vocab_size != teacher["vocab_size"]:
            problems.append(f"the student's vocabulary has {student.vocab_size} tokens but the store's token ids come "
                            f"from a {teacher['vocab_size']}-token tokenizer: build the student from this store's teacher")
        if student.num_labels != self.store.num_labels:
            problems.append(f"the student predicts {student.num_labels} labels, the store's task "
                            f"{self.task['name']!r} has {self.store.num_labels}: build the student for this store "
                            f"(`hskstore student ... --store {self.config.store}`)")
        if student.num_layers < depth - 1:
            problems.append(f"the store holds N^D={depth} layers (embedding included) but the student has only "
                            f"{student.num_layers} layers: use a student with >= {depth - 1} layers or a store with "
                            f"a smaller --depth")
        if problems:
            raise StoreError("store/student mismatch: " + "; ".join(problems))

    # ------------------------------------------------------------------ data
    def stream(self, split: str, batch_size: int, stage: str | None, shuffle: bool = True, seed: int = 0):
        """Batches of `split` with the arrays `stage` trains on: this rank's share; all of it for stage None."""
        share = {} if stage is None else {"rank": self.world.rank, "world_size": self.world.world_size}
        return StoreStream(self.config.store, split, batch_size, arrays=list(self.targets.arrays(stage)),
                           shuffle=shuffle, seed=seed, storage_options=self.config.storage_options, **share)

    def device_batch(self, batch: dict[str, np.ndarray]) -> DeviceBatch:
        """A numpy batch on the device with its teacher targets: read from the store, or from the teacher online."""
        return self.targets(self._stage_batch(batch))

    def _stage_batch(self, batch: dict[str, np.ndarray]) -> DeviceBatch:
        """Pin and copy a numpy batch to the device; runs in the prefetch thread during training."""
        return self.targets.to_device(batch)

    # ------------------------------------------------------------------ one step
    def _loss_step(self, stage: str, batch: DeviceBatch) -> dict[str, torch.Tensor]:
        with self.precision.autocast(self.device):
            out = self.student(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        if stage == "hsk":
            hidden = [out.hidden_states[i] for i in self.student_layers]
            with self.precision.autocast(self.device):
                # From the kept values and their dimensions: no full-width teacher target is ever made.
                loss = sparse_hsk_loss(hidden, batch.positions, batch.values, batch.kept, self.projection,
                                       self.resolved.hidden_size, self.config.hsk_loss)
        else:
            loss = prediction_loss(out.logits, batch.logits, batch.labels, self.config.temperature)
        return {"loss": loss}

    def step(self, stage: str, optimizer: torch.optim.Optimizer, batch: dict[str, np.ndarray]) -> float:
        """One optimisation step on a numpy batch from the store; returns its loss."""
        return float(self._train_step(stage, optimizer, self.device_batch(batch)))

    def _train_step(self, stage: str, optimizer, batch: DeviceBatch) -> torch.Tensor:
        """One step; returns the loss as a device tensor (reading it would wait for the device)."""
        loss = self._loss_step(stage, batch)["loss"] if self._ddp is None else self._global_batch_loss(stage, batch)
        scaler = self.scaler_for(optimizer)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    def _global_batch_loss(self, stage: str, batch: DeviceBatch) -> torch.Tensor:
        """This rank's loss under DDP, weighted so that the mean of the ranks' gradients is the global batch's.

        The weight is the rank's share of what the global batch's loss averages over (examples; filled token
        slots in the HSK stage) times the world size, so ranks may hold different numbers of examples. The
        shares are summed on the device: no wait for the host.
        """
        loss = self._ddp(batch)
        if stage == "hsk":
            count = (batch.positions[:, 0] >= 0).sum().float()       # filled slots, the same in every layer
        else:
            count = torch.full((), float(len(batch.labels)), device=loss.device)
        total = distributed.all_reduce_sum(count.clone(), self.world)
        return loss * (count * self.world.world_size / total.clamp(min=1))

    def optimizer(self, stage: str, lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self._parameters(stage), lr=lr, weight_decay=self.config.weight_decay)

    def scaler_for(self, optimizer: torch.optim.Optimizer) -> torch.amp.GradScaler:
        """The loss scaler of `optimizer`, made with its first step and kept as long as the optimizer lives.

        With fp16 the scale is learned over steps: a scaler made per step would restart at 2**16 every
        step and skip overflowing steps unseen. Disabled (a no-op) for bf16 and fp32.
        """
        if optimizer not in self._scalers:
            self._scalers[optimizer] = self.precision.scaler(self.device)
        return self._scalers[optimizer]

    def _parameters(self, stage: str):
        params = list(self.student.parameters())
        if stage == "hsk":
            params += list(self.projection.parameters())
        return params

    def loss_on(self, stage: str, batch: dict[str, np.ndarray]) -> float:
        """The loss of one numpy batch without updating anything (for checks and tests)."""
        self.student.eval()
        with torch.no_grad():
            return float(self._loss_step(stage, self.device_batch(batch))["loss"])

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, split: str = "validation") -> dict[str, float]:
        self.student.eval()
        logits, labels = [], []
        for batch in self.stream(split, self.config.eval_batch_size, stage=None, shuffle=False):
            moved = to_device(batch, self.device)
            with self.precision.autocast(self.device):
                out = self.student(moved.input_ids, moved.attention_mask, moved.token_type_ids)
            logits.append(out.logits.float().cpu().numpy())
            labels.append(batch["labels"].copy())  # a view would keep its whole buffer alive
        return compute_metrics(self.task["metric"], np.concatenate(logits), np.concatenate(labels))

    def teacher_metrics(self, split: str = "validation") -> dict[str, float]:
        """The teacher's dev metrics, from the logits stored with the data."""
        reader = self.store.split(split)
        data = reader.read_rows(0, reader.num_examples, ["logits", "labels"])
        return compute_metrics(self.task["metric"], data["logits"], data["labels"])

    # ------------------------------------------------------------------ the stages
    def train(self) -> dict:
        """Run the configured stages; returns the metrics written to output/metrics.json (by rank 0)."""
        main = self.world.is_main
        if main:
            self.output.mkdir(parents=True, exist_ok=True)
        # Rank 0 alone reads the checkpoint (another machine may not see --output); every rank resumes as it does.
        state = distributed.run_on_main(self.world, "reading the checkpoint", self._resume)
        self.history = distributed.broadcast_object(self.history, self.world)
        for part in (self.student, self.projection):
            distributed.share_state(part, self.world)
        done = state.get("stages_done", [])
        for stage in self.config.stages:
            if stage in done:
                continue
            self._run_stage(stage, state)
            done.append(stage)
            state = {"stages_done": done, "best": state.get("best")}
            if main:
                self._save_checkpoint({"stages_done": done, "best": state["best"]}, None)
        if main and "pred" not in self.config.stages:
            self._save_student(self.output / "student", self.history[-1].get("dev") if self.history else None)
        result = self._metrics(state.get("best"))
        if main:
            (self.output / "metrics.json").write_text(json.dumps(result, indent=2))
        distributed.barrier(self.world)
        return result

    def _run_stage(self, stage: str, state: dict) -> None:
        """One stage: its data, optimizer and resume point, then epochs of steps, each ending in a checkpoint."""
        schedule = self._schedule(stage)
        # One step is one global batch of B examples of the epoch's global order (seed, epoch): each rank takes
        # its B / world size slice of it, so any number of processes steps through the same batches.
        stream = self.stream("train", schedule.batch_size // self.world.world_size, stage, seed=self.config.seed)
        epoch_steps = [self._epoch_steps(stream, epoch) for epoch in range(schedule.epochs)]
        total = min(sum(epoch_steps), self.config.max_steps or sum(epoch_steps))
        optimizer = self.optimizer(stage, schedule.lr)
        resumed = state if state.get("stage") == stage else {}  # the checkpoint was written inside this stage
        if resumed:  # read by rank 0, its state sent to the others
            scaler = self.scaler_for(optimizer)
            distributed.run_on_main(self.world, "loading the optimizer",
                                    lambda: restore_optimizer(self.checkpoint, optimizer, scaler, resumed.get("scaler")))
            distributed.share_state(optimizer, self.world)
            if resumed.get("scaler") and not self.world.is_main:
                scaler.load_state_dict(resumed["scaler"])
        step, best = resumed.get("step", 0), state.get("best")
        # A checkpoint inside an epoch records the examples of its global order already trained on (at any
        # world size): the epoch resumes at the next one.
        start = resumed.get("examples", 0)
        self._ddp = self._distributed_loss(stage)
        for epoch in range(resumed.get("epoch", 0), schedule.epochs):
            if step >= total:
                break
            stream.set_epoch(epoch, start)
            record = self._train_epoch(stage, epoch, stream, schedule, optimizer, step, total,
                                       {"best": best, "stages_done": state.get("stages_done", [])})
            step, start = record["step"], 0
            best = self._end_epoch(record, best, optimizer, state.get("stages_done", []))
        self._ddp = None
        state.update(best=best)

    def _schedule(self, stage: str) -> StageSchedule:
        schedule = self.config.schedule(stage, self.task["name"])
        if schedule.batch_size % self.world.world_size:
            raise ConfigError(f"the {stage} batch size {schedule.batch_size} is per global batch and must split evenly "
                              f"over {self.world.world_size} processes: pass --{stage}-batch-size as a multiple of "
                              f"{self.world.world_size}")
        return schedule

    def _epoch_steps(self, stream: StoreStream, epoch: int) -> int:
        stream.set_epoch(epoch)
        return stream.num_batches(self.config.num_workers)  # the same on every rank (StoreStream.batch_plan)

    def _distributed_loss(self, stage: str):
        """Under torchrun, the stage's loss in DistributedDataParallel (gradients averaged over ranks); else None."""
        if not self.world.distributed:
            return None
        from torch.nn.parallel import DistributedDataParallel

        # The HSK stage leaves the classifier unused; the prediction stage the projection.
        return DistributedDataParallel(_StageLoss(self, stage),
                                       device_ids=[self.device] if self.device.type == "cuda" else None,
                                       find_unused_parameters=stage == "hsk")

    def _train_epoch(self, stage: str, epoch: int, stream: StoreStream, schedule: StageSchedule, optimizer,
                     step: int, total: int, carried: dict) -> dict:
        """One epoch's steps from the stream's start (ending early at the stage's `total`); returns its record.

        With --checkpoint-every N, every N-th step also writes a checkpoint with the examples consumed so far
        (`carried`: the best dev metrics and stages done that it records too).
        """
        world, every = self.world, self.config.checkpoint_every
        bounds = stream.global_batches()  # (start, stop) in the epoch's global order of each remaining step
        # Dropout draws from a per-epoch seed, so a run resumed at an epoch boundary is the same run.
        torch.manual_seed(self.config.seed * 10_000 + STAGES.index(stage) * 1_000 + epoch + 100_000 * world.rank
                          + 1_000_003 * stream.start)
        self.student.train()
        self.projection.train()
        bar = tqdm(total=len(bounds), desc=f"{stage} {epoch + 1}/{schedule.epochs}",
                   disable=not (self.progress and world.is_main), unit="step")
        losses, started, seen = _LossLog(world), time.perf_counter(), 0
        batches = self._loader(stream)
        try:
            for done, moved in enumerate(batches, 1):
                for group in optimizer.param_groups:
                    group["lr"] = _learning_rate(schedule, step, total)
                moved = self.targets(moved)
                losses.add(self._train_step(stage, optimizer, moved))
                step += 1
                seen += len(moved.labels)
                bar.update(1)
                if losses.waiting >= LOG_EVERY:
                    rate = seen / (time.perf_counter() - started)
                    bar.set_postfix(loss=f"{losses.read()[-1]:.4f}", ex_s=f"{rate:.0f}")
                if step >= total:
                    break
                if every and step % every == 0 and done < len(bounds):
                    self._checkpoint_inside(stage, epoch, step, bounds[done - 1][1], carried, optimizer)
            losses.read()
        finally:
            batches.close()  # also when a step raises (out of memory...): no thread left reading
            bar.close()
        seconds = time.perf_counter() - started
        return {"stage": stage, "epoch": epoch + 1, "step": step, "loss": float(np.mean(losses.values)),
                **({"resumed_at_example": stream.start} if stream.start else {}),
                "step_losses": losses.values, "seconds": seconds, "examples_per_second": seen / max(seconds, 1e-9)}

    def _checkpoint_inside(self, stage: str, epoch: int, step: int, examples: int, carried: dict, optimizer) -> None:
        """Rank 0 checkpoints after `examples` examples of the epoch's global order; every rank waits for it."""
        if self.world.is_main:
            self._save_checkpoint({"stage": stage, "epoch": epoch, "examples": examples, "step": step,
                                   "best": carried["best"], "stages_done": carried["stages_done"],
                                   "scaler": self.scaler_for(optimizer).state_dict()}, optimizer)
        distributed.barrier(self.world)

    def _loader(self, stream: StoreStream) -> Prefetcher:
        """The stream's batches, moved to the device in a thread (read by worker processes when asked)."""
        source = stream
        if self.config.num_workers:
            source = DataLoader(stream, batch_size=None, num_workers=self.config.num_workers, collate_fn=keep_numpy)
        return Prefetcher(source, transform=self._stage_batch)

    def _end_epoch(self, record: dict, best: dict | None, optimizer, stages_done: list) -> dict | None:
        """Rank 0 scores the dev split, keeps the best student and writes the checkpoint; every rank waits for it.

        Dev scores come after the last stage's epochs only (the prediction stage's, or the HSK stage's alone).
        Returns the best dev metrics so far.
        """
        stage = record["stage"]
        if self.world.is_main and (stage == "pred" or "pred" not in self.config.stages):
            record["dev"] = self.evaluate()
            key = primary_metric(self.task["metric"])
            if stage == "pred" and (best is None or record["dev"][key] > best[key]):
                best = record["dev"]
                self._save_student(self.output / "student", best)
        self.history.append(record)
        if self.world.is_main:
            self._save_checkpoint({"stage": stage, "epoch": record["epoch"], "step": record["step"], "best": best,
                                   "stages_done": stages_done,
                                   "scaler": self.scaler_for(optimizer).state_dict()}, optimizer)  # {} unless fp16
        distributed.barrier(self.world)  # no rank moves on before the epoch's checkpoint is on disk
        return best

    def _metrics(self, best: dict | None) -> dict:
        return {
            "mode": self.targets.mode,
            "store": normalize_location(self.config.store),
            "task": self.task["name"],
            "metric": self.task["metric"],
            "compression": self.store.compression.to_dict(),
            "amount_hsk": self.resolved.amount(),
            "teacher_dev": self.teacher_metrics(),
            "student_dev": best or (self.history[-1].get("dev") if self.history else None),
            "history": _without_step_losses(self.history),
            # Local paths absolute (metrics.json is read from anywhere); storage options by name only: they
            # can hold credentials.
            "config": _absolute_paths(asdict(self.config)) | {"storage_options": sorted(self.config.storage_options)},
            "device": describe_device(self.device),
            "precision": self.precision.name,
            "world_size": self.world.world_size,
        }

    # ------------------------------------------------------------------ persistence (safetensors + JSON only)
    def _save_student(self, directory: Path, dev: dict | None = None):
        from ..models.card import invocation, write_model_card

        if directory.exists():
            shutil.rmtree(directory)
        save_student(self.student, directory)
        self.store.save_tokenizer(directory)
        (directory / "task.json").write_text(json.dumps(store_task_record(self.store)))
        teacher = self.store.teacher or {}
        write_model_card(directory, title=f"hskstore student ({', '.join(self.config.stages)} from an HSK store)",
                         role="student", task=self.task, metrics=dev, split="validation",
                         base_model=teacher.get("path") or teacher.get("name"),
                         compression=self.store.compression.to_dict(), amount_hsk=self.resolved.amount(),
                         command=invocation(),
                         notes=[f"Distilled from the store `{normalize_location(self.config.store)}` (teacher "
                                f"`{teacher.get('path') or teacher.get('name')}`); the student started from "
                                f"`{os.path.abspath(self.config.student)}`."])

    def _run_key(self) -> dict:
        c = self.config
        return {"store": normalize_location(c.store), "student": os.path.abspath(c.student), "stages": list(c.stages),
                "teacher": c.teacher, "seed": c.seed, "hsk_loss": c.hsk_loss, "max_steps": c.max_steps,
                "temperature": c.temperature, "weight_decay": c.weight_decay, "amp": c.amp,
                "schedules": {s: asdict(c.schedule(s, self.task["name"])) for s in c.stages},
                # The same path can hold another store (re-extracted with --overwrite): compare contents' identity.
                "store_identity": store_identity(self.store.attrs), "compression": self.store.attrs.get("compression"),
                "student_fingerprint": self._student_fingerprint}

    def _save_checkpoint(self, state: dict, optimizer) -> None:
        """checkpoint/: student/, projection.safetensors (P as a layer), the optimizer inside a stage, state.json."""
        projection = {"projection": self.projection.state_dict()} if isinstance(self.projection, nn.Linear) else {}
        history = _without_step_losses(self.history)
        save_checkpoint(self.checkpoint, state | {"run": self._run_key(), "history": history},
                        weights=projection, optimizer=optimizer,
                        write=lambda tmp: save_student(self.student, tmp / "student"))

    def _resume(self) -> dict:
        """The state of this run's checkpoint with its weights loaded into the student and P; {} without one.

        Rank 0 alone calls it (through `distributed.run_on_main`): the checkpoint is on its disk.
        """
        recover(self.checkpoint)  # a crash between the renames of a checkpoint swap: the old one stands
        if not (self.config.resume and (self.checkpoint / "state.json").is_file()):
            return {}
        # The batch order no longer depends on workers or processes: a run resumes with any number of either.
        state = read_state(self.checkpoint, self._run_key(), self._different_run, ignore=("num_workers", "world_size"))
        self.student.load_state_dict(load_student(self.checkpoint / "student", device=self.device).state_dict())
        projection = load_weights(self.checkpoint, "projection", self.device)
        if projection is not None:
            self.projection.load_state_dict(projection)
        self.history = state.pop("history", [])
        return state

    def _different_run(self, changed: list[str], recorded: dict) -> str:
        if recorded and "store_identity" not in recorded:
            why = "written by an hskstore that did not record the store's identity"
        elif "student_fingerprint" in changed and recorded.get("student_fingerprint"):
            why = f"the initial student {self.config.student} was replaced since the run started"
        elif {"store_identity", "compression"} & set(changed):
            why = "the store was replaced or re-extracted since"
        else:
            why = "other store, student, stages or schedule"
        return (f"{self.checkpoint} belongs to a different run ({why}: {', '.join(changed)} differ); "
                "use another --output, or --no-resume to start over")


def _check_output(config: TrainConfig) -> None:
    """Resume a matching checkpoint, else refuse a non-empty output unless overwrite (only a run's)."""
    if config.overwrite or not (config.resume and resumable(Path(config.output) / "checkpoint")):
        check_output_dir(Path(config.output), "run", config.overwrite)


def _learning_rate(schedule: StageSchedule, step: int, total: int) -> float:
    """The stage's lr: constant, or decayed linearly to 0 over its `total` steps."""
    factor = 1.0 if schedule.decay == "constant" else max(0.0, 1 - step / max(total, 1))
    return schedule.lr * factor


def _without_step_losses(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "step_losses"} for h in history]


class _LossLog:
    """Step losses kept on the device and read in batches: each read waits for the accelerator to catch up."""

    def __init__(self, world):
        self.world, self.pending, self.values = world, [], []

    @property
    def waiting(self) -> int:
        return len(self.pending)

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(loss)

    def read(self) -> list[float]:
        """Every loss so far; the global batch's is the sum of the ranks' weighted losses over the world size."""
        if self.pending:
            values = distributed.all_reduce_sum(torch.stack(self.pending).float(), self.world) / self.world.world_size
            self.values.extend(values.tolist())
            self.pending.clear()
        return self.values


def store_task_record(store) -> dict:
    """task.json of a student made from `store`: its task, max length, and how to reload its exact split.

    Evaluating on another split would leak training rows; paths are absolute so any directory works.
    """
    from ..data.tasks import absolute_task_ref

    attrs = store.attrs
    reference = attrs.get("task_ref") or {"task": store.task["name"], "options": {}}
    return {"task": store.task, "max_length": store.resolved.max_length,
            "task_ref": absolute_task_ref(reference["task"], reference.get("options")),
            "data_seed": attrs.get("data_seed", 0), "limit": attrs.get("limit")}


def store_identity(attrs: dict) -> dict:
    """What names a store's contents: its UUID, else its creation time, compression and teacher fingerprint."""
    if attrs.get("uuid"):
        return {"uuid": attrs["uuid"]}
    return {"created_at": attrs.get("created_at"), "compression": attrs.get("compression"),
            "teacher_fingerprint": attrs.get("teacher_fingerprint")}


def _absolute_paths(config: dict) -> dict:
    """The run's recorded config with its local paths absolute: metrics.json is read from anywhere."""
    return config | {k: os.path.abspath(config[k]) for k in ("store", "student", "output", "teacher")
                     if config.get(k) and Path(config[k]).exists()}


class _StageLoss(nn.Module):
    """The student (and, in the HSK stage, the projection) behind one forward that returns the loss:
    the module DistributedDataParallel wraps, so the gradients of both are averaged over the ranks."""

    def __init__(self, trainer: "Trainer", stage: str):
        super().__init__()
        self.student = trainer.student
        self.projection = trainer.projection if stage == "hsk" else None
        self.stage = stage
        self._loss_step = trainer._loss_step

    def forward(self, batch: DeviceBatch) -> torch.Tensor:
        return self._loss_step(self.stage, batch)["loss"]


def train(config: TrainConfig, progress: bool = True) -> dict:
    """Train a student; under torchrun every rank runs this and rank 0 writes the outputs."""
    with distributed.process_group(config.device):
        return Trainer(config, progress=progress).train()
