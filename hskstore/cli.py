"""The `hskstore` command: thin wrappers that parse, call one library function, print a summary."""

from __future__ import annotations

import errno
import json
import os
import re
import sys

import click

from .configs.bench import BenchConfig
from .configs.common import DEVICE, OVERWRITE, SEED_RANGE, STORAGE_OPTIONS
from .configs.extract import ExtractConfig
from .configs.finetune import TASK_OPTIONS, FinetuneConfig
from .configs.train import TrainConfig
from .errors import HskError
from .experiments.sweep import SweepConfig
from .method.compression import VALUE_FORMATS, Compression, parse_width
from .options import Option, build, click_options, key_values
from .models.architectures import student_kinds

__all__ = ["main", "cli", "quick_exit_gc"]


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


# ------------------------------------------------------------------ options
# A config's options are declared on its fields (hskstore/configs, method/compression.py, experiments/sweep.py)
# and made by `click_options`; the options below are the command line's own, or shared with commands that
# have no config. Each is declared once.

def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None


def _fsspec_option(side: str):
    return Option(f"fsspec option for {side}, KEY=VALUE (repeatable).", flag=f"--{side.lower()}-option", multiple=True,
                  parse=key_values).click(f"{side.lower()}_options", {})


def _together(*decorators):
    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def device_option(default: str = "auto"):
    return DEVICE.click("device", default)


def dry_run_option(help: str):
    return click.option("--dry-run", is_flag=True, help=help)


quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars (also when TQDM_DISABLE is set).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
overwrite_option = OVERWRITE.click("overwrite", False)
overwrite_dst_option = click.option("--overwrite", is_flag=True, help="Replace a complete store at DST.")
storage_option = STORAGE_OPTIONS.click("storage_options", {})
src_option, dst_option = _fsspec_option("SRC"), _fsspec_option("DST")
value_format_option = Option("Requantize the values: int8 or int4 from float16, int4 from int8 (never finer).",
                             choices=VALUE_FORMATS, default_text="the store's").click("value_format", None)


def _mask_codecs() -> tuple[str, ...]:
    from .store.format import MASK_CODECS  # numpy only; read when the help or the option needs it

    return tuple(MASK_CODECS)


mask_codec_option = Option("Re-encode the bitpacked width masks with this codec (the same masks decoded).",
                           choices=_mask_codecs, default_text="the store's").click("mask_codec", None)
task_options = click_options(FinetuneConfig, only=TASK_OPTIONS)
allow_task_mismatch_option = click_options(ExtractConfig, only=("allow_task_mismatch",))
slice_options = _together(*(Option(help, parse=parse, default_text="the store's").click(name, None)
                             for name, help, parse in (
                                 ("depth", "N^D: top stored layers kept.", _whole),
                                 ("length", "N^L: best tokens kept.", _whole),
                                 ("width", "N^W: top-magnitude activations kept, a count or fraction of d.",
                                  parse_width))))


