"""One rule for every output directory: never replace a non-empty one without `overwrite`, never delete a stranger.

`hskstore student --output TEACHER_DIR` once overwrote a teacher's weights. Each command names the
files that mark its own kind of output; `overwrite` deletes a directory only when it holds one of them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ConfigError

__all__ = ["OUTPUT_MARKERS", "check_output_dir", "is_empty_or_missing"]

# kind -> files or folders whose presence says "hskstore wrote this kind of output here"
OUTPUT_MARKERS = {
    "teacher": ("hskstore_teacher.json", "checkpoint/state.json"),
    "student": ("student.json",),
    "run": ("metrics.json", "checkpoint", "checkpoint.old", "checkpoint.tmp", "student"),
    "export": ("hskstore_export.json",),
}


def is_empty_or_missing(path: str | Path) -> bool:
    path = Path(path)
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def check_output_dir(path: str | Path, kind: str, overwrite: bool, *, remove: bool = True) -> None:
    """Make `path` ready for a new output of `kind`, or raise a one-line ConfigError.

    Args:
        overwrite: replace an existing output of this kind (deleted here when `remove`).
    Raises:
        ConfigError: `path` is a file; is non-empty and `overwrite` is off; or holds no output of `kind`.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output {path} is a file, expected a directory: choose another output")
    if is_empty_or_missing(path):
        return
    markers = OUTPUT_MARKERS[kind]
    if not overwrite:
        raise ConfigError(f"output {path} exists and is not empty: pass --overwrite to replace it, "
                          "or choose another output")
    if not any((path / marker).exists() for marker in markers):
        raise ConfigError(f"output {path} does not hold a {kind} (none of {list(markers)}), so --overwrite will not "
                          "delete it: choose another output")
    if remove:
        shutil.rmtree(path)
