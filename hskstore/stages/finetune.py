"""Fine-tune a BERT checkpoint on a task, producing the teacher that the store is extracted from.

Plain PyTorch, top to bottom: setup -> for each epoch (train, evaluate) -> save the best epoch. The
output directory is a transformers checkpoint plus `hskstore_teacher.json`, which records the task
and how the teacher was made so later stages can load the same task and split.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..configs.finetune import FinetuneConfig
from ..data.tasks import TaskSpec, absolute_task_ref, count_truncated, load_task, tokenize, truncation_warning
from ..models.card import invocation, write_model_card
from ..models.hub import hub_provenance
from ..runtime.device import autocast, precision_for, resolve_device
from ..errors import ConfigError
from ..data.metrics import compute_metrics, primary_metric
from ..runtime.outputs import check_output_dir
from ..runtime.checkpoint import (load_weights, read_state, recover, restore_optimizer, restore_rng, resumable,
                                  rng_state, save_checkpoint)
from ..runtime.preflight import check_writable
from ..models.teacher import (check_bert_family, check_max_length, check_tokenizer_files, load_teacher, load_tokenizer,
                              quiet_transformers)

__all__ = ["FinetuneConfig", "finetune", "evaluate", "TEACHER_INFO_FILE"]

TEACHER_INFO_FILE = "hskstore_teacher.json"


def finetune(config: FinetuneConfig, progress: bool = True) -> dict:
    """Fine-tune `config.model` on `config.task` and save the teacher to `config.output`.

    Returns:
        the kept epoch's validation metrics (`compute_metrics` keys) plus "train_loss" (that epoch's mean),
        "epoch" and "train_seconds" (the whole loop, evaluation included). Every epoch's are in `hskstore_teacher.json` under "history".
    Raises:
        ModelError: the model is not BERT-family, has no tokenizer, cannot take max_length tokens, or cannot
            be loaded. DataError: the task cannot be loaded. ConfigError: the output cannot be written.
    """
    # Setup: fail on a wrong output or model before the (slower) data loading, not after training.
    check_writable(config.output)
    model_config = check_bert_family(config.model)
    check_tokenizer_files(config.model)
    check_max_length(config.max_length, model_config, "the model", config.model)
    device = resolve_device(config.device)
    checkpoint = Path(config.output) / "checkpoint"
    resuming = config.resume and not config.overwrite and resumable(checkpoint)
    if resuming:
        recover(checkpoint)  # a crash between the renames of a checkpoint swap: the old one stands
    else:
        check_output_dir(config.output, "teacher", config.overwrite)
    data = load_task(config.task, **config.task_options())
    spec = data.spec
    tokenizer = load_tokenizer(config.model)
    train = tokenize(tokenizer, data.split("train"), spec, config.max_length)
    validation = tokenize(tokenizer, data.split("validation"), spec, config.max_length)
    truncated = {name: count_truncated(tokenizer, data.split(name), spec, config.max_length, tokens["lengths"])
                 for name, tokens in (("train", train), ("validation", validation))}
    warning = truncation_warning(truncated, {"train": len(train["labels"]), "validation": len(validation["labels"])},
                                 config.max_length)
    if warning:
        print(warning, file=sys.stderr)

    torch.manual_seed(config.seed)  # the fresh classifier head and dropout
    with quiet_transformers():
        model, _ = load_teacher(config.model, num_labels=spec.num_labels, device=device)
    _set_label_names(model, spec)
    steps_per_epoch = math.ceil(len(train["labels"]) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    warmup = int(config.warmup_fraction * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _linear_schedule(step, warmup, total_steps))
    amp_dtype, scaler = _mixed_precision(device)
    generator = torch.Generator().manual_seed(config.seed)
    key = primary_metric(spec.metric)

    history, best, best_state, first_epoch = [], None, None, 1
    if resuming:
        first_epoch, history, best, best_state = _resume(checkpoint, config, model, optimizer, scheduler, scaler,
                                                         generator, device)
    started = time.perf_counter()
    bar = _progress_bar(total_steps, progress)
    bar.update((first_epoch - 1) * steps_per_epoch)
    for epoch in range(first_epoch, config.epochs + 1):
        model.train()
        order = torch.randperm(len(train["labels"]), generator=generator).numpy()
        loss_sum = torch.zeros((), device=device)  # summed on device: .item() every step would sync CUDA
        for start in range(0, len(order), config.batch_size):
            batch = _batch(train, order[start:start + config.batch_size], device)
            with _autocast(device, amp_dtype):
                loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach().float()
            bar.update(1)
            if progress and bar.n % 10 == 0:  # .item() waits for the accelerator: not every step
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}")
        train_loss = loss_sum.item() / steps_per_epoch
        metrics = {**evaluate(model, validation, spec, config.batch_size * 4, device, amp_dtype),
                   "train_loss": train_loss, "epoch": epoch}
        history.append(metrics)
        if progress:
            bar.write(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "epoch"))
        if config.keep == "last" or best is None or metrics[key] > best[key]:
            best = metrics
            if config.keep == "best" and epoch < config.epochs:
                # A CPU copy, so keeping the best epoch costs host memory, not accelerator memory.
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            else:
                best_state = None  # the model itself holds the kept weights
        _save_checkpoint(checkpoint, config, epoch, model, optimizer, scheduler, scaler, generator, history, best,
                         best_state)
    bar.close()
    train_seconds = time.perf_counter() - started
    if best_state is not None:
        model.load_state_dict(best_state)
    result = {**best, "train_seconds": train_seconds}
    _save(model, tokenizer, config, spec, result, history,
          {"counts": truncated, "examples": {"train": len(train["labels"]), "validation": len(validation["labels"])}})
    shutil.rmtree(checkpoint, ignore_errors=True)  # the teacher is complete: nothing left to resume
    return result


def _run_key(config: FinetuneConfig) -> dict:
    """What must match for a checkpoint to be resumed: everything but where and how the run is started."""
    key = config.to_dict()
    for name in ("output", "device", "resume", "overwrite"):
        key.pop(name)
    return json.loads(json.dumps(key))


def _save_checkpoint(directory: Path, config, epoch, model, optimizer, scheduler, scaler, generator, history, best,
                     best_state) -> None:
    """The state after `epoch`: weights, the best epoch's, AdamW, the random states and state.json."""
    weights = {"model": model.state_dict()} | ({"best": best_state} if best_state is not None else {})
    state = {"run": _run_key(config), "epoch": epoch, "history": history, "best": best,
             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()}
    save_checkpoint(directory, state, weights=weights, optimizer=optimizer, rng=rng_state(generator))


