"""Run a fine-tuned teacher once over a task and write its compressed HSK to a store.

Work is done one store chunk at a time (default 4096 rows): the chunk's examples are sorted by length
and batched with dynamic padding, the teacher runs (GPU with autocast when present), the selection
happens on the teacher's device (masks packed there too, so only the selected bytes cross to the host),
each batch is copied into the chunk's arrays (made once per chunk), and writer threads (one per core
for Zarr) compress and write finished chunks while the teacher runs the next ones.
A chunk is recorded only after all its arrays are written, so a rerun resumes where it stopped and
produces the same bytes an uninterrupted run writes.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..version import __version__
from ..configs.extract import ExtractConfig
from ..runtime import distributed
from ..runtime.device import (describe_device, inference_precision, inference_precision_for,  # noqa: F401
                              resolve_device)  # inference_precision: re-exported
from ..runtime.device import non_blocking_for
from ..errors import ConfigError, ModelError
from ..method.select import Selector, pack_bits
from ..store import StoreWriter, array_specs, root_attributes
from ..store.transaction import StoreTransaction
from ..models.hub import hub_provenance
from ..models.teacher import (DEFAULT_MAX_LENGTH, check_bert_family, check_max_length,  # noqa: F401 (re-exported)
                              check_tokenizer_files, load_teacher, load_tokenizer, teacher_data_seed,
                              teacher_fingerprint, teacher_max_length, teacher_task)

__all__ = ["ExtractConfig", "extract", "batch_bounds", "rank_chunks", "resolve_device", "teacher_max_length",
           "teacher_data_seed", "teacher_task"]

class _ChunkWriter:
    """Threads that compress and write finished chunks while the teacher keeps running.

    Each thread takes whole chunks from one queue (numcodecs releases the GIL while it compresses), so
    `threads` chunks are encoded at once; a chunk is recorded by the thread that wrote it, after its
    arrays, so chunks complete out of order and a rerun still resumes exactly (Zarr keeps one object per
    chunk and per chunk record). HDF5 takes one writer: one thread. The queue holds `threads` chunks."""

    def __init__(self, writer: StoreWriter, threads: int = 1):
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=max(2, threads))
        self.error: BaseException | None = None
        self.threads = [threading.Thread(target=self._run, name=f"hskstore-writer-{i}", daemon=True)
                        for i in range(threads)]
        for thread in self.threads:
            thread.start()

    def _run(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self.writer.write_chunk(*item)
                except BaseException as exc:  # surfaced in the main thread by put()/close()
                    self.error = self.error or exc

    def put(self, split: str, index: int, arrays: dict[str, np.ndarray]):
        if self.error:
            raise self.error
        self.queue.put((split, index, arrays))

    def _stop(self):
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join()

    def close(self):
        self._stop()
        if self.error:
            raise self.error

    def abort(self, reason: BaseException) -> None:
        """Stop after the chunks already queued, when the main loop failed: its error is the one raised;
        a writer error is attached to it as a note, never raised in its place."""
        self._stop()
        if self.error is not None and self.error is not reason:
            reason.add_note(f"the store writer had also failed: {type(self.error).__name__}: {self.error}")


def writer_threads(config_threads: int | None, parallel_writers: bool) -> int:
    """Chunk writer threads: as asked, else one per core for a store that takes parallel writers, else 1."""
    if not parallel_writers:
        return 1
    return config_threads or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _tokenizer_files(tokenizer) -> dict[str, bytes]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def batch_bounds(sorted_lengths: np.ndarray, batch_size: int | None, batch_tokens: int) -> list[tuple[int, int]]:
    """Batches over rows sorted longest first: `batch_size` rows each, or as many rows as fit in
    `batch_tokens` padded tokens (rows x the batch's longest length), so short texts go in large batches
    and long ones in small batches whatever the model and max length."""
    bounds, start, total = [], 0, len(sorted_lengths)
    while start < total:
        rows = batch_size or max(1, batch_tokens // max(int(sorted_lengths[start]), 1))
        bounds.append((start, min(start + rows, total)))
        start += rows
    return bounds


class _ChunkArrays:
    """One chunk's arrays, allocated once (on the first batch, whose shapes and dtypes they take) and
    filled in row order as each batch arrives: no list of batches, concatenation or reordering copy,
    so host memory holds the chunk once plus a batch or two in flight."""

    def __init__(self, rows: int):
        self.rows = rows
        self.arrays: dict[str, np.ndarray] = {}

    def put(self, name: str, where: np.ndarray, data: np.ndarray) -> None:
        out = self.arrays.get(name)
        if out is None:
            out = self.arrays[name] = np.empty((self.rows, *data.shape[1:]), dtype=data.dtype)
        out[where] = data


def _teacher_chunk(model, selector, encoded, rows, batching, device, compression) -> dict[str, np.ndarray]:
    """Run the teacher over the rows of one chunk; return that chunk's arrays in row order."""
    lengths = encoded["lengths"][rows]
    order = np.argsort(-lengths, kind="stable")      # longest first: dynamic padding wastes little
    chunk = _ChunkArrays(len(rows))
    precision = inference_precision_for(device)  # fp32 below compute capability 7.0
    pending = None   # the previous batch's host copies, still in flight on an accelerator

    def land(batch):
        where, copies, done = batch
        if done is not None:
            done.synchronize()
        for name, tensor in copies.items():
            chunk.put(name, where, tensor.numpy())

    for start, stop in batch_bounds(lengths[order], *batching):
        batch_rows = rows[order[start:stop]]
        width = int(encoded["lengths"][batch_rows].max())
        batch = {name: torch.from_numpy(encoded[name][batch_rows, :width])  # a fresh slice: pageable
                 .to(device, non_blocking=non_blocking_for(device, pinned=False))
                 for name in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.inference_mode(), precision.autocast(device):
            out, selection = selector.run(model, **batch)
        # After the top-k: as the store keeps them (dtype, mantissa bits, int8/int4 codes and scales).
        produced = {"logits": out.logits.float(), "positions": selection.positions.to(torch.int16),
                    **compression.encode_values(selection.values)}
        if selection.mask is not None:
            produced["masks"] = pack_bits(selection.mask)
        # Each batch leaves the accelerator as it is produced (into pinned memory, without waiting), so
        # device memory holds one batch, not a whole chunk (8-32 GB for --full with a BERT-base teacher);
        # it lands in the chunk's arrays once the next batch is queued, so at most two are in flight.
        copies = {name: tensor.to("cpu", non_blocking=non_blocking_for(device, pinned=True)) for name, tensor in produced.items()}
        done = None
        if device.type == "cuda":
            done = torch.cuda.Event()
            done.record()
        elif device.type == "mps":
            torch.mps.synchronize()
        if pending is not None:
            land(pending)
        pending = (order[start:stop], copies, done)
    if pending is not None:
        land(pending)
    arrays = chunk.arrays
    arrays["input_ids"] = encoded["input_ids"][rows]
    arrays["token_type_ids"] = encoded["token_type_ids"][rows]
    arrays["lengths"] = lengths
    arrays["labels"] = encoded["labels"][rows]
    return arrays


def _absolute_if_file(value: str) -> str:
    """Paths recorded absolutely, so a store (and a student trained from it) works from any directory."""
    return str(Path(value).resolve()) if Path(value).exists() else value


def _teacher_provenance(teacher: str, identity) -> dict:
    """The teacher by absolute path and name (plus its fine-tuning base); its SHA-256s are `teacher_fingerprint`."""
    info = identity.to_dict()
    path = Path(teacher)
    meta_file = path / "hskstore_teacher.json"
    base = None
    if meta_file.is_file():
        try:
            recorded = json.loads(meta_file.read_text())
            base = recorded.get("base_model") or recorded.get("config", {}).get("model")
        except ValueError:
            base = None
    info.update(path=_absolute_if_file(teacher), name=path.resolve().name if path.exists() else teacher,
                base_model=_absolute_if_file(base) if isinstance(base, str) else None)
    hub = hub_provenance(teacher)
    if hub:  # a teacher named by hub id: the snapshot's commit (revision) it was read from
        info["hub"] = hub
    return info


def rank_chunks(num_chunks: int, world) -> range:
    """The chunks one rank extracts: a contiguous, chunk-aligned range, ranks in order, sizes within one."""
    return range(num_chunks * world.rank // world.world_size, num_chunks * (world.rank + 1) // world.world_size)


def extract(config: ExtractConfig, progress: bool = True) -> dict:
    """Extract a store. Returns the run summary (examples, seconds, examples/s, bytes on disk).

    Under torchrun every rank runs this: rank 0 creates (or reopens) the store, each rank writes only
    the chunks of its `rank_chunks` range, and rank 0 marks the store complete once all have finished.
    The store's writer transaction (`store.transaction`) holds its lock for the whole run (under
    torchrun, rank 0 holds it for the job), stages an --overwrite beside the old store and checks the
    run key of a partial store before resuming it.

    Raises:
        ConfigError / ModelError / DataError / StoreError with a one-line message naming the fix.
    """
    with distributed.process_group(config.device) as (world, device):
        transaction = StoreTransaction(config.output, command="extract", overwrite=config.overwrite, resume=True,
                                       storage_options=config.storage_options)
        if not world.is_main:
            return _extract(config, transaction, progress, world, device)
        transaction.check_writable()  # before the lock file is made beside the output
        with transaction:
            return _extract(config, transaction, progress, world, device)


def _extract(config: ExtractConfig, transaction: StoreTransaction, progress: bool, world, device) -> dict:
    from ..store.report import store_info

    plan = _plan(config, transaction, world, device)
    summary = _run(config, plan, transaction, progress, world, device)
    return summary | {"info": store_info(config.output, storage_options=config.storage_options)}


@dataclass
class _Plan:
    """Everything decided before the teacher runs: the store to write and this rank's share of it."""
    model: torch.nn.Module
    selector: Selector
    tokenizer: object
    attrs: dict                       # root attributes of a new store: resumes compare their run key with these
    specs: list                       # the arrays of every split
    static_mask: np.ndarray | None    # bitpacked static width mask, or None
    split_sizes: dict[str, int]
    chunks: dict[str, range]          # per split, the chunks this rank extracts (rank_chunks)
    offset: dict[str, int]            # per split, the first row this rank tokenised
    encoded: dict[str, dict]          # per split, this rank's tokenised rows
    batching: tuple                   # (batch_size, batch_tokens): one of them None


def _plan(config: ExtractConfig, transaction: StoreTransaction, world, device) -> _Plan:
    """Resolve the teacher, task, compression, sizes, array specs and attributes; fail on anything
    wrong before the teacher runs (cheap checks before data and weights are loaded)."""
    from ..data.tasks import (absolute_task_ref, check_same_labels, count_truncated, load_task, resolve_task, tokenize,
                              truncation_warning)

    if world.distributed and not transaction.backend.parallel_writers:
        raise ConfigError(f"{config.output} is {transaction.backend.description}, which takes one writer: extract "
                          "with torchrun into a Zarr store (a directory or URL), then `hskstore convert` it")
    transaction.check()
    compression = config.compression
    max_length = config.max_length or teacher_max_length(config.teacher)
    teacher_config = check_bert_family(config.teacher)  # fail fast: before data and weights are loaded
    check_tokenizer_files(config.teacher)
    check_max_length(max_length, teacher_config, "the teacher", config.teacher)
    compression.resolve(teacher_config["num_hidden_layers"], teacher_config["hidden_size"], max_length)
    recorded = teacher_task(config.teacher)
    task_arg, task_options = resolve_task(recorded, config.task, config.task_options,
                                          allow_mismatch=config.allow_task_mismatch, owner=f"teacher {config.teacher}")
    task = load_task(task_arg, limit=config.limit, seed=config.data_seed, **task_options)
    spec = task.spec
    check_same_labels(recorded and recorded.get("label_names"), spec, f"teacher {config.teacher}",
                      config.allow_task_mismatch)
    columns = {s: task.split(s) for s in config.splits}  # "validation" also names MNLI's validation_matched
    model, identity = load_teacher(config.teacher, device=device)
    if identity.num_labels != spec.num_labels:
        raise ConfigError(f"teacher {config.teacher} predicts {identity.num_labels} labels but task {spec.name!r} "
                          f"has {spec.num_labels}: fine-tune a teacher on this task first (`hskstore finetune`).")
    resolved = compression.resolve(identity.num_layers, identity.hidden_size, max_length)
    tokenizer = load_tokenizer(config.teacher)
    sep_id = tokenizer.sep_token_id
    selector = Selector(compression, resolved, sep_id, model.bert.encoder.layer, identity.num_heads)
    batch_size = config.batch_size
    batch_tokens = None if batch_size else (config.batch_tokens or (8192 if device.type == "cpu" else 32768))

    split_sizes = {s: len(columns[s].get(spec.label_column, ())) for s in config.splits}
    # Each rank tokenises only the rows of its own chunks (tokenising is ~2k examples/s a core here:
    # the whole of a 10M-sentence corpus on every rank would take longer than extracting it on 64 GPUs).
    chunk_rows = config.chunk_rows
    mine = {s: rank_chunks(-(-split_sizes[s] // chunk_rows), world) for s in config.splits}
    offset = {s: mine[s].start * chunk_rows for s in config.splits}
    encoded = {s: tokenize(tokenizer, {c: v[offset[s]:mine[s].stop * chunk_rows] for c, v in columns[s].items()},
                           spec, max_length) for s in config.splits}
    # Examples longer than max_length lose their tail: counted (this rank's rows) and recorded, warned above 1%.
    truncated = {s: count_truncated(tokenizer, {c: v[offset[s]:mine[s].stop * chunk_rows] for c, v in columns[s].items()},
                                    spec, max_length, encoded[s]["lengths"]) for s in config.splits}
    # Summed over ranks (each tokenised its own rows): the store records, and rank 0 warns about, whole splits.
    counts = torch.tensor([[truncated[s], len(encoded[s]["lengths"])] for s in config.splits], dtype=torch.int64,
                          device=device if device.type == "cuda" else "cpu")
    distributed.all_reduce_sum(counts, world)
    truncated = {s: int(counts[i, 0]) for i, s in enumerate(config.splits)}
    warning = truncation_warning(truncated, {s: int(counts[i, 1]) for i, s in enumerate(config.splits)}, max_length)
    if warning and world.is_main:
        print(warning, file=sys.stderr)
    teacher_precision = inference_precision_for(device)  # fp16 on CUDA from capability 7.0, else fp32
    meta = {
        "created_by": f"hskstore {__version__}",
        "compression": compression.to_dict(),
        "resolved": resolved.to_dict(),
        "amount_hsk": resolved.amount(),
        "teacher": _teacher_provenance(config.teacher, identity),
        # SHA-256 of the weights and tokenizer files: what a resumed extraction must be run with.
        "teacher_fingerprint": teacher_fingerprint(config.teacher),
        "task": asdict(spec),
        # How to load the same data again (evaluate, predict): the task name or file, and its options.
        "task_ref": absolute_task_ref(task_arg, task_options),
        "label_names": list(spec.label_names),
        "num_labels": spec.num_labels,
        "max_length": max_length,
        "truncated": truncated,  # examples per split longer than max_length (optional: older stores lack it)
        "limit": config.limit,
        "data_seed": config.data_seed,
        # CUDA from capability 7.0 runs the teacher under float16 autocast, older GPUs, CPU and mps in float32:
        # a resumed store must not mix them.
        "numerics": f"{device.type}-{'float16-autocast' if teacher_precision.autocast_dtype else 'float32'}",
        "device": describe_device(device),         # where the store was created (resumes may differ in model)
        "precision": teacher_precision.name,
        "tokenizer": {"source": _absolute_if_file(config.teacher), "class": type(tokenizer).__name__,
                      "sep_token_id": sep_id, "pad_token_id": tokenizer.pad_token_id,
                      "cls_token_id": tokenizer.cls_token_id},
    }
    # Batches are padded per batch: the same bytes need the same batching.
    meta["batch_size"], meta["batch_tokens"] = batch_size, batch_tokens
    specs = array_specs(resolved, compression, identity.vocab_size, spec.num_labels, mask_codec=config.mask_codec)
    fixed_mask = selector.fixed_mask
    return _Plan(model=model, selector=selector, tokenizer=tokenizer,
                 attrs=root_attributes(meta, split_sizes, chunk_rows, specs), specs=specs,
                 static_mask=None if fixed_mask is None else np.packbits(fixed_mask.numpy(), bitorder="little"),
                 split_sizes=split_sizes, chunks=mine, offset=offset, encoded=encoded,
                 batching=(batch_size, batch_tokens))


def _run(config: ExtractConfig, plan: _Plan, transaction: StoreTransaction, progress: bool, world, device) -> dict:
    """Open the store (new, resumed or staged), run the teacher over this rank's unwritten chunks while a
    background thread writes the finished ones, then mark the store complete and swap it into place."""
    error = None
    if world.is_main:  # one creator; the others open the store once it exists
        try:
            writer = transaction.open_writer(plan.attrs, plan.specs, plan.static_mask, _tokenizer_files(plan.tokenizer))
        except Exception as exc:
            error = exc
    distributed.raise_if_any_failed(world, error, "preparing the store", device)
    if not world.is_main:
        writer = transaction.reopen_writer()

    chunk_rows, sizes = config.chunk_rows, plan.split_sizes
    try:
        todo = {s: [k for k in plan.chunks[s] if k not in writer.chunks_done(s)] for s in config.splits}
        remaining = sum(min(chunk_rows, sizes[s] - k * chunk_rows) for s in todo for k in todo[s])
        started = time.perf_counter()
        chunk_writer = _ChunkWriter(writer, writer_threads(config.writer_threads, transaction.backend.parallel_writers))
        bar = tqdm(total=remaining, unit="ex", desc=f"extract{f' rank {world.rank}' if world.distributed else ''}",
                   disable=not progress, smoothing=0.1, position=world.rank if world.distributed else None)
        try:
            # Ranks meet after every chunk: an error on one (out of memory...) stops all of them at once.
            with distributed.Lockstep(world, "extracting its chunks", device) as lockstep:
                for split, k in lockstep.each([(s, k) for s in config.splits for k in todo[s]]):
                    rows = np.arange(k * chunk_rows, min((k + 1) * chunk_rows, sizes[split]))
                    arrays = _teacher_chunk(plan.model, plan.selector, plan.encoded[split], rows - plan.offset[split],
                                            plan.batching, device, config.compression)
                    chunk_writer.put(split, k, arrays)
                    bar.update(len(rows))
        except BaseException as exc:
            bar.close()
            chunk_writer.abort(exc)
            raise
        bar.close()
        error = None
        try:
            chunk_writer.close()
        except Exception as exc:  # every rank must hear of it, or they would wait at the next collective
            error = exc
        # A barrier too: no rank's chunks are missing once this returns.
        distributed.raise_if_any_failed(world, error, "writing its chunks", device)
        total = torch.tensor([remaining], dtype=torch.int64, device=device if device.type == "cuda" else "cpu")
        distributed.all_reduce_sum(total, world)
        extracted = int(total.item())
        seconds = time.perf_counter() - started
        batch_size, batch_tokens = plan.batching
        summary = {"examples_extracted": extracted, "seconds": round(seconds, 3),
                   "examples_per_second": round(extracted / seconds, 1) if seconds > 0 else None,
                   "device": describe_device(device), "precision": inference_precision_for(device).name,
                   "batch_size": batch_size, "batch_tokens": batch_tokens, "processes": world.world_size}
        if world.is_main:
            writer.mark_complete(summary)
    finally:
        writer.close()
    if world.is_main:
        transaction.commit()
    distributed.barrier(world)  # the others return once the store is complete (and in place)
    return summary
