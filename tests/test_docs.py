"""The README's and docs' code blocks are checked against the code, so the docs say what it does today.

Python blocks run as written (in a scratch directory; the store-format reader gets a real store named
`store.zarr` there). Shell blocks are parsed, not run: every `hskstore ...` line must be a valid
command line for the CLI (command, options, choices, devices). The flows they show run end to end
with tiny inputs in test_cli.py, test_task_identity.py and test_export.py.
"""

import os
import re
import shlex
from pathlib import Path

import pytest

from hskstore.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(language: str):
    for path in DOCS:
        for number, match in enumerate(re.finditer(rf"```{language}\n(.*?)```", path.read_text(), re.S)):
            yield pytest.param(match.group(1), id=f"{path.name}-{number}")


def _command_lines(block: str):
    """`hskstore ...` command lines of a shell block: continuations joined, comments and pipes dropped."""
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0].strip()
        for part in line.split("|"):
            part = part.strip()
            if part.startswith("hskstore "):
                yield part
            elif "&& hskstore " in part:
                yield "hskstore " + part.split("&& hskstore ", 1)[1]


SHELL_LINES = [pytest.param(line, id=line[:60]) for block in _blocks("bash") for line in _command_lines(block.values[0])]


def test_the_docs_show_shell_commands():
    assert len(SHELL_LINES) > 20


@pytest.mark.parametrize("line", SHELL_LINES)
def test_every_documented_command_line_parses(line):
    args = shlex.split(line)[1:]
    with cli.make_context("hskstore", list(args), resilient_parsing=False) as group:
        left = getattr(group, "_protected_args", None) or []  # click >= 8.2 keeps the command name here
        name, command, rest = cli.resolve_command(group, left + group.args)
        command.make_context(name, rest, parent=group)  # raises click.UsageError on an unknown option or value


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in _blocks("python") if "README" in b.id])
def test_readme_python_runs_as_written(block, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    assert capsys.readouterr().out.splitlines()[-1] == "True"


@pytest.mark.parametrize("block", [b for b in _blocks("python") if "store-format" in b.id])
def test_store_format_reader_runs_as_written_on_a_real_store(block, tiny_store, tmp_path, monkeypatch):
    from hskstore.store.convert import convert_store

    os.symlink(tiny_store, tmp_path / "store.zarr")
    convert_store(tiny_store, str(tmp_path / "store.h5"))   # the h5py example reads the HDF5 form
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "store-format.md", "exec"), {})


def test_module_names_stay_modules_and_every_public_name_resolves():
    import inspect

    import hskstore

    for module in ("extract", "train", "finetune", "store", "export", "data"):
        assert inspect.ismodule(getattr(hskstore, module)), module
    for name in hskstore.__all__:
        value = getattr(hskstore, name)
        assert not inspect.ismodule(value), name  # no public name shadows a module
    assert hskstore.run_extract is hskstore.extract.extract and hskstore.run_train is hskstore.train.train
