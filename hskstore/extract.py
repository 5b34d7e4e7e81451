"""Run a fine-tuned teacher once over a task and write its compressed HSK to a store.

Work is done one store chunk at a time (default 4096 rows): the chunk's examples are sorted by length
and batched with dynamic padding, the teacher runs (GPU with autocast when present), the selection
happens on the teacher's device (masks packed there too, so only compressed bytes cross to the host),
and a background thread compresses and writes the finished chunk while the teacher runs the next one.
A chunk is recorded only after all its arrays are written, so a rerun resumes where it stopped and
produces the same bytes an uninterrupted run writes.
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .config import Compression
from .device import resolve_device
from .errors import ConfigError, StoreError
from .select import Selector, pack_bits, round_mantissa
from .store import StoreWriter, array_specs, read_attrs
from .teacher import check_bert_family, load_teacher, load_tokenizer

__all__ = ["ExtractConfig", "extract", "resolve_device", "teacher_max_length", "teacher_data_seed"]

DEFAULT_MAX_LENGTH = 128


def teacher_max_length(teacher: str) -> int:
    """The max length the teacher was fine-tuned with (hskstore_teacher.json), else 128."""
    meta = Path(teacher) / "hskstore_teacher.json"
    if meta.is_file():
        return int(json.loads(meta.read_text()).get("max_length", DEFAULT_MAX_LENGTH))
    return DEFAULT_MAX_LENGTH


def teacher_data_seed(teacher: str) -> int:
    """The data seed the teacher was fine-tuned with (hskstore_teacher.json), else 0: same split everywhere."""
    meta = Path(teacher) / "hskstore_teacher.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        return int(info.get("config", {}).get("data_seed", info.get("data_seed", 0)))
    return 0


@dataclass(frozen=True)
class ExtractConfig:
    teacher: str                          # fine-tuned teacher directory (transformers format)
    task: str                             # GLUE name, "tweets", or a CSV/TSV/JSONL path
    output: str                           # store directory
    compression: Compression = field(default_factory=Compression)
    max_length: int | None = None         # None: the teacher's fine-tuning max length, else 128
    batch_size: int | None = None         # None: 256 on GPU, 64 on CPU
    chunk_rows: int = 4096                # rows per store chunk (STORAGE.md: <= 1024 is slow to read)
    splits: tuple[str, ...] = ("train", "validation")
    limit: int | None = None              # cap examples per split (see hskstore.data.load_task)
    data_seed: int = 0                    # train/validation split and `limit` subset: keep the teacher's
    device: str = "auto"
    overwrite: bool = False
    task_options: dict = field(default_factory=dict)  # text_columns, label_column... for file tasks

    def __post_init__(self):
        problems = []
        if self.chunk_rows < 1:
            problems.append(f"chunk_rows must be >= 1, got {self.chunk_rows}")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_length is not None and not 2 <= self.max_length <= 512:
            problems.append(f"max_length must be in 2..512, got {self.max_length}")
        if not self.splits:
            problems.append("splits must name at least one split")
        if problems:
            raise ConfigError(problems)


class _ChunkWriter:
    """Background thread that compresses and writes finished chunks while the teacher keeps running."""

    def __init__(self, writer: StoreWriter):
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="hskstore-writer", daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self.writer.write_chunk(*item)
                except BaseException as exc:  # surfaced in the main thread by put()/close()
                    self.error = exc

    def put(self, split: str, index: int, arrays: dict[str, np.ndarray]):
        if self.error:
            raise self.error
        self.queue.put((split, index, arrays))

    def close(self):
        self.queue.put(None)
        self.thread.join()
        if self.error:
            raise self.error


def _run_key(meta: dict) -> dict:
    """What must match for a partial store to be resumed by this run."""
    keys = ("compression", "resolved", "task", "max_length", "chunk_rows", "splits", "limit", "data_seed", "numerics",
            "batch_size")
    return {k: meta.get(k) for k in keys} | {"teacher_path": meta["teacher"]["path"]}


def _differences(old: dict, new: dict, prefix="") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: store has {a!r}, this run {b!r}")
    return diffs


def _check_output(config: ExtractConfig) -> None:
    """Fail on an unusable output before any slow work (loading data, tokenising, loading the teacher)."""
    path = Path(config.output)
    if not path.exists():
        return
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path} exists and is not an hskstore store; choose another --output "
                         "(--overwrite only replaces stores)")
    attrs = read_attrs(path)  # checks format and version
    if attrs.get("complete") and not config.overwrite:
        raise StoreError(f"{path} already holds a complete store; pass --overwrite to replace it "
                         "or choose another output.")


def _prepare_store(config: ExtractConfig, meta: dict, split_sizes, specs, fixed_mask, tokenizer_files) -> StoreWriter:
    path = Path(config.output)
    if path.exists() and config.overwrite:
        shutil.rmtree(path)
    attrs = read_attrs(path) if path.exists() else None
    if attrs is not None and not (attrs.get("layout_complete") or attrs.get("complete")):
        shutil.rmtree(path)  # interrupted while its arrays were being created: nothing in it to keep
        attrs = None
    if attrs is not None:  # a partial store (_check_output refused a complete one without --overwrite)
        old = _run_key(attrs)
        new = _run_key(json.loads(json.dumps(meta | {"splits": split_sizes, "chunk_rows": config.chunk_rows})))
        diffs = _differences(old, new)
        if diffs:
            raise StoreError(f"{path} is a partial store from a different run ({'; '.join(diffs[:3])}); "
                             "rerun with its original options to resume, or pass --overwrite.")
        return StoreWriter.reopen(path)
    packed_mask = None if fixed_mask is None else np.packbits(fixed_mask.numpy(), bitorder="little")
    return StoreWriter.create(path, meta, split_sizes, specs, config.chunk_rows, packed_mask, tokenizer_files)


def _tokenizer_files(tokenizer) -> dict[str, bytes]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def _teacher_chunk(model, selector, encoded, rows, batch_size, device, compression) -> dict[str, np.ndarray]:
    """Run the teacher over the rows of one chunk; return that chunk's arrays in row order."""
    lengths = encoded["lengths"][rows]
    order = np.argsort(-lengths, kind="stable")      # longest first: dynamic padding wastes little
    pieces = {"logits": [], "positions": [], "values": [], "masks": []}
    use_autocast = device.type == "cuda"
    for start in range(0, len(order), batch_size):
        batch_rows = rows[order[start:start + batch_size]]
        width = int(encoded["lengths"][batch_rows].max())
        batch = {name: torch.from_numpy(encoded[name][batch_rows, :width]).to(device, non_blocking=True)
                 for name in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.inference_mode(), torch.autocast(device.type, enabled=use_autocast, dtype=torch.float16):
            out, selection = selector.run(model, **batch)
        pieces["logits"].append(out.logits.float())
        pieces["positions"].append(selection.positions.to(torch.int16))
        values = selection.values.to(getattr(torch, compression.value_dtype))
        if compression.value_bits is not None:
            values = round_mantissa(values, compression.value_bits)
        pieces["values"].append(values)
        if selection.mask is not None:
            pieces["masks"].append(pack_bits(selection.mask))
    # One device->host copy per array per chunk; the GPU ran ahead until here.
    gathered = {name: torch.cat(parts).cpu().numpy() for name, parts in pieces.items() if parts}
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    arrays = {name: data[inverse] for name, data in gathered.items()}
    arrays["input_ids"] = encoded["input_ids"][rows]
    arrays["token_type_ids"] = encoded["token_type_ids"][rows]
    arrays["lengths"] = lengths
    arrays["labels"] = encoded["labels"][rows]
    return arrays


def extract(config: ExtractConfig, progress: bool = True) -> dict:
    """Extract a store. Returns the run summary (examples, seconds, examples/s, bytes on disk).

    Raises:
        ConfigError / ModelError / DataError / StoreError with a one-line message naming the fix.
    """
    from .data import load_task, tokenize
    from .report import store_info

    device = resolve_device(config.device)
    _check_output(config)
    compression = config.compression
    max_length = config.max_length or teacher_max_length(config.teacher)
    teacher_config = check_bert_family(config.teacher)  # fail fast: before data and weights are loaded
    compression.resolve(teacher_config["num_hidden_layers"], teacher_config["hidden_size"], max_length)
    task = load_task(config.task, limit=config.limit, seed=config.data_seed, **config.task_options)
    spec = task.spec
    columns = {s: task.split(s) for s in config.splits}  # "validation" also names MNLI's validation_matched
    model, identity = load_teacher(config.teacher, device=device)
    if identity.num_labels != spec.num_labels:
        raise ConfigError(f"teacher {config.teacher} predicts {identity.num_labels} labels but task {spec.name!r} "
                          f"has {spec.num_labels}: fine-tune a teacher on this task first (`hskstore finetune`).")
    resolved = compression.resolve(identity.num_layers, identity.hidden_size, max_length)
    tokenizer = load_tokenizer(config.teacher)
    sep_id = tokenizer.sep_token_id
    selector = Selector(compression, resolved, sep_id, model.bert.encoder.layer, identity.num_heads)
    fixed_mask = selector.fixed_mask
    batch_size = config.batch_size or (256 if device.type == "cuda" else 64)

    encoded = {s: tokenize(tokenizer, columns[s], spec, max_length) for s in config.splits}
    split_sizes = {s: int(len(encoded[s]["lengths"])) for s in config.splits}
    meta = {
        "created_by": f"hskstore {__version__}",
        "compression": compression.to_dict(),
        "resolved": resolved.to_dict(),
        "amount_hsk": resolved.amount(),
        "teacher": identity.to_dict(),
        "task": asdict(spec),
        # How to load the same data again (evaluate, predict): the task name or file, and its options.
        "task_ref": {"task": config.task, "options": config.task_options},
        "label_names": list(spec.label_names),
        "num_labels": spec.num_labels,
        "max_length": max_length,
        "limit": config.limit,
        "data_seed": config.data_seed,
        # CUDA runs the teacher under float16 autocast, CPU in float32: a resumed store must not mix them.
        "numerics": "cuda-float16-autocast" if device.type == "cuda" else "cpu-float32",
        "tokenizer": {"source": config.teacher, "class": type(tokenizer).__name__,
                      "sep_token_id": sep_id, "pad_token_id": tokenizer.pad_token_id,
                      "cls_token_id": tokenizer.cls_token_id},
    }
    meta["batch_size"] = batch_size  # batches are padded per batch: the same bytes need the same batching
    specs = array_specs(resolved, compression, identity.vocab_size, spec.num_labels)
    writer = _prepare_store(config, meta, split_sizes, specs, fixed_mask, _tokenizer_files(tokenizer))

    chunk_writer = _ChunkWriter(writer)
    todo = {s: [k for k in range(-(-split_sizes[s] // config.chunk_rows)) if k not in writer.chunks_done(s)]
            for s in config.splits}
    remaining = sum(min(config.chunk_rows, split_sizes[s] - k * config.chunk_rows) for s in todo for k in todo[s])
    started = time.perf_counter()
    bar = tqdm(total=remaining, unit="ex", desc="extract", disable=not progress, smoothing=0.1)
    try:
        for split in config.splits:
            for k in todo[split]:
                rows = np.arange(k * config.chunk_rows, min((k + 1) * config.chunk_rows, split_sizes[split]))
                arrays = _teacher_chunk(model, selector, encoded[split], rows, batch_size, device, compression)
                chunk_writer.put(split, k, arrays)
                bar.update(len(rows))
    finally:
        bar.close()
        chunk_writer.close()
    seconds = time.perf_counter() - started
    summary = {"examples_extracted": remaining, "seconds": round(seconds, 3),
               "examples_per_second": round(remaining / seconds, 1) if seconds > 0 else None,
               "device": str(device), "batch_size": batch_size}
    writer.mark_complete(summary)
    return summary | {"info": store_info(config.output)}