def _resume(directory: Path, config, model, optimizer, scheduler, scaler, generator, device):
    """Load a checkpoint of this run; returns (next epoch, history, best metrics, best weights or None)."""
    state = read_state(directory, _run_key(config), lambda changed, _: (
        f"{directory} belongs to a different fine-tuning run (other model, task or options: {', '.join(changed)} "
        "differ); rerun with its options, or pass --no-resume --overwrite to start over"))
    model.load_state_dict(load_weights(directory, "model", device))
    restore_optimizer(directory, optimizer, scaler, state["scaler"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(directory, generator)
    return state["epoch"] + 1, state["history"], state["best"], load_weights(directory, "best")


@torch.no_grad()
def evaluate(model, tokens: dict[str, np.ndarray], spec: TaskSpec, batch_size: int,
             device: torch.device, amp_dtype=None) -> dict[str, float]:
    """Metrics of `model` on one tokenised split (`data.tokenize` output)."""
    model.eval()
    outputs = []
    for start in range(0, len(tokens["labels"]), batch_size):
        batch = _batch(tokens, np.arange(start, min(start + batch_size, len(tokens["labels"]))), device)
        batch.pop("labels")
        with _autocast(device, amp_dtype):
            outputs.append(model(**batch).logits.float().cpu())
    logits = torch.cat(outputs).numpy() if outputs else np.zeros((0, spec.num_labels), np.float32)
    if spec.is_regression:
        logits = logits[:, 0]
    return compute_metrics(spec.metric, logits, tokens["labels"])


def _batch(tokens: dict[str, np.ndarray], rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    # Dynamic padding: trim to the longest example in this batch; most tweets are far below max_length.
    width = int(tokens["lengths"][rows].max())
    batch = {k: torch.from_numpy(tokens[k][rows, :width]).to(device)
             for k in ("input_ids", "attention_mask", "token_type_ids")}
    batch["labels"] = torch.from_numpy(tokens["labels"][rows]).to(device)
    return batch


def _param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _linear_schedule(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def _mixed_precision(device: torch.device):
    """bf16 autocast on CUDA capability >= 8.0, else fp16 with loss scaling; fp32 on CPU and mps (device.py)."""
    precision = precision_for(device)
    return precision.autocast_dtype, precision.scaler(device)


def _autocast(device: torch.device, dtype):
    return autocast(device, dtype)  # no autocast object at all in fp32 (runtime.device.autocast)


def _set_label_names(model, spec: TaskSpec) -> None:
    if spec.is_regression:
        model.config.id2label = {0: "score"}
        model.config.label2id = {"score": 0}
        model.config.problem_type = "regression"
    else:
        model.config.id2label = dict(enumerate(spec.label_names))
        model.config.label2id = {name: i for i, name in enumerate(spec.label_names)}
        model.config.problem_type = "single_label_classification"


def _save(model, tokenizer, config: FinetuneConfig, spec: TaskSpec, result: dict, history: list,
          truncated: dict | None = None) -> None:
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    recorded = config.to_dict()
    for name in ("model", "output"):  # absolute, so `extract` and `evaluate` work from any directory
        if Path(recorded[name]).exists():
            recorded[name] = os.path.abspath(recorded[name])
    task_ref = absolute_task_ref(config.task, config.task_source())
    recorded.update(task=task_ref["task"], **{k: v for k, v in task_ref["options"].items() if k in recorded})
    info = {
        "task": spec.to_dict(),
        # How to load the same data again (extract, evaluate default to it): the task and its options.
        "task_ref": task_ref,
        "max_length": config.max_length,
        "metrics": result,
        "history": history,
        "epochs": config.epochs,
        "seed": config.seed,
        "base_model": recorded["model"],
        "config": recorded,
    }
    if truncated is not None:  # examples longer than max_length, per split
        info["truncated"] = truncated
    if hub_provenance(config.model):  # a hub id: the snapshot's commit, so the base model can be found again
        info["base_model_hub"] = hub_provenance(config.model)
    (output / TEACHER_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    write_model_card(output, title=f"hskstore teacher ({spec.name})", role="teacher", task=spec.to_dict(),
                     metrics={k: v for k, v in result.items() if k not in ("epoch", "train_loss", "train_seconds")},
                     split="validation", base_model=recorded["model"], command=invocation(),
                     notes=[f"Fine-tuned for {config.epochs} epochs at max length {config.max_length}; the kept "
                            f"epoch ({config.keep}) is {result.get('epoch')}."])


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="finetune", unit="step", disable=not enabled, dynamic_ncols=True)
