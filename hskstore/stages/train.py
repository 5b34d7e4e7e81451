"""Teacher-free student distillation from a store: HSK stage, then prediction stage.

Plain PyTorch, read top to bottom: `Trainer.__init__` sets up (store, student, projection, optional
online teacher), `train()` runs the stages, `_loss_step` returns the named loss of one batch. Online
mode (`teacher=`) reads only tokens and labels from the store and recomputes the same selection with
the teacher in the loop: the baseline for speed and the check that offline is the same distillation.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..runtime import distributed
from ..runtime.device import describe_device, inference_precision, precision_for
from ..errors import ConfigError, StoreError
from ..method.losses import HSK_LOSSES, hsk_loss, prediction_loss
from ..data.metrics import compute_metrics, primary_metric
from ..runtime.checkpoint import load_optimizer, save_optimizer, swap_in
from ..runtime.preflight import check_writable
from ..runtime.schedules import StageSchedule, default_schedules
from ..method.select import Selector, full_width
from ..store import normalize_location, open_store
from ..store.stream import HSK_ARRAYS, TOKEN_ARRAYS, DeviceBatch, Prefetcher, StoreStream, keep_numpy, to_device
from ..models.student import load_student, read_student_meta, save_student

__all__ = ["TrainConfig", "Trainer", "train", "store_identity", "STAGES"]

STAGES = ("hsk", "pred")
LOG_EVERY = 20  # steps between reads of the loss: each read waits for the accelerator to catch up


@dataclass(frozen=True)
class TrainConfig:
    store: str                          # store written by `hskstore extract`: directory, .h5 file or URL
    student: str                        # student directory written by `hskstore student`
    output: str                         # run directory: checkpoint/, student/, metrics.json
    teacher: str | None = None          # online mode: run this teacher in the loop instead of reading HSK
    stages: tuple[str, ...] = STAGES    # hsk, pred, or both in that order
    hsk_epochs: int | None = None       # None: the paper's per-task schedule (schedules.py)
    hsk_lr: float | None = None
    hsk_batch_size: int | None = None
    pred_epochs: int | None = None
    pred_lr: float | None = None
    pred_batch_size: int | None = None
    hsk_loss: str = "masked-zero"       # masked-zero | kept
    temperature: float = 1.0            # prediction-stage soft cross-entropy temperature
    weight_decay: float = 0.0
    max_steps: int | None = None        # cap per stage (smoke runs, benchmarks)
    device: str = "auto"
    amp: bool = True                    # CUDA: bf16 autocast (capability >= 8.0) or fp16 + GradScaler; CPU/mps: fp32
    seed: int = 0
    num_workers: int = 0                # DataLoader workers reading the store
    eval_batch_size: int = 128
    resume: bool = True                 # continue from output/checkpoint when it matches this run
    overwrite: bool = False             # replace an existing run in output (when not resuming it)
    storage_options: dict = field(default_factory=dict)  # fsspec options for a store URL (endpoint_url, ...)

    def __post_init__(self):
        problems = []
        if not self.stages or any(s not in STAGES for s in self.stages) or list(self.stages) != sorted(
                self.stages, key=STAGES.index):
            problems.append(f"stages must be a non-empty ordered subset of {list(STAGES)}, got {list(self.stages)}")
        if self.hsk_loss not in HSK_LOSSES:
            problems.append(f"hsk_loss must be one of {list(HSK_LOSSES)}, got {self.hsk_loss!r}")
        for name in ("hsk_epochs", "pred_epochs", "hsk_batch_size", "pred_batch_size", "max_steps"):
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


class Trainer:
    def __init__(self, config: TrainConfig, progress: bool = True):
        self.config = config
        self.progress = progress
        # Under torchrun: this rank, its device (cuda:LOCAL_RANK) and an open process group.
        self.world, self.device = distributed.setup(config.device)
        # Before the store and student load; by rank 0 alone (--overwrite deletes), the others wait for it.
        distributed.run_on_main(self.world, "preparing the output",
                                lambda: (self._check_output(config), check_writable(config.output)))
        self.store = open_store(config.store, storage_options=config.storage_options)
        self.resolved = self.store.resolved
        self.task = self.store.task
        self._check_student_positions()
        torch.manual_seed(config.seed)
        self.student = load_student(config.student, device=self.device)
        self._check_student()
        d_s, d = self.student.hidden_size, self.resolved.hidden_size
        # P: one projection d_S -> d shared by all layers (TinyBERT); none when the widths agree.
        self.projection = (nn.Linear(d_s, d) if d_s != d else nn.Identity()).to(self.device)
        depth = self.resolved.depth
        self.student_layers = list(range(self.student.num_layers - depth + 1, self.student.num_layers + 1))
        mask = self.store.static_mask()
        self.static_mask = None if mask is None else torch.from_numpy(mask).to(self.device)
        self.teacher = None
        if config.teacher:
            self._load_online_teacher(config.teacher)
        self.precision = precision_for(self.device, config.amp)
        self._ddp = None  # the DistributedDataParallel wrapper of the running stage, under torchrun
        self.history: list[dict] = []
        self.output = Path(config.output)

    # ------------------------------------------------------------------ setup checks
    def _check_student_positions(self):
        """The store's max length must fit the student's position embeddings (read from student.json, no weights)."""
        positions = read_student_meta(self.config.student)["config"].get("max_position_embeddings", 512)
        if self.resolved.max_length > positions:
            raise StoreError(f"store {self.config.store} holds sequences of up to {self.resolved.max_length} tokens but "
                             f"the student {self.config.student} has {positions} positions (max_position_embeddings): "
                             "build a student with more positions, or extract with a smaller --max-length")

    @staticmethod
    def _check_output(config: TrainConfig) -> None:
        """Resume a matching checkpoint, else refuse a non-empty output unless overwrite (only a run's)."""
        from ..runtime.outputs import check_output_dir

        output = Path(config.output)
        resumable = any((output / name / "state.json").is_file() for name in ("checkpoint", "checkpoint.old"))
        if config.overwrite or not (config.resume and resumable):
            check_output_dir(output, "run", config.overwrite)

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

    def _load_online_teacher(self, path):
        from ..models.teacher import load_teacher, load_tokenizer, teacher_fingerprint

        recorded = self.store.attrs.get("teacher_fingerprint")  # stores from before fingerprints have none
        if recorded is not None and teacher_fingerprint(path) != recorded:
            raise StoreError(f"online teacher {path} is not the store's teacher: the SHA-256 of its weights or "
                             f"tokenizer differs from the fingerprint recorded in {self.config.store}; pass the "
                             "teacher the store was extracted from")
        model, identity = load_teacher(path, device=self.device)
        stored = self.store.teacher
        same = (identity.num_layers, identity.hidden_size, identity.vocab_size, identity.num_labels) == (
            stored["num_layers"], stored["hidden_size"], stored["vocab_size"], stored["num_labels"])
        if not same:
            raise StoreError(f"online teacher {path} ({identity.num_layers} layers, d={identity.hidden_size}, "
                             f"{identity.num_labels} labels) is not the store's teacher ({stored['num_layers']} "
                             f"layers, d={stored['hidden_size']}, {stored['num_labels']} labels): pass the teacher "
                             "the store was extracted from")
        self.teacher = model
        self._selector = Selector(self.store.compression, self.resolved, load_tokenizer(path).sep_token_id,
                                  model.bert.encoder.layer, identity.num_heads)

    # ------------------------------------------------------------------ data
    def stream(self, split: str, batch_size: int, stage: str | None, shuffle: bool = True, seed: int = 0):
        arrays = list(TOKEN_ARRAYS)
        if self.teacher is None and stage == "hsk":
            arrays += HSK_ARRAYS
        if self.teacher is None and stage == "pred":
            arrays.append("logits")
        if stage is None:  # evaluation reads the whole split on one rank
            return StoreStream(self.config.store, split, batch_size, arrays=arrays, shuffle=shuffle, seed=seed,
                               storage_options=self.config.storage_options)
        return StoreStream(self.config.store, split, batch_size, arrays=arrays, shuffle=shuffle, seed=seed,
                           storage_options=self.config.storage_options, rank=self.world.rank,
                           world_size=self.world.world_size)

    def device_batch(self, batch: dict[str, np.ndarray]) -> DeviceBatch:
        """A numpy batch on the device with its HSK targets: read from the store, or from the teacher online."""
        return self._with_targets(self._stage_batch(batch))

    def _stage_batch(self, batch: dict[str, np.ndarray]) -> DeviceBatch:
        """Pin and copy a numpy batch to the device; runs in the prefetch thread during training."""
        return to_device(batch, self.device, self.resolved.hidden_size, self.static_mask)

    def _with_targets(self, moved: DeviceBatch) -> DeviceBatch:
        return self._online_targets(moved) if self.teacher is not None else moved

    @torch.no_grad()
    def _online_targets(self, batch: DeviceBatch) -> DeviceBatch:
        # The teacher runs exactly as extraction runs it: float16 autocast on CUDA, float32 on CPU.
        with inference_precision(self.device.type).autocast(self.device):
            out, selection = self._selector.run(self.teacher, batch.input_ids, batch.attention_mask,
                                                batch.token_type_ids)
        fixed_mask = self._selector.fixed_mask
        fixed = None if fixed_mask is None else fixed_mask.to(self.device)
        targets, mask = full_width(selection.values.float(), selection.mask, fixed)
        return replace(batch, logits=out.logits.float(), positions=selection.positions, targets=targets, mask=mask)

    # ------------------------------------------------------------------ one step
    def _loss_step(self, stage: str, batch: DeviceBatch) -> dict[str, torch.Tensor]:
        with self.precision.autocast(self.device):
            out = self.student(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        if stage == "hsk":
            hidden = [out.hidden_states[i] for i in self.student_layers]
            with self.precision.autocast(self.device):
                loss = hsk_loss(hidden, batch.positions, batch.targets, batch.mask, self.projection,
                                self.config.hsk_loss)
        else:
            loss = prediction_loss(out.logits, batch.logits, batch.labels, self.config.temperature)
        return {"loss": loss}

    def step(self, stage: str, optimizer: torch.optim.Optimizer, batch: dict[str, np.ndarray]) -> float:
        """One optimisation step on a numpy batch from the store; returns its loss."""
        scaler = self.precision.scaler(self.device)
        return float(self._train_step(stage, optimizer, scaler, self.device_batch(batch)))

    def _train_step(self, stage: str, optimizer, scaler, batch: DeviceBatch) -> torch.Tensor:
        """One step; returns the loss as a device tensor (reading it would wait for the device).

        Under DDP each rank's loss is weighted by its share of what the global batch's loss averages
        over (examples; filled token slots in the HSK stage) times the world size, so the mean of the
        ranks' gradients that DDP takes is the gradient of the global batch's loss even when ranks hold
        a different number of examples. The shares are summed on the device: no wait for the host.
        """
        if self._ddp is None:
            loss = self._loss_step(stage, batch)["loss"]
        else:
            loss = self._ddp(batch)
            if stage == "hsk":
                count = (batch.positions[:, 0] >= 0).sum().float()       # filled slots, the same in every layer
            else:
                count = torch.full((), float(len(batch.labels)), device=loss.device)
            total = distributed.all_reduce_sum(count.clone(), self.world)
            loss = loss * (count * self.world.world_size / total.clamp(min=1))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    def optimizer(self, stage: str, lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self._parameters(stage), lr=lr, weight_decay=self.config.weight_decay)

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

    # ------------------------------------------------------------------ stages
    def _parameters(self, stage: str):
        params = list(self.student.parameters())
        if stage == "hsk":
            params += list(self.projection.parameters())
        return params

    def _run_stage(self, stage: str, state: dict) -> None:
        schedule = self.config.schedule(stage, self.task["name"])
        world = self.world
        if schedule.batch_size % world.world_size:
            raise ConfigError(f"the {stage} batch size {schedule.batch_size} is per global batch and must split evenly "
                              f"over {world.world_size} processes: pass --{stage}-batch-size as a multiple of "
                              f"{world.world_size}")
        # Each rank reads its own chunks in batches of B / world size; one step is one global batch of B.
        stream = self.stream("train", schedule.batch_size // world.world_size, stage, seed=self.config.seed)
        workers = self.config.num_workers

        def loader():
            source = stream
            if workers:
                source = DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=keep_numpy)
            return Prefetcher(source, transform=self._stage_batch)

        def epoch_steps(epoch: int) -> int:
            stream.set_epoch(epoch)
            return stream.num_batches(workers)  # the same on every rank (StoreStream.batch_plan)

        steps = [epoch_steps(e) for e in range(schedule.epochs)]
        total = sum(steps)
        if self.config.max_steps:
            total = min(total, self.config.max_steps)
        optimizer = self.optimizer(stage, schedule.lr)
        scaler = self.precision.scaler(self.device)
        if state.get("stage") == stage and state.get("optimizer"):
            checkpoint = state.pop("optimizer")  # read by rank 0, its state sent to the others
            distributed.run_on_main(world, "loading the optimizer", lambda: load_optimizer(optimizer, checkpoint))
            distributed.share_state(optimizer, world)
        if state.get("stage") == stage and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])  # fp16: resume at the learned loss scale, not 2**16 again
        start_epoch = state.get("epoch", 0) if state.get("stage") == stage else 0
        step = state.get("step", 0) if state.get("stage") == stage else 0
        best = state.get("best")
        key = primary_metric(self.task["metric"])
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            # The HSK stage leaves the classifier unused; the prediction stage the projection.
            self._ddp = DistributedDataParallel(_StageLoss(self, stage),
                                                device_ids=[self.device] if self.device.type == "cuda" else None,
                                                find_unused_parameters=stage == "hsk")
        for epoch in range(start_epoch, schedule.epochs):
            if step >= total:
                break
            stream.set_epoch(epoch)
            # Dropout draws from a per-epoch seed, so a run resumed at an epoch boundary is the same run.
            torch.manual_seed(self.config.seed * 10_000 + STAGES.index(stage) * 1_000 + epoch + 100_000 * world.rank)
            self.student.train()
            self.projection.train()
            bar = tqdm(total=steps[epoch], desc=f"{stage} {epoch + 1}/{schedule.epochs}",
                       disable=not (self.progress and world.is_main), unit="step")
            started, seen, losses, pending = time.perf_counter(), 0, [], []

            def read_losses():
                # One wait for the device every LOG_EVERY steps, not one per step; the global batch's loss
                # is the sum of the ranks' weighted losses over the world size.
                if pending:
                    values = distributed.all_reduce_sum(torch.stack(pending).float(), world) / world.world_size
                    losses.extend(values.tolist())
                    pending.clear()

            batches = loader()
            try:
                for moved in batches:
                    factor = 1.0 if schedule.decay == "constant" else max(0.0, 1 - step / max(total, 1))
                    for group in optimizer.param_groups:
                        group["lr"] = schedule.lr * factor
                    moved = self._with_targets(moved)
                    pending.append(self._train_step(stage, optimizer, scaler, moved))
                    step += 1
                    seen += len(moved.labels)
                    bar.update(1)
                    if len(pending) >= LOG_EVERY:
                        read_losses()
                        bar.set_postfix(loss=f"{losses[-1]:.4f}", ex_s=f"{seen / (time.perf_counter() - started):.0f}")
                    if step >= total:
                        break
                read_losses()
            finally:
                batches.close()  # also when a step raises (out of memory...): no thread left reading
                bar.close()
            record = {"stage": stage, "epoch": epoch + 1, "step": step, "loss": float(np.mean(losses)),
                      "step_losses": losses, "seconds": time.perf_counter() - started,
                      "examples_per_second": seen / max(time.perf_counter() - started, 1e-9)}
            if world.is_main and (stage == "pred" or "pred" not in self.config.stages):
                record["dev"] = self.evaluate()
                if stage == "pred" and (best is None or record["dev"][key] > best[key]):
                    best = record["dev"]
                    self._save_student(self.output / "student")
            self.history.append(record)
            if world.is_main:
                self._save_checkpoint({"stage": stage, "epoch": epoch + 1, "step": step, "best": best,
                                       "stages_done": state.get("stages_done", []),
                                       "scaler": scaler.state_dict()}, optimizer)  # {} unless fp16
            distributed.barrier(world)  # no rank moves on before the epoch's checkpoint is on disk
        self._ddp = None
        state.update(best=best)

    def train(self) -> dict:
        """Run the configured stages; returns the metrics written to output/metrics.json (by rank 0)."""
        main = self.world.is_main
        if main:
            self.output.mkdir(parents=True, exist_ok=True)
        # Rank 0 alone reads the checkpoint (another machine may not see --output); every rank resumes as it does.
        state = distributed.run_on_main(self.world, "reading the checkpoint", self._maybe_resume)
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
            self._save_student(self.output / "student")
        result = {
            "mode": "online" if self.teacher is not None else "offline",
            "store": normalize_location(self.config.store),
            "task": self.task["name"],
            "metric": self.task["metric"],
            "compression": self.store.compression.to_dict(),
            "amount_hsk": self.resolved.amount(),
            "teacher_dev": self.teacher_metrics(),
            "student_dev": state.get("best") or (self.history[-1].get("dev") if self.history else None),
            "history": [{k: v for k, v in h.items() if k != "step_losses"} for h in self.history],
            # Local paths absolute (metrics.json is read from anywhere); storage options by name only: they
            # can hold credentials.
            "config": _absolute_paths(asdict(self.config)) | {"storage_options": sorted(self.config.storage_options)},
            "device": describe_device(self.device),
            "precision": self.precision.name,
            "world_size": self.world.world_size,
        }
        if main:
            (self.output / "metrics.json").write_text(json.dumps(result, indent=2))
        distributed.barrier(self.world)
        return result

    # ------------------------------------------------------------------ persistence (safetensors + JSON only)
    def _save_student(self, directory: Path):
        if directory.exists():
            shutil.rmtree(directory)
        save_student(self.student, directory)
        self.store.save_tokenizer(directory)
        (directory / "task.json").write_text(json.dumps(store_task_record(self.store)))

    def _run_key(self) -> dict:
        c = self.config
        return {"store": normalize_location(c.store), "student": os.path.abspath(c.student), "stages": list(c.stages),
                "teacher": c.teacher, "seed": c.seed, "hsk_loss": c.hsk_loss, "max_steps": c.max_steps,
                "temperature": c.temperature, "weight_decay": c.weight_decay, "amp": c.amp,
                "num_workers": c.num_workers,  # chunks are dealt per worker: another count, another order
                **({"world_size": self.world.world_size} if self.world.distributed else {}),  # and per rank
                "schedules": {s: asdict(c.schedule(s, self.task["name"])) for s in c.stages},
                # The same path can hold another store (re-extracted with --overwrite): compare contents' identity.
                "store_identity": store_identity(self.store.attrs), "compression": self.store.attrs.get("compression")}

    def _save_checkpoint(self, state: dict, optimizer) -> None:
        from safetensors.torch import save_file

        final, tmp = self.output / "checkpoint", self.output / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_student(self.student, tmp / "student")
        if isinstance(self.projection, nn.Linear):
            save_file({k: v.contiguous() for k, v in self.projection.state_dict().items()}, str(tmp / "projection.safetensors"))
        if optimizer is not None:
            save_optimizer(optimizer, tmp)
        history = [{k: v for k, v in h.items() if k != "step_losses"} for h in self.history]
        (tmp / "state.json").write_text(json.dumps(state | {"run": self._run_key(), "history": history}, indent=2))
        swap_in(tmp, final)  # a crash leaves either the old or the new checkpoint, never half of one

    def _maybe_resume(self) -> dict:
        from safetensors.torch import load_file

        checkpoint = self.output / "checkpoint"
        old = self.output / "checkpoint.old"
        if not checkpoint.exists() and (old / "state.json").is_file():
            old.rename(checkpoint)  # a crash between the two renames of _save_checkpoint: the old one stands
        if not (self.config.resume and (checkpoint / "state.json").is_file()):
            return {}
        state = json.loads((checkpoint / "state.json").read_text())
        old, new = state.get("run") or {}, json.loads(json.dumps(self._run_key()))
        changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if changed:
            if old and "store_identity" not in old:
                why = "written by an hskstore that did not record the store's identity"
            elif {"store_identity", "compression"} & set(changed):
                why = "the store was replaced or re-extracted since"
            else:
                why = "other store, student, stages or schedule"
            raise ConfigError(f"{checkpoint} belongs to a different run ({why}: {', '.join(changed)} differ); "
                              "use another --output, or --no-resume to start over")
        resumed = load_student(checkpoint / "student", device=self.device)
        self.student.load_state_dict(resumed.state_dict())
        if (checkpoint / "projection.safetensors").is_file():
            self.projection.load_state_dict(load_file(str(checkpoint / "projection.safetensors"), device=str(self.device)))
        if (checkpoint / "optimizer.json").is_file():
            state["optimizer"] = checkpoint
        self.history = state.pop("history", [])
        return state


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
