"""One place for the errors a user can cause: each says what was expected, what was found, and the fix."""

from __future__ import annotations

__all__ = ["HskError", "ConfigError", "StoreError", "ModelError", "DataError"]


class HskError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class ConfigError(HskError):
    """A configuration is invalid; lists every problem at once."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class StoreError(HskError):
    """A store is missing, incomplete, of another version, or does not match what uses it."""


class ModelError(HskError):
    """A teacher or student checkpoint is not what hskstore can use."""


class DataError(HskError):
    """A task, split, file or column does not exist or does not fit."""
