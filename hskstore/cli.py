"""The `hskstore` command: thin wrappers that parse, call one library function, print a summary."""

from __future__ import annotations

import errno
import json
import os
import re
import sys

import click

from .errors import HskError
from .method.strategies import length_choices, width_choices
from .models.architectures import student_kinds

__all__ = ["main", "cli"]


def _width(value: str | None):
    """N^W: 'all', a fraction with a decimal point (0.1, 1.0) or a whole count (38, 1)."""
    if value is None or value == "all":
        return None
    try:
        return float(value) if "." in value else int(value)
    except ValueError:
        raise click.BadParameter(f"expected a count (38), a fraction of d (0.1) or 'all', got {value!r}") from None


def _count_or_all(value: str | None):
    if value in (None, "all"):
        return None
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"expected a whole number or 'all', got {value!r}") from None


def _parse_storage_options(pairs) -> dict:
    """`--storage-option key=value` (repeatable; `a.b=v` nests; JSON values: numbers, true, {...})."""
    options: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--storage-option")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        *parents, leaf = key.split(".")
        target = options
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return options


storage_option = click.option(
    "--storage-option", "storage_options", multiple=True, callback=lambda ctx, param, value: _parse_storage_options(value),
    help="fsspec option for a store URL, KEY=VALUE (repeatable), e.g. endpoint_url=http://host:9000. "
         "Credentials: the backend's usual environment (AWS_ACCESS_KEY_ID, ...).")

_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _as_os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`, or None.

    Rust libraries report a failed write as their own exception type holding the io::Error's text:
    safetensors as SafetensorError('... No space left on device (os error 28)'), tokenizers as a plain
    Exception('File too large (os error 27)'). Any exception whose text names an `(os error N)` is read as
    that OSError, and an OSError anywhere in the cause/context chain counts too (a library that wraps it).
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            return exc
        match = _RUST_OS_ERROR.search(str(exc))
        if match:
            return OSError(int(match.group(1)), os.strerror(int(match.group(1))))
        exc = exc.__cause__ or exc.__context__
    return None


_SPACE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EFBIG: "file too large for this file system or the process's file-size limit"}


def _os_error_line(exc: OSError) -> str:
    """An OSError met while reading or writing (disk full, quota, file-size limit, permissions) as one line
    naming the file and the fix."""
    where = f": {exc.filename}" if exc.filename else ""
    if exc.errno in _SPACE_ERRNOS:
        return (f"{_SPACE_ERRNOS[exc.errno]}{where}; free some space (or raise the limit) or choose an --output "
                "on another disk, then rerun (extract and train resume from their last recorded chunk or checkpoint)")
    return f"{exc.strerror or exc}{where}; check the path, its permissions and free space, then rerun"


def _is_main_rank() -> bool:
    """Under torchrun only rank 0 prints the summary (every rank prints its own errors)."""
    from .runtime.distributed import world_from_env

    return world_from_env().is_main


class _Group(click.Group):
    """Turns HskError, usage errors and OSError into one line on stderr and exit status 2: no traceback.

    Ctrl-C exits 130 (the shell's 128 + SIGINT) with one line: extract, train and finetune leave
    their last finished chunk or epoch on disk, and the same command resumes from it.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HskError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: rerun the same command to resume from the last finished chunk or epoch",
                       err=True)
            ctx.exit(130)
        except click.UsageError as exc:  # click's own would print the usage block around it
            command = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            click.echo(f"error: {exc.format_message()} (see `{command} --help`)", err=True)
            ctx.exit(2)
        except Exception as exc:  # an OSError, or one that a library wraps (see _as_os_error); anything else is a bug
            os_error = _as_os_error(exc)
            if os_error is None:
                raise
            click.echo(f"error: {' '.join(_os_error_line(os_error).split())}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hskstore")
def cli():
    """Offline BERT distillation from a compressed hidden-state-knowledge store."""


# ------------------------------------------------------------------ options shared by several commands

def _check_device(ctx, param, value):
    """Fail at parse time, before any data or weights load: a typo or a missing GPU is a one-line error."""
    if value in (None, "auto", "cpu"):
        return value
    from .runtime.device import resolve_device  # imports torch: only for a device that needs checking

    try:
        resolve_device(value)
    except HskError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def device_option(default: str = "auto"):
    return click.option("--device", default=default, show_default=True, callback=_check_device,
                        help="auto (CUDA, else mps, else CPU), cpu, cuda, cuda:N or mps.")


def quiet_option(func):
    return click.option("--quiet", "-q", is_flag=True,
                        help="No progress bars (also when TQDM_DISABLE is set).")(func)


def json_option(func):
    return click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")(func)


def overwrite_option(func):
    return click.option("--overwrite", is_flag=True,
                        help="Replace an existing output of this command (never another kind of directory).")(func)


def _progress(quiet: bool) -> bool:
    """Progress bars unless --quiet or TQDM_DISABLE (tqdm's own switch) is set."""
    return not (quiet or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"))


def _echo_summary(summary: dict, as_json: bool, line: str) -> None:
    click.echo(json.dumps(summary, indent=2, default=str) if as_json else line)


_task_options = [
    click.option("--data-dir", default=None,
                 help="GLUE names: the task's GLUE folder, a save_to_disk directory, or a cached hub id."),
    click.option("--text-column", "text_columns", multiple=True, help="File tasks: text column (twice for pairs)."),
    click.option("--label-column", default=None, help="File tasks: label column (default 'label')."),
    click.option("--validation-file", default=None, help="File tasks: a separate validation file."),
    click.option("--task-name", default=None, help="File tasks: the task's name [default: the file's stem]."),
    click.option("--metric", type=click.Choice(["accuracy", "f1", "matthews", "pearson_spearman"]), default=None,
                 help="File tasks [default: accuracy, or pearson_spearman for numeric scores]."),
]


def task_options(func):
    for option in reversed(_task_options):
        func = option(func)
    return func


def allow_task_mismatch_option(func):
    return click.option("--allow-task-mismatch", is_flag=True,
                        help="Use --task even when it is not the task the model was made for.")(func)


def _task_kwargs(text_columns=(), label_column=None, validation_file=None, data_dir=None, task_name=None,
                 metric=None) -> dict:
    """The given task options only: an empty dict means 'the recorded task's own options'."""
    kwargs = {"text_columns": tuple(text_columns) or None, "label_column": label_column,
              "validation_file": validation_file, "data_dir": data_dir, "task_name": task_name, "metric": metric}
    return {k: v for k, v in kwargs.items() if v is not None}


@cli.command()
@click.option("--model", default=None, help="BERT checkpoint directory [default: the packaged MiniLM-L6].")
@click.option("--task", default="tweets", show_default=True,
              help="GLUE name, 'tweets', a CSV/TSV/JSONL file or a save_to_disk directory.")
@click.option("--output", required=True, help="Directory the teacher is written to.")
@click.option("--max-length", default=64, show_default=True)
@click.option("--epochs", default=3, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=1e-4, show_default=True, help="Peak AdamW learning rate (1e-4 beat 5e-5 on MiniLM).")
@click.option("--limit", type=int, default=None, help="Examples kept: LIMIT train, LIMIT//4 validation.")
@click.option("--seed", default=0, type=click.IntRange(0, 2**32 - 1), show_default=True,
              help="Classifier init, dropout and batch order.")
@click.option("--data-seed", default=0, type=click.IntRange(0, 2**32 - 1), show_default=True,
              help="Train/validation split and --limit subset.")
@device_option()
@click.option("--no-resume", is_flag=True, help="Ignore an unfinished run's checkpoint in --output.")
@overwrite_option
@quiet_option
@json_option
@task_options
def finetune(model, task, output, max_length, epochs, batch_size, lr, limit, seed, data_seed, device, no_resume,
             overwrite, quiet, as_json, **task_kw):
    """Fine-tune a BERT checkpoint on a task and save it as a teacher (safetensors)."""
    from .stages.finetune import FinetuneConfig, finetune as run
    from .experiments.demo import packaged_teacher_path

    config = FinetuneConfig(model=model or packaged_teacher_path(), task=task, output=output, max_length=max_length,
                            epochs=epochs, batch_size=batch_size, lr=lr, limit=limit, seed=seed, data_seed=data_seed, device=device,
                            resume=not no_resume, overwrite=overwrite, **_task_kwargs(**task_kw))
    metrics = run(config, progress=_progress(quiet))
    _echo_summary(metrics, as_json, f"teacher saved to {output}: " + ", ".join(
        f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))


@cli.command()
@click.option("--teacher", required=True, help="Fine-tuned teacher directory.")
@click.option("--task", default=None, help="GLUE name, 'tweets', a CSV/TSV/JSONL file or a save_to_disk directory "
                                           "[default: the teacher's task].")
@click.option("--output", required=True, help="Store to create (or resume): a directory, x.h5, or a URL (s3://b/x.zarr).")
@click.option("--depth", default="1", show_default=True, help="N^D: top student layers kept, or 'all'.")
@click.option("--length", default="9", show_default=True, help="N^L: tokens kept per layer, or 'all'.")
@click.option("--width", default="0.1", show_default=True, help="N^W: activations kept, a count or fraction of d, or 'all'.")
@click.option("--student-layers", default=3, show_default=True, help="L': student depth the layer mapping is for.")
@click.option("--l-top", type=int, default=None, help="Teacher layer for the student's top layer [default: round(10L/12)].")
@click.option("--length-strategy", type=click.Choice(length_choices()), default="att-nosep", show_default=True)
@click.option("--score-layer", type=click.Choice(["uniform", "same"]), default="uniform", show_default=True,
              help="Rank tokens with the attention of layer g(l, L) (uniform) or of the stored layer (same).")
@click.option("--score-kind", type=click.Choice(["logits", "softmax"]), default="logits", show_default=True,
              help="Average pre-softmax scores (released code; ahead over 3 seeds, docs/results.md) or "
                   "post-softmax attention (the paper's text).")
@click.option("--width-strategy", type=click.Choice(width_choices()), default="mag", show_default=True)
@click.option("--width-seed", default=0, show_default=True)
@click.option("--full", is_flag=True, help="Full HSK: every mapped layer, token and activation (baseline).")
@click.option("--value-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--value-bits", type=int, default=None,
              help="Lossy: keep this many of float16's 10 mantissa bits (7: ~0.4% error, smaller store).")
@click.option("--max-length", type=int, default=None, help="[default: the teacher's fine-tuning length, else 128]")
@click.option("--batch-size", type=int, default=None, help="Rows per teacher batch [default: batch by tokens].")
@click.option("--batch-tokens", type=int, default=None,
              help="Padded tokens per teacher batch [default: 32768 on GPU/mps, 8192 on CPU].")
@click.option("--chunk-rows", default=4096, show_default=True)
@click.option("--limit", type=int, default=None, help="Examples kept: LIMIT train, LIMIT//4 validation.")
@click.option("--data-seed", default=None, type=click.IntRange(0, 2**32 - 1),
              help="Train/validation split and --limit seed [default: the teacher's, from finetune, else 0].")
@device_option()
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@click.option("--dry-run", is_flag=True, help="Check the configuration and print what would be stored.")
@json_option
@quiet_option
@storage_option
@task_options
@allow_task_mismatch_option
def extract(teacher, task, output, depth, length, width, student_layers, l_top, length_strategy, score_layer,
            score_kind, width_strategy, width_seed, full, value_dtype, value_bits, max_length, batch_size, batch_tokens,
            chunk_rows, limit, data_seed, device, overwrite, dry_run, as_json, quiet, allow_task_mismatch,
            storage_options, **task_kw):
    """Run the teacher once and store its compressed HSK, logits, tokens and labels."""
    from .method.compression import Compression
    from .stages.extract import ExtractConfig, extract as run, teacher_data_seed, teacher_max_length
    from .store.report import format_info
    from .models.teacher import check_bert_family, check_max_length

    if full:
        compression = Compression.full(student_layers=student_layers, l_top=l_top, value_dtype=value_dtype)
    else:
        length_value = _count_or_all(length)
        compression = Compression(depth=_count_or_all(depth), length=length_value, width=_width(width),
                                  student_layers=student_layers, l_top=l_top,
                                  length_strategy="all" if length_value is None else length_strategy,
                                  score_layer=score_layer, score_kind=score_kind, width_strategy=width_strategy,
                                  width_seed=width_seed, value_dtype=value_dtype, value_bits=value_bits)
    config = ExtractConfig(teacher=teacher, task=task, output=output, compression=compression,
                           max_length=max_length, batch_size=batch_size, batch_tokens=batch_tokens,
                           chunk_rows=chunk_rows, limit=limit,
                           data_seed=teacher_data_seed(teacher) if data_seed is None else data_seed, device=device,
                           overwrite=overwrite, task_options=_task_kwargs(**task_kw),
                           allow_task_mismatch=allow_task_mismatch, storage_options=storage_options)
    if dry_run:
        teacher_config = check_bert_family(teacher)
        check_max_length(max_length or teacher_max_length(teacher), teacher_config, "the teacher", teacher)
        resolved = compression.resolve(teacher_config["num_hidden_layers"], teacher_config["hidden_size"],
                                       max_length or teacher_max_length(teacher))
        click.echo(json.dumps({"compression": compression.to_dict(), "resolved": resolved.to_dict(),
                               "amount_hsk": resolved.amount()}, indent=2))
        return
    summary = run(config, progress=_progress(quiet))
    if not _is_main_rank():
        return
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        click.echo(format_info(summary["info"]))


@cli.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--allow-incomplete", is_flag=True, help="Describe a store whose extraction has not finished.")
@storage_option
def info(store, as_json, allow_incomplete, storage_options):
    """What a store holds: config, counts, A^HSK, bytes per component."""
    from .store.report import format_info, store_info

    result = store_info(store, allow_incomplete=allow_incomplete, storage_options=storage_options)
    click.echo(json.dumps(result, indent=2, default=str) if as_json else format_info(result))


@cli.command()
@click.argument("kind", type=click.Choice(student_kinds()))
@click.option("--output", required=True, help="Student directory to write.")
@click.option("--store", default=None, help="Store: fixes vocab and labels; ROSITA scores importance on its train split.")
@click.option("--teacher", default=None, help="ROSITA: the fine-tuned teacher to cut the student from.")
@click.option("--checkpoint", default=None, help="BERT: a checkpoint directory (e.g. a general TinyBERT).")
@click.option("--layers", type=int, default=None, help="L' [rosita: 3, bert: 4].")
@click.option("--heads", type=int, default=None, help="Heads per layer [rosita: 6, bert: 12].")
@click.option("--ffn", type=int, default=None, help="FFN neurons [rosita: 768, bert: 1200].")
@click.option("--rank", type=int, default=None, help="ROSITA: word-embedding SVD rank [128].")
@click.option("--hidden", type=int, default=None, help="BERT: hidden size [312].")
@click.option("--importance-examples", type=int, default=None, help="ROSITA: examples scored [all].")
@click.option("--seed", default=0, show_default=True)
@device_option("cpu")
@overwrite_option
@quiet_option
@json_option
@storage_option
def student(kind, output, store, teacher, checkpoint, layers, heads, ffn, rank, hidden, importance_examples, seed,
            device, overwrite, quiet, as_json, storage_options):
    """Build a student: ROSITA-style from the teacher, or TinyBERT-style (checkpoint or fresh config)."""
    from .runtime.device import resolve_device
    from .experiments.demo import build_student

    ignored = [flag for flag, value, kinds in (("--rank", rank, "rosita"), ("--hidden", hidden, "bert"),
                                               ("--teacher", teacher, "rosita"), ("--checkpoint", checkpoint, "bert"),
                                               ("--importance-examples", importance_examples, "rosita"))
               if value is not None and kinds != kind]
    if ignored:
        raise click.UsageError(f"{', '.join(ignored)} do(es) not apply to a {kind} student")
    summary = build_student(kind, output, teacher=teacher, store=store, checkpoint=checkpoint, num_layers=layers,
                            num_heads=heads, intermediate_size=ffn, embedding_rank=rank, hidden_size=hidden,
                            importance_examples=importance_examples, seed=seed,
                            device=str(resolve_device(device)), progress=_progress(quiet), overwrite=overwrite,
                            storage_options=storage_options)
    _echo_summary(summary, as_json, f"student saved to {output}: " + ", ".join(f"{k}={v}" for k, v in summary.items()))


@cli.command()
@click.argument("store")
@click.option("--student", required=True, help="Student directory (`hskstore student`).")
@click.option("--output", required=True, help="Run directory: checkpoint/, student/, metrics.json.")
@click.option("--teacher", default=None, help="Online mode: run this teacher in the loop instead of reading HSK.")
@click.option("--stages", default="hsk,pred", show_default=True, help="hsk, pred, or hsk,pred.")
@click.option("--hsk-epochs", type=int, default=None, help="[paper, per task]")
@click.option("--hsk-lr", type=float, default=None, help="[5e-5, constant]")
@click.option("--hsk-batch-size", type=int, default=None)
@click.option("--pred-epochs", type=int, default=None, help="[5]")
@click.option("--pred-lr", type=float, default=None, help="[2e-5, linear decay]")
@click.option("--pred-batch-size", type=int, default=None)
@click.option("--hsk-loss", type=click.Choice(["masked-zero", "kept"]), default="masked-zero", show_default=True)
@click.option("--temperature", default=1.0, show_default=True)
@click.option("--weight-decay", default=0.0, type=click.FloatRange(min=0), show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop each stage after this many steps.")
@click.option("--workers", default=0, type=click.IntRange(min=0), show_default=True,
              help="DataLoader workers reading the store.")
@click.option("--seed", default=0, show_default=True)
@device_option()
@click.option("--no-amp", is_flag=True, help="No bf16 autocast on CUDA.")
@click.option("--no-resume", is_flag=True, help="Ignore an existing checkpoint in --output (needs --overwrite).")
@overwrite_option
@quiet_option
@json_option
@storage_option
def train(store, student, output, teacher, stages, hsk_epochs, hsk_lr, hsk_batch_size, pred_epochs, pred_lr,
          pred_batch_size, hsk_loss, temperature, weight_decay, max_steps, workers, seed, device, no_amp, no_resume,
          overwrite, quiet, as_json, storage_options):
    """Distil a student from a store (HSK stage, then prediction stage); no teacher loaded."""
    from .stages.train import TrainConfig, train as run

    config = TrainConfig(store=store, student=student, output=output, teacher=teacher,
                         stages=tuple(s.strip() for s in stages.split(",") if s.strip()), hsk_epochs=hsk_epochs,
                         hsk_lr=hsk_lr, hsk_batch_size=hsk_batch_size, pred_epochs=pred_epochs, pred_lr=pred_lr,
                         pred_batch_size=pred_batch_size, hsk_loss=hsk_loss, temperature=temperature,
                         weight_decay=weight_decay, max_steps=max_steps, num_workers=workers, seed=seed,
                         device=device, amp=not no_amp, resume=not no_resume, overwrite=overwrite,
                         storage_options=storage_options)
    result = run(config, progress=_progress(quiet))
    if not _is_main_rank():
        return
    teacher_dev, student_dev = result["teacher_dev"], result["student_dev"] or {}
    _echo_summary(result, as_json, f"{result['mode']} run in {output}: teacher dev {teacher_dev}  "
                                   f"student dev {student_dev}")


@cli.command()
@click.argument("store")
@click.option("--student", required=True, help="Student directory (`hskstore student`).")
@click.option("--teacher", default=None, help="The store's teacher: also time online distillation.")
@click.option("--steps", default=20, show_default=True, help="Timed steps per mode per round.")
@click.option("--rounds", default=3, show_default=True, help="Interleaved rounds; medians are reported.")
@click.option("--batch-size", type=int, default=None, help="Step batch size [64 on GPU, 16 on CPU].")
@click.option("--reader-batches", default=200, show_default=True, help="Batches per reader timing.")
@click.option("--reader-batch-size", type=int, default=None, help="[the task's HSK-stage batch size]")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the measurements as JSON.")
def bench(store, student, teacher, steps, rounds, batch_size, reader_batches, reader_batch_size, device, as_json):
    """Time HSK-stage steps student-only, offline and online, and the store reader alone."""
    from .experiments.bench import BenchConfig, bench as run, format_bench

    config = BenchConfig(store=store, student=student, teacher=teacher, steps=steps, rounds=rounds,
                         batch_size=batch_size, reader_batches=reader_batches, reader_batch_size=reader_batch_size,
                         device=device)
    result = run(config, echo=None if as_json else lambda line: click.echo(line, err=True))
    click.echo(json.dumps(result, indent=2) if as_json else format_bench(result))


def _point(value: str) -> tuple:
    """N^D,N^L,N^W[,option=value...]: 1,9,0.1 or 4,all,all or 1,9,0.1,width_strategy=rand,hsk_loss=kept."""
    from .experiments.sweep import POINT_COMPRESSION_OPTIONS

    usage = f"a point is N^D,N^L,N^W[,option=value...] such as 1,9,0.1 or 1,all,0.1,hsk_loss=kept, got {value!r}"
    parts = value.split(",")
    if len(parts) < 3 or any("=" in p for p in parts[:3]) or any("=" not in p for p in parts[3:]):
        raise click.BadParameter(usage)
    try:
        triple = tuple(None if p.strip() == "all" else convert(p) for p, convert in zip(parts[:3], (int, int, _width)))
    except ValueError:
        raise click.BadParameter(usage) from None
    options = {}
    for part in parts[3:]:
        key, raw = (s.strip() for s in part.split("=", 1))
        whole = key in ("l_top", "width_seed", "value_bits") and key in POINT_COMPRESSION_OPTIONS
        try:
            options[key] = int(raw) if whole else raw
        except ValueError:
            raise click.BadParameter(f"point option {key} takes a whole number, got {raw!r}") from None
    return triple + (options,) if options else triple


def _floats(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None


@cli.command()
@click.option("--teacher", required=True, help="Fine-tuned teacher directory.")
@click.option("--task", default="tweets", show_default=True, help="GLUE name, 'tweets', or a CSV/TSV/JSONL file.")
@click.option("--output", required=True, help="Sweep directory: stores/, runs/, results.json/.csv, sweep.png.")
@click.option("--student", default="rosita", show_default=True,
              help="Initial student directory, or 'rosita' to cut one from the teacher once.")
@click.option("--point", "points", multiple=True,
              help="N^D,N^L,N^W[,option=value...]: 1,9,0.1; 4,all,all; 1,9,0.1,width_strategy=rand (repeat).")
@click.option("--level", "levels", multiple=True, type=float, help="Target A^HSK, spread over triples (repeat).")
@click.option("--per-level", default=1, show_default=True, help="Triples drawn per --level.")
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--student-layers", default=3, show_default=True, help="L' of the student.")
@click.option("--no-full", is_flag=True, help="Skip the full-HSK baseline.")
@click.option("--no-pred", is_flag=True, help="Skip the prediction-only KD baseline.")
@click.option("--pred-lr-grid", default="2e-5,5e-5,1e-4,5e-4", show_default=True,
              help="Prediction-only KD learning rates; the best on dev is run for every seed.")
@click.option("--point-lr-grid", default="", help="HSK + prediction points: both stages' lr picked on dev the "
              "same way (give the baseline's grid for a fair comparison) [default: fixed --hsk-lr/--pred-lr].")
@click.option("--hsk-epochs", type=int, default=None, help="[the task's schedule]")
@click.option("--pred-epochs", type=int, default=None, help="[the task's schedule]")
@click.option("--hsk-lr", type=float, default=None)
@click.option("--pred-lr", type=float, default=None, help="HSK + prediction points' prediction-stage lr.")
@click.option("--hsk-batch-size", type=int, default=None)
@click.option("--pred-batch-size", type=int, default=None)
@click.option("--limit", type=int, default=None, help="Examples kept: LIMIT train, LIMIT//4 validation.")
@click.option("--max-length", type=int, default=None, help="[the teacher's fine-tuning length]")
@click.option("--device", default="auto", show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the points and the number of training runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def sweep(teacher, task, output, student, points, levels, per_level, seeds, student_layers, no_full, no_pred,
          pred_lr_grid, point_lr_grid, hsk_epochs, pred_epochs, hsk_lr, pred_lr, hsk_batch_size, pred_batch_size, limit, max_length,
          device, dry_run, as_json):
    """Dev metric against A^HSK over points and seeds, with prediction-only KD and full HSK baselines."""
    from .experiments.sweep import SweepConfig, sweep as run

    config = SweepConfig(teacher=teacher, task=task, output=output, student=student,
                         points=tuple(_point(p) for p in points), levels=tuple(levels), per_level=per_level,
                         seeds=tuple(int(s) for s in _floats(seeds)), student_layers=student_layers,
                         full_baseline=not no_full, pred_baseline=not no_pred, pred_lr_grid=_floats(pred_lr_grid),
                         point_lr_grid=_floats(point_lr_grid), hsk_epochs=hsk_epochs, pred_epochs=pred_epochs, hsk_lr=hsk_lr, pred_lr=pred_lr,
                         hsk_batch_size=hsk_batch_size, pred_batch_size=pred_batch_size, limit=limit,
                         max_length=max_length, device=device)
    result = run(config, echo=None if as_json else lambda line: click.echo(line, err=True), dry_run=dry_run)
    if dry_run or as_json:
        click.echo(json.dumps(result if dry_run else result["summary"], indent=2))
        return
    for row in result["summary"]:
        click.echo(f"{row['point']:<28} A^HSK {row['amount_hsk']:>8.3f}  dev {row['metric']} "
                   f"{row['dev_mean']:.4f} +- {row['dev_std']:.4f} ({row['seeds']} seeds)")
    click.echo("wrote " + ", ".join(v for v in result["files"].values() if v))


@cli.command()
@click.argument("student_dir", metavar="STUDENT")
@click.option("--task", default=None, help="[default: the task the student was distilled on]")
@click.option("--split", default="validation", show_default=True)
@click.option("--limit", type=int, default=None, help="[default: the store's]")
@click.option("--data-seed", type=click.IntRange(0, 2**32 - 1), default=None,
              help="Split and --limit seed [default: the store's].")
@device_option()
@click.option("--json", "as_json", is_flag=True)
@click.option("--store", default=None, help="Evaluate on a store's split (its tokens and labels): no dataset needed.")
@storage_option
@task_options
@allow_task_mismatch_option
def evaluate(student_dir, task, split, limit, data_seed, device, as_json, store, storage_options, allow_task_mismatch,
             **task_kw):
    """GLUE metrics of a saved student on a task split."""
    from .stages.evaluate import evaluate_on_store, evaluate_student

    if store is not None:
        result = evaluate_on_store(student_dir, store, split, device=device, storage_options=storage_options)
    else:
        result = evaluate_student(student_dir, task, split, limit=limit, seed=data_seed, device=device,
                                  task_options=_task_kwargs(**task_kw), allow_task_mismatch=allow_task_mismatch)
    click.echo(json.dumps(result, indent=2) if as_json else ", ".join(f"{k}={v}" for k, v in result.items()))


@cli.command()
@click.argument("student_dir", metavar="STUDENT")
@click.argument("texts", nargs=-1)
@click.option("--file", "text_file", type=click.File("r"), default=None, help="One text per line ('-' for stdin).")
@device_option()
def predict(student_dir, texts, text_file, device):
    """Label texts with a saved student (one JSON line each)."""
    from .stages.evaluate import predict_texts

    lines = list(texts) + ([line.rstrip("\n") for line in text_file if line.strip()] if text_file else [])
    if not lines:
        raise click.UsageError("give texts as arguments or --file")
    for row in predict_texts(student_dir, lines, device=device):
        click.echo(json.dumps(row))


@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("--overwrite", is_flag=True, help="Replace a complete store at DST.")
@click.option("--src-option", "src_options", multiple=True, callback=lambda c, p, v: _parse_storage_options(v),
              help="fsspec option for SRC, KEY=VALUE (repeatable).")
@click.option("--dst-option", "dst_options", multiple=True, callback=lambda c, p, v: _parse_storage_options(v),
              help="fsspec option for DST, KEY=VALUE (repeatable).")
def convert(src, dst, overwrite, src_options, dst_options):
    """Copy a store losslessly between backends: Zarr directory or URL <-> one HDF5 file (.h5)."""
    from .store.convert import convert_store

    summary = convert_store(src, dst, overwrite=overwrite, src_options=src_options, dst_options=dst_options)
    click.echo(f"converted {summary['examples']} examples: {src} -> {dst}")


@cli.command()
@click.argument("store")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def verify(store, storage_options, as_json):
    """Read every chunk of a store and name the first damaged or missing one (exit 2 if any)."""
    from .store.verify import verify_store

    summary = verify_store(store, storage_options=storage_options)
    click.echo(json.dumps(summary, indent=2) if as_json else
               f"{store}: {summary['chunks_checked']} array chunks read, checksums match, none missing"
               + ("" if summary["complete"] else " (store incomplete)"))


@cli.command(name="slice")
@click.argument("src")
@click.argument("dst")
@click.option("--depth", default=None, help="N^D: top stored layers kept [the store's].")
@click.option("--length", default=None, help="N^L: best tokens kept [the store's].")
@click.option("--width", default=None, help="N^W: top-magnitude activations kept, a count or fraction of d [the store's].")
@click.option("--limit", type=int, default=None, help="Keep the first LIMIT examples of every split.")
@click.option("--overwrite", is_flag=True, help="Replace a complete store at DST.")
@click.option("--src-option", "src_options", multiple=True, callback=lambda c, p, v: _parse_storage_options(v),
              help="fsspec option for SRC, KEY=VALUE (repeatable).")
@click.option("--dst-option", "dst_options", multiple=True, callback=lambda c, p, v: _parse_storage_options(v),
              help="fsspec option for DST, KEY=VALUE (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def slice_(src, dst, depth, length, width, limit, overwrite, src_options, dst_options, as_json):
    """Derive a smaller store from SRC with no teacher: fewer layers, tokens or activations."""
    from .store.slicing import slice_store

    summary = slice_store(src, dst, depth=None if depth is None else int(depth),
                          length=None if length is None else int(length),
                          width=None if width is None else _width(width), limit=limit, overwrite=overwrite,
                          src_options=src_options, dst_options=dst_options)
    click.echo(json.dumps(summary, indent=2) if as_json else
               f"sliced {src} -> {dst}: (N^D, N^L, N^W) = {tuple(summary['triple'])}, A^HSK {summary['amount_hsk']:.3f}, "
               f"examples {summary['examples']}")


@cli.command()
@click.argument("student_dir", metavar="STUDENT")
@click.argument("output", metavar="OUT")
@click.option("--format", "fmt", type=click.Choice(["transformers", "onnx"]), default="transformers",
              show_default=True, help="transformers: BERT-shaped students; onnx: every student.")
@click.option("--opset", default=17, show_default=True, help="ONNX opset.")
@overwrite_option
@json_option
def export(student_dir, output, fmt, opset, overwrite, as_json):
    """Write a student for use outside hskstore: a transformers directory or ONNX, with its tokenizer."""
    from .stages.export import export_student

    summary = export_student(student_dir, output, fmt, overwrite=overwrite, opset=opset)
    _echo_summary(summary, as_json, f"{summary['kind']} student exported to {output} ({fmt}): "
                                    + ", ".join(summary["files"]))


@cli.command()
@click.option("--workdir", default="runs/default", show_default=True)
@click.option("--limit", default=4000, show_default=True, help="Tweets used: LIMIT train, LIMIT//4 validation.")
@click.option("--teacher-epochs", default=3, show_default=True)
@click.option("--hsk-epochs", default=3, show_default=True)
@click.option("--pred-epochs", default=3, show_default=True)
@click.option("--hsk-lr", default=1e-4, show_default=True)
@click.option("--pred-lr", default=1e-4, show_default=True)
@click.option("--pred-only-lr", default=1e-4, show_default=True,
              help="Prediction-only KD's lr; it trains HSK_EPOCHS + PRED_EPOCHS epochs.")
@device_option()
@quiet_option
def demo(workdir, limit, teacher_epochs, hsk_epochs, pred_epochs, hsk_lr, pred_lr, pred_only_lr, device, quiet):
    """The embedded default end to end: MiniLM teacher on tweets -> (1, 9, 0.1) store -> ROSITA student."""
    from .experiments.demo import DefaultRun, run_default

    run_default(DefaultRun(workdir=workdir, limit=limit, teacher_epochs=teacher_epochs, hsk_epochs=hsk_epochs,
                           pred_epochs=pred_epochs, hsk_lr=hsk_lr, pred_lr=pred_lr, pred_only_lr=pred_only_lr,
                           device=device), progress=_progress(quiet), echo=click.echo)


def main():
    cli(prog_name="hskstore")


if __name__ == "__main__":
    sys.exit(main())
