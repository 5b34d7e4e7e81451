"""The nine GLUE tasks read from local copies: the GLUE distribution's TSVs, `save_to_disk` dirs, the hub cache.

The distribution's files (as `download_glue_data.py` writes them) differ per task: CoLA has no header,
MNLI's gold label is its last column and its dev file is `dev_matched.tsv`, MRPC's label comes first.
`GLUE_LAYOUTS` records, per task, the file of each split, whether it has a header, and the column
positions of the texts and the label, with the header names expected there as a check that DIR is the
task's folder. Every TSV is read with quoting off: RTE and MNLI texts start with quote characters.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .tables import LINE, read_tsv_rows

__all__ = ["GlueLayout", "GLUE_LAYOUTS", "read_glue_dir", "class_names", "offline_hub"]


@dataclass(frozen=True)
class GlueLayout:
    folder: str                          # the task's folder name in the GLUE distribution
    train_file: str
    validation_file: str
    header: bool                         # False: CoLA's files start with data
    fields: int | None                   # field count of every row (headerless files); None: the header's
    text_positions: tuple[int, ...]      # 0-based columns of the text(s)
    label_position: int                  # 0-based; negative counts from the end (MNLI's gold_label)
    header_names: tuple[str, ...] = ()   # expected header at text_positions + (label_position,)


GLUE_LAYOUTS: dict[str, GlueLayout] = {
    # CoLA rows: source code, label (0/1), the original author's mark, sentence.
    "cola": GlueLayout("CoLA", "train.tsv", "dev.tsv", False, 4, (3,), 1),
    "sst2": GlueLayout("SST-2", "train.tsv", "dev.tsv", True, None, (0,), 1, ("sentence", "label")),
    "mrpc": GlueLayout("MRPC", "train.tsv", "dev.tsv", True, None, (3, 4), 0, ("#1 String", "#2 String", "Quality")),
    "stsb": GlueLayout("STS-B", "train.tsv", "dev.tsv", True, None, (7, 8), 9, ("sentence1", "sentence2", "score")),
    "qqp": GlueLayout("QQP", "train.tsv", "dev.tsv", True, None, (3, 4), 5,
                      ("question1", "question2", "is_duplicate")),
    "mnli": GlueLayout("MNLI", "train.tsv", "dev_matched.tsv", True, None, (8, 9), -1,
                       ("sentence1", "sentence2", "gold_label")),
    "qnli": GlueLayout("QNLI", "train.tsv", "dev.tsv", True, None, (1, 2), 3, ("question", "sentence", "label")),
    "rte": GlueLayout("RTE", "train.tsv", "dev.tsv", True, None, (1, 2), 3, ("sentence1", "sentence2", "label")),
    "wnli": GlueLayout("WNLI", "train.tsv", "dev.tsv", True, None, (1, 2), 3, ("sentence1", "sentence2", "label")),
}


def _task_folder(task: str, directory: Path) -> Path:
    """DIR itself, or DIR/<Task> when DIR is the distribution's root (glue_data/)."""
    layout = GLUE_LAYOUTS[task]
    if (directory / layout.train_file).is_file():
        return directory
    if (directory / layout.folder / layout.train_file).is_file():
        return directory / layout.folder
    raise DataError(f"{directory} has no {layout.train_file} (nor {layout.folder}/{layout.train_file}): point "
                    f"--data-dir at GLUE's {layout.folder} folder, or at a `save_to_disk` dataset directory")


def _read_glue_file(path: Path, layout: GlueLayout, columns: tuple[str, ...], label_column: str) -> dict[str, list]:
    if not path.is_file():
        raise DataError(f"{path} does not exist: GLUE's {layout.folder} folder holds {layout.train_file} and "
                        f"{layout.validation_file}")
    rows = read_tsv_rows(path, encoding="utf-8")
    if layout.header:
        if not rows:
            raise DataError(f"{path} is empty: expected GLUE {layout.folder}'s header row, then its examples")
        (_, header), rows = rows[0], rows[1:]
        positions = (*layout.text_positions, layout.label_position)
        found = tuple(header[p] if -len(header) <= p < len(header) else None for p in positions)
        if found != layout.header_names:
            raise DataError(f"{path} line 1 has columns {list(found)} where GLUE {layout.folder} has "
                            f"{list(layout.header_names)}: is --task right for this folder?")
        width = len(header)
    else:
        width = layout.fields
    out: dict[str, list] = {c: [] for c in (*columns, label_column, LINE)}
    for number, fields in rows:
        if len(fields) != width:
            raise DataError(f"{path} line {number} has {len(fields)} tab-separated fields, GLUE {layout.folder} "
                            f"rows have {width}: fix or remove that row")
        for column, position in zip(columns, layout.text_positions):
            out[column].append(fields[position])
        out[label_column].append(fields[layout.label_position])
        out[LINE].append(number)
    return out


def read_glue_dir(task: str, directory, text_columns: tuple[str, ...], label_column: str,
                  train_split: str, validation_split: str) -> tuple[dict[str, dict[str, list]], dict[str, str]]:
    """Train and validation columns of a GLUE task folder, keyed by the spec's own split names.

    Returns:
        (splits, origins): split -> column -> values (raw label strings, LINE kept); split -> file path.
    """
    layout = GLUE_LAYOUTS[task]
    folder = _task_folder(task, Path(directory))
    splits, origins = {}, {}
    for split, name in ((train_split, layout.train_file), (validation_split, layout.validation_file)):
        path = folder / name
        splits[split] = _read_glue_file(path, layout, text_columns, label_column)
        origins[split] = str(path)
    return splits, origins


def class_names(dataset, label_column: str) -> tuple[str, ...] | None:
    """The ClassLabel names of a dataset's label column, or None when it has none."""
    feature = getattr(dataset, "features", {}).get(label_column)
    names = getattr(feature, "names", None)
    return tuple(names) if names else None


@contextlib.contextmanager
def offline_hub():
    """Make `datasets` use only its local cache for the duration (the env vars are read at import)."""
    import datasets
    import huggingface_hub.constants as hub

    saved = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved
