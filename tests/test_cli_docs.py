"""docs/cli.md agrees with the options: every option in its command's table, with its default and choices.

The options are declared once, on the config fields (hskstore.options); the docs' tables are prose around
them, checked here: a flag missing from a table or not in the command, a default that differs, a choice not
named, a required option not marked required. Each command's usage line names only its own options, with
their defaults.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import click
import pytest

from hskstore.cli import cli

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
TABLED = ("finetune", "extract", "student", "train", "bench", "sweep")  # the commands with an option table
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")


def _sections(text: str) -> dict[str, str]:
    """Command name -> its section of docs/cli.md (from `## `name`:` to the next `## `)."""
    parts = re.split(r"^## ", text, flags=re.M)
    return {m.group(1): part for part in parts if (m := re.match(r"`(\w+)`:", part))}


def _table(section: str) -> list[tuple[list[str], str, str]]:
    """(flags, default, meaning) for each row of the section's option table."""
    lines = section.splitlines()
    try:
        start = lines.index("| option | default | meaning |")
    except ValueError:
        return []
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        first, default, meaning = (cell.strip() for cell in line.strip()[1:-1].split("|"))  # no | inside a cell
        rows.append((re.findall(r"`(--[a-z0-9-]+)", first), default, meaning))
    return rows


def _usage(section: str, command: str) -> str:
    match = re.search(rf"^hskstore {command}\b(.*)$", section, flags=re.M)
    return match.group(1) if match else ""


def _options(command: click.Command) -> dict[str, click.Option]:
    return {flag: p for p in command.params if isinstance(p, click.Option) for flag in p.opts if flag.startswith("--")}


def _numbers(text: str) -> list[float]:
    return [float(n) for n in NUMBER.findall(text)]


def _default_disagrees(option: click.Option, text: str) -> str | None:
    """Why the docs' default `text` is not the option's default, or None when it is."""
    text = text.replace("`", "")
    if option.required:
        return None if text.startswith("required") else f"is required, the docs say {text!r}"
    if option.is_flag:
        return None if text in ("off", "") else f"is a flag (off unless given), the docs say {text!r}"
    default = option.default
    if default in (None, (), ""):
        return None  # the docs say what the command resolves it to
    expected = _numbers(str(default))
    if expected:
        found = _numbers(text)
        same = len(found) == len(expected) and all(math.isclose(a, b) for a, b in zip(found, expected))
        return None if same else f"defaults to {default}, the docs say {text!r}"
    return None if str(default) in text else f"defaults to {default!r}, the docs say {text!r}"


def disagreements(command: click.Command, section: str, name: str) -> list[str]:
    """Every way the section's table and usage line disagree with the command's options."""
    options = _options(command)
    problems = []
    rows = _table(section)
    if rows or name in TABLED:
        documented = {flag for flags, _, _ in rows for flag in flags}
        problems += [f"{flag} is missing from the table" for flag in sorted(set(options) - documented - {"--help"})]
        problems += [f"{flag} is in the table but not an option" for flag in sorted(documented - set(options))]
    for flags, default, meaning in rows:
        parts = [p.strip() for p in default.split(", ")]
        for i, flag in enumerate(flags):
            option = options.get(flag)
            if option is None:
                continue
            why = _default_disagrees(option, parts[i] if len(parts) == len(flags) else default)
            if why:
                problems.append(f"{flag} {why}")
            if isinstance(option.type, click.Choice):
                missing = [c for c in option.type.choices if f"`{c}`" not in default + " " + meaning]
                if missing:
                    problems.append(f"{flag}: the choices {missing} are not named")
    usage = _usage(section, name)
    for flag, value in re.findall(r"(--[a-z0-9-]+)(?:[ =]([^\s\]\[]+))?", usage):
        option = options.get(flag)
        if option is None:
            problems.append(f"the usage line names {flag}, which is not an option")
        elif value and not value.isupper() and not option.is_flag and not value.startswith("-"):
            why = _default_disagrees(option, value.split("|")[0] if option.default is not None else value)
            if why and option.default not in (None, (), ""):
                problems.append(f"usage line: {flag} {why}")
    return problems


SECTIONS = _sections(DOCS.read_text())


def test_every_command_has_a_section_in_the_docs():
    assert sorted(SECTIONS) == sorted(cli.commands)


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_the_docs_and_the_options_agree(name):
    assert disagreements(cli.commands[name], SECTIONS[name], name) == []


@pytest.mark.parametrize("edit, expected", [
    (lambda s: s.replace("| `--chunk-rows` | 4096 |", "| `--chunk-rows` | 2048 |"),
     "--chunk-rows defaults to 4096, the docs say '2048'"),
    (lambda s: re.sub(r"^\| `--width-seed` .*\n", "", s, flags=re.M), "--width-seed is missing from the table"),
    (lambda s: s.replace("| `--width-seed` |", "| `--width-sead` |"), "--width-sead is in the table but not an option"),
    (lambda s: s.replace("`mag`, `uniform` or `rand`", "`mag` or `uniform`"), "--width-strategy: the choices ['rand']"),
    (lambda s: s.replace("| `--teacher` | required |", "| `--teacher` | none |"), "--teacher is required"),
    (lambda s: s.replace("[--depth 1 ", "[--depth 2 "), "usage line: --depth defaults to 1"),
])
def test_the_check_catches_each_kind_of_disagreement(edit, expected):
    """The check itself can fail: a changed default, a missing or unknown flag, a dropped choice."""
    section = edit(SECTIONS["extract"])
    assert section != SECTIONS["extract"]
    assert any(expected in problem for problem in disagreements(cli.commands["extract"], section, "extract"))