def _progress(quiet: bool) -> bool:
    """Progress bars unless --quiet or TQDM_DISABLE (tqdm's own switch) is set."""
    return not (quiet or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"))


def _echo_summary(summary: dict, as_json: bool, line: str) -> None:
    click.echo(json.dumps(summary, indent=2, default=str) if as_json else line)


def _task_kwargs(values: dict) -> dict:
    """The given task options only: an empty dict means 'the recorded task's own options'."""
    return {name: values[name] for name in TASK_OPTIONS if values.get(name) is not None}


@cli.command()
@click_options(FinetuneConfig)
@quiet_option
@json_option
def finetune(quiet, as_json, **values):
    """Fine-tune a BERT checkpoint on a task and save it as a teacher (safetensors)."""
    from .stages.finetune import finetune as run
    from .experiments.demo import packaged_teacher_path

    config = build(FinetuneConfig, values, model=values["model"] or packaged_teacher_path())
    metrics = run(config, progress=_progress(quiet))
    _echo_summary(metrics, as_json, f"teacher saved to {config.output}: " + ", ".join(
        f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))


@cli.command()
@click_options(ExtractConfig)
@click.option("--full", is_flag=True, help="Full HSK: every mapped layer, token and activation (baseline).")
@dry_run_option("Check the configuration and print what would be stored.")
@json_option
@quiet_option
@task_options
def extract(full, dry_run, as_json, quiet, **values):
    """Run the teacher once and store its compressed HSK, logits, tokens and labels."""
    from .models.teacher import teacher_data_seed, teacher_max_length
    from .stages.extract import extract as run
    from .store.report import format_info
    from .models.teacher import check_bert_family, check_max_length

    if full:
        compression = Compression.full(student_layers=values["student_layers"], l_top=values["l_top"],
                                       value_dtype=values["value_dtype"], value_format=values["value_format"])
    else:  # N^L = all keeps every token: the strategy `all`
        compression = build(Compression, values, **({"length_strategy": "all"} if values["length"] is None else {}))
    teacher, max_length = values["teacher"], values["max_length"]
    config = build(ExtractConfig, values, compression=compression, task_options=_task_kwargs(values),
                   data_seed=teacher_data_seed(teacher) if values["data_seed"] is None else values["data_seed"])
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
@json_option
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
@click_options(TrainConfig)
@quiet_option
@json_option
def train(quiet, as_json, **values):
    """Distil a student from a store (HSK stage, then prediction stage); no teacher loaded."""
    from .stages.train import train as run

    config = build(TrainConfig, values)
    result = run(config, progress=_progress(quiet))
    if not _is_main_rank():
        return
    teacher_dev, student_dev = result["teacher_dev"], result["student_dev"] or {}
    _echo_summary(result, as_json, f"{result['mode']} run in {config.output}: teacher dev {teacher_dev}  "
                                   f"student dev {student_dev}")


@cli.command()
@click.argument("store")
@click_options(BenchConfig)
@json_option
def bench(as_json, **values):
    """Time HSK-stage steps student-only, offline and online, and the store reader alone."""
    from .experiments.bench import bench as run, format_bench

    result = run(build(BenchConfig, values), echo=None if as_json else lambda line: click.echo(line, err=True))
    click.echo(json.dumps(result, indent=2) if as_json else format_bench(result))


@cli.command()
@click_options(SweepConfig)
@dry_run_option("Print the points, the number of training runs, and the task and examples the stores will hold.")
@json_option
@task_options
def sweep(dry_run, as_json, **values):
    """Dev metric against A^HSK over points and seeds, with prediction-only KD and full HSK baselines."""
    from .experiments.sweep import sweep as run

    task_kw = _task_kwargs(values)
    values = {k: v for k, v in values.items() if k not in TASK_OPTIONS} | {"task_options": task_kw}
    result = run(build(SweepConfig, values), echo=None if as_json else lambda line: click.echo(line, err=True),
                 dry_run=dry_run)
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
@click.option("--data-seed", type=click.IntRange(SEED_RANGE["min"], SEED_RANGE["max"]), default=None,
              help="Split and --limit seed [default: the store's].")
@device_option()
@json_option
@click.option("--store", default=None, help="Evaluate on a store's split (its tokens and labels): no dataset needed.")
@storage_option
@task_options
@allow_task_mismatch_option
def evaluate(student_dir, task, split, limit, data_seed, device, as_json, store, storage_options, allow_task_mismatch,
             **task_kw):
    """GLUE metrics of a saved student (or a fine-tuned teacher directory) on a task split."""
    from .stages.evaluate import evaluate_on_store, evaluate_student

    if store is not None:
        result = evaluate_on_store(student_dir, store, split, device=device, storage_options=storage_options)
    else:
        result = evaluate_student(student_dir, task, split, limit=limit, seed=data_seed, device=device,
                                  task_options=_task_kwargs(task_kw), allow_task_mismatch=allow_task_mismatch)
    click.echo(json.dumps(result, indent=2) if as_json else ", ".join(f"{k}={v}" for k, v in result.items()))


@cli.command()
@click.argument("student_dir", metavar="STUDENT")
@click.argument("texts", nargs=-1)
@click.option("--pair", "pairs", nargs=2, multiple=True, metavar="FIRST SECOND",
              help="A sentence pair for pair tasks (repeatable).")
@click.option("--file", "text_file", default=None,
              help="A .csv/.tsv/.jsonl file with the task's text columns, or plain text: one text per line ('-' for stdin).")
@click.option("--encoding", default=None, help="The --file's text encoding [default: utf-8].")
@device_option()
def predict(student_dir, texts, pairs, text_file, encoding, device):
    """Label texts or sentence pairs with a saved student (one JSON line each)."""
    from .stages.evaluate import predict_file, predict_texts

    rows = []
    if text_file is not None and os.path.splitext(text_file)[1].lower() in (".csv", ".tsv", ".jsonl"):
        rows += predict_file(student_dir, text_file, encoding=encoding, device=device)
    elif text_file is not None:
        with click.open_file(text_file, "r", encoding=encoding or "utf-8") as handle:
            lines = [line.rstrip("\n") for line in handle if line.strip()]
        texts = tuple(texts) + tuple(lines)
    if texts and pairs:
        raise click.UsageError("give single texts or --pair FIRST SECOND, not both")
    if pairs:
        rows += predict_texts(student_dir, [a for a, _ in pairs], [b for _, b in pairs], device=device)
    elif texts:
        rows += predict_texts(student_dir, list(texts), device=device)
    if not rows and not texts:
        raise click.UsageError("give texts as arguments, --pair FIRST SECOND, or --file")
    for row in rows:
        click.echo(json.dumps(row))


@cli.command()
@click.argument("src")
@click.argument("dst")
@overwrite_dst_option
@src_option
@dst_option
@value_format_option
@mask_codec_option
def convert(src, dst, overwrite, src_options, dst_options, value_format, mask_codec):
    """Copy a store losslessly between backends: Zarr directory or URL <-> one HDF5 file (.h5)."""
    from .store.convert import convert_store

    summary = convert_store(src, dst, overwrite=overwrite, src_options=src_options, dst_options=dst_options,
                            value_format=value_format, mask_codec=mask_codec)
    click.echo(f"converted {summary['examples']} examples: {src} -> {dst}")


@cli.command()
@click.argument("store")
@storage_option
@json_option
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
@slice_options
@click.option("--limit", type=int, default=None, help="Keep the first LIMIT examples of every split.")
@value_format_option
@mask_codec_option
@overwrite_dst_option
@src_option
@dst_option
@json_option
def slice_(src, dst, depth, length, width, limit, value_format, mask_codec, overwrite, src_options, dst_options,
           as_json):
    """Derive a smaller store from SRC with no teacher: fewer layers, tokens or activations."""
    from .store.slicing import slice_store

    summary = slice_store(src, dst, depth=depth, length=length, width=width, limit=limit, value_format=value_format,
                          mask_codec=mask_codec, overwrite=overwrite,
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


def quick_exit_gc() -> None:
    """Collect the command's garbage now, then freeze what is left before the interpreter shuts down.

    Shutting down walks every object in several collections: with torch and transformers loaded
    (~400k objects) that took 1.5-2 s of CPU per process, per torchrun rank. One collection here still
    finalizes any unreachable object (an unclosed file in a cycle); the frozen survivors are skipped.
    """
    import gc

    gc.collect()
    gc.freeze()


def main():
    try:
        cli(prog_name="hskstore")
    finally:  # click's standalone mode ends with sys.exit: this runs on every exit but a killed one
        quick_exit_gc()


if __name__ == "__main__":
    sys.exit(main())
