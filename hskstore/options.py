"""One declaration per option: a config dataclass's fields carry their command-line options.

A field declared with `option(...)` (or a shared `Option`'s `.field(...)`) says once what the command
line needs: the flag, the help, the choices (read from a registry when the help is shown), a parser.
`click_options(Config)` makes the click options from those fields, `build(Config, values)` turns the
parsed values back into the config, and tests/test_cli_docs.py holds docs/cli.md's tables to them.
A `nested(...)` field is a config inside a config (the store's compression, the sweep's templates):
its options join the outer command's.

Layer 0: imports click and the errors, never torch, so `hskstore --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import MISSING, dataclass, fields
from typing import Any, Callable, Mapping, Sequence

import click

from .errors import ConfigError, HskError

__all__ = ["Option", "Nested", "Spec", "option", "nested", "specs", "click_options", "build", "each", "key_values",
           "as_text"]

KEY = "hskstore"  # the field metadata key


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()  # Option.cli_default when the command line's default is the field's


@dataclass(frozen=True)
class Option:
    """How a field appears on the command line. Everything but `help` has a default that fits most fields."""

    help: str = ""
    flag: str | None = None                 # the long flag; default --field-name
    choices: Callable[[], Sequence[str]] | Sequence[str] | None = None  # a callable reads its registry when used
    parse: Callable[[Any], Any] | None = None  # the text (a tuple of texts when `multiple`) -> the field's value;
    #                                            ValueError or HskError -> a usage error naming the flag
    type: type | None = None                # int, float or str; default: read from the field's annotation
    multiple: bool = False                  # repeatable; the values arrive as a tuple
    negate: bool = False                    # a bool field that is on unless its flag (--no-resume) is given
    min: float | None = None                # a range checked when the command line is parsed
    max: float | None = None
    cli_default: Any = UNSET                # the command line's default when it is not the field's
    #                                         (None: the command resolves it, e.g. from the teacher)
    default_text: str | None = None         # what an empty default (None, ()) means, for the help

    def field(self, default: Any = MISSING, *, factory: Any = MISSING) -> Any:
        """A dataclass field with this option (no default: the option is required)."""
        return dataclasses.field(default=default, default_factory=factory, metadata={KEY: self})

    def click(self, name: str, default: Any = MISSING):
        """This option as a click decorator for a command that has no config field for it."""
        annotation = "str" if default is MISSING or default is None else type(default).__name__
        return _click_option(Spec(name, self, default, annotation))


@dataclass(frozen=True)
class Nested:
    """A config inside a config: its fields' options are the outer command's too."""

    cls: type
    only: tuple[str, ...] | None = None     # the inner config's options the outer command offers; None: all
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # inner defaults that differ here
    #                                         (a template's placeholders, a sweep's task)


def option(default: Any = MISSING, help: str = "", *, factory: Any = MISSING, **settings) -> Any:
    """A dataclass field with a command-line option (settings as `Option`'s fields)."""
    return Option(help, **settings).field(default, factory=factory)


def nested(cls: type, *, only: Sequence[str] | None = None, defaults: Mapping[str, Any] | None = None,
           factory: Any = MISSING) -> Any:
    """A dataclass field holding a `cls` config, whose options (`only` these) the outer command offers."""
    spec = Nested(cls, None if only is None else tuple(only), dict(defaults or {}))
    return dataclasses.field(default_factory=factory, metadata={KEY: spec})


@dataclass(frozen=True)
class Spec:
    """One command-line option of a command: a field's name, its Option and the default the command shows."""

    name: str
    option: Option
    default: Any            # MISSING: required
    annotation: str         # the field's annotation, as written

    @property
    def flag(self) -> str:
        return self.option.flag or "--" + self.name.replace("_", "-")


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


def specs(cls: type, only: Sequence[str] | None = None, defaults: Mapping[str, Any] | None = None) -> list[Spec]:
    """The options a config offers, in field order, nested configs' included."""
    found: dict[str, Spec] = {}
    for f in fields(cls):
        meta = f.metadata.get(KEY)
        if meta is None or (only is not None and f.name not in only):
            continue
        inner = specs(meta.cls, meta.only, meta.defaults) if isinstance(meta, Nested) else [Spec(
            f.name, meta, (defaults or {}).get(f.name, _field_default(f) if meta.cli_default is UNSET
                                               else meta.cli_default), str(f.type))]
        for spec in inner:
            if spec.name in found and found[spec.name].option is not spec.option:
                raise TypeError(f"{cls.__name__}: two different options are named {spec.name!r}")
            found.setdefault(spec.name, spec)
    return list(found.values())


def click_options(cls: type, only: Sequence[str] | None = None):
    """A decorator adding `cls`'s options (`only` these) to a click command; each value arrives under
    its field's name."""
    decorators = [_click_option(spec) for spec in specs(cls, only)]

    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def build(cls: type, values: Mapping[str, Any], only: Sequence[str] | None = None,
          defaults: Mapping[str, Any] | None = None, strict: str | None = None, **given):
    """`cls` from command-line values by field name: nested configs are built from the same values.

    `given` wins over `values`; with `strict` (a name for the error), a value no field takes is a ConfigError.
    """
    if strict:
        known = _names(cls)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown {strict} settings {unknown}; known: {sorted(known)}")
    kwargs = {}
    for f in fields(cls):
        meta = f.metadata.get(KEY)
        offered = only is None or f.name in only
        if f.name in given:
            kwargs[f.name] = given[f.name]
        elif isinstance(meta, Nested):
            if offered and f.name in values:  # the whole inner config, given
                kwargs[f.name] = values[f.name]
            elif offered:
                kwargs[f.name] = build(meta.cls, values, meta.only, meta.defaults)
        elif offered and f.name in values:
            kwargs[f.name] = values[f.name]
        elif defaults and f.name in defaults:
            kwargs[f.name] = defaults[f.name]
    return cls(**kwargs)


def _names(cls: type, only: Sequence[str] | None = None) -> set[str]:
    names = set()
    for f in fields(cls):
        meta = f.metadata.get(KEY)
        if only is not None and f.name not in only:
            continue
        names |= {f.name} | (_names(meta.cls, meta.only) if isinstance(meta, Nested) else set())
    return names


# ------------------------------------------------------------------ parsers shared by several options

def each(parse: Callable[[str], Any]) -> Callable[[Sequence[str]], tuple]:
    """A parser for a repeatable option: `parse` applied to every value."""
    return lambda values: tuple(parse(v) for v in values)


def key_values(pairs: Sequence[str]) -> dict:
    """KEY=VALUE pairs as a dict: `a.b=v` nests, values are JSON when they parse (numbers, true, {...})."""
    options: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
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


def as_text(value: Any) -> str | None:
    """A default as the command line writes it: 0.1, 2e-5, hsk,pred."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return ",".join(as_text(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(value)  # 1.0, not 1: a parser may read a whole number as a count (N^W)
    if isinstance(value, float):  # the shorter of 0.0001 and 1e-4 that reads back as the same number
        exact = next(f"{value:.{digits}e}" for digits in range(17) if float(f"{value:.{digits}e}") == value)
        mantissa, exponent = exact.split("e")
        return min(f"{value:g}", f"{mantissa}e{int(exponent)}", key=len)
    return str(value)


# ------------------------------------------------------------------ click

class _Choice(click.Choice):
    """click.Choice whose choices are read from their registry each time they are used (help, parsing):
    a registry module loads only for a command that shows or parses its option."""

    def __init__(self, source):
        self._source = source
        super().__init__((), case_sensitive=True)

    @property
    def choices(self) -> tuple:
        return tuple(self._source() if callable(self._source) else self._source)

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns it
        pass


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _base_type(annotation: str):
    parts = [p.strip() for p in annotation.split("|") if p.strip() != "None"]
    return _TYPES.get(parts[0]) if len(parts) == 1 else None


def _parsed(parse):
    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            return parse(value)
        except (ValueError, HskError) as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def _click_option(spec: Spec):
    option, default = spec.option, spec.default
    names = [spec.flag, spec.name]
    settings: dict[str, Any] = {"help": option.help or None}
    kind = option.type or _base_type(spec.annotation)
    if kind is bool and option.parse is None:
        if default is not option.negate:
            raise TypeError(f"option {spec.flag}: a flag turns a False field on, or a True one off with negate=True")
        callback = (lambda ctx, param, value: not value) if option.negate else None
        return click.option(*names, is_flag=True, default=False, callback=callback, **settings)
    if default is MISSING:
        settings["required"], default = True, None
    if option.multiple:
        settings["multiple"], default = True, ()
    if option.choices is not None:
        settings["type"] = _Choice(option.choices)
    elif option.parse is not None:
        settings["type"], default = click.STRING, default if option.multiple else as_text(default)
    elif option.min is not None or option.max is not None:
        ranged = click.IntRange if kind is int else click.FloatRange
        settings["type"] = ranged(option.min, option.max)
    elif kind is not None:
        settings["type"] = kind
    else:
        raise TypeError(f"option {spec.flag}: give a type or a parser for a field of type {spec.annotation}")
    if option.parse is not None:
        settings["callback"] = _parsed(option.parse)
    empty = default in (None, (), "")
    shown = option.default_text if empty and option.default_text else not empty and not settings.get("required")
    return click.option(*names, default=default, show_default=shown, **settings)
