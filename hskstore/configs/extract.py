"""What `hskstore extract` stores and how: ExtractConfig."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ..method.compression import Compression
from ..options import nested, option
from .common import DEVICE, OVERWRITE, SEED_RANGE, STORAGE_OPTIONS

__all__ = ["ExtractConfig"]


def _mask_codecs() -> tuple[str, ...]:
    from ..store.format import MASK_CODECS  # numpy only; read when the help or a config needs it

    return tuple(MASK_CODECS)


@dataclass(frozen=True)
class ExtractConfig:
    teacher: str = option(help="Fine-tuned teacher directory.")  # transformers format
    task: str | None = option(help="GLUE name, 'tweets', a CSV/TSV/JSONL file or a save_to_disk directory.",
                              cli_default=None, default_text="the teacher's task")  # None: the teacher's
    output: str = option(help="Store to create (or resume): a directory, x.h5, or a URL (s3://b/x.zarr).")
    compression: Compression = nested(Compression, factory=Compression)
    max_length: int | None = option(None, "Tokens per example, [CLS]/[SEP] included.",
                                    default_text="the teacher's fine-tuning length, else 128")
    batch_size: int | None = option(None, "Rows per teacher batch.", default_text="batch by tokens")
    batch_tokens: int | None = option(None, "Padded tokens per teacher batch.",
                                      default_text="32768 on GPU/mps, 8192 on CPU")
    chunk_rows: int = option(4096, "Rows per store chunk.")  # docs/storage-notes.md: <= 1024 reads slowly
    splits: tuple[str, ...] = ("train", "validation")
    limit: int | None = option(None, "Examples kept: LIMIT train, LIMIT//4 validation.",
                               default_text="all")  # see data.tasks.load_task
    data_seed: int = option(0, "Train/validation split and --limit seed.", cli_default=None,
                            default_text="the teacher's, from finetune, else 0", **SEED_RANGE)  # keep the teacher's
    device: str = DEVICE.field("auto")
    overwrite: bool = OVERWRITE.field(False)  # replace an existing store (never another kind of directory)
    task_options: dict = field(default_factory=dict)  # text_columns, label_column, data_dir... (load_task)
    allow_task_mismatch: bool = option(False, "Use --task even when it is not the task the model was made for.")
    storage_options: dict = STORAGE_OPTIONS.field(factory=dict)  # fsspec options for URL outputs (endpoint_url, ...)
    # zstd1 keeps up with a GPU teacher (benchmarks/host_side.py); zstd19 writes ~8% fewer mask bytes at 2-3 MB/s a core.
    mask_codec: str = option("zstd1", "Codec of the bitpacked width masks.", choices=_mask_codecs)
    writer_threads: int | None = option(None, "Threads compressing and writing chunks.", min=1,
                                        default_text="one per core on Zarr, 1 on HDF5")

    def __post_init__(self):
        problems = []
        if self.mask_codec not in _mask_codecs():
            problems.append(f"mask_codec must be one of {', '.join(_mask_codecs())}, got {self.mask_codec!r}")
        if self.writer_threads is not None and self.writer_threads < 1:
            problems.append(f"writer_threads must be >= 1 (or None for one per core), got {self.writer_threads}")
        if self.chunk_rows < 1:
            problems.append(f"chunk_rows must be >= 1, got {self.chunk_rows}")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            problems.append(f"batch_tokens must be >= 1, got {self.batch_tokens}")
        if self.max_length is not None and not 2 <= self.max_length <= 512:
            problems.append(f"max_length must be in 2..512, got {self.max_length}")
        if self.limit is not None and self.limit < 1:
            problems.append(f"limit must be >= 1 (or None for every example), got {self.limit}")
        if not 0 <= self.data_seed < 2**32:
            problems.append(f"data_seed must be in 0..2**32-1 (a numpy seed), got {self.data_seed}")
        if not self.splits:
            problems.append("splits must name at least one split")
        if problems:
            raise ConfigError(problems)
