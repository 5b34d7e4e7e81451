"""Checks that run before anything slow: an output path the run could not write fails in milliseconds.

Without them, an unusable `--output` surfaced only when the first file was written: after 5-8 s of
loading weights and data for `extract`, after the whole fine-tuning run for `finetune`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import ConfigError

__all__ = ["check_writable"]


def check_writable(path: str | os.PathLike, option: str = "--output") -> None:
    """Raise a one-line ConfigError unless `path` is, or can be created as, a writable directory.

    The probe creates (and removes) a temporary file in the deepest existing directory, so read-only
    filesystems and permissions are caught as well as a file in the way; nothing else is written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is an existing file, not a directory: choose another {option} "
                          "(nothing was written)")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{option} {path} cannot be created: {existing} is a file, not a directory; "
                          f"choose another {option}")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".hskstore-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{option} {path} is not writable ({exc.strerror or exc} in {existing}): "
                          f"choose another {option} or fix its permissions") from None
