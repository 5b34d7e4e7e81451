"""Read a .csv, .tsv or .jsonl file into column lists, remembering each row's line for error messages.

A malformed row is an error naming the file and line, never a silently merged or padded row: a stray
quote in a CSV once merged rows and invented a label class `None`. TSV files are read with quoting off
(fields split on tabs, as GLUE's TSVs require: their texts start with quote characters); CSV files
follow RFC 4180 quoting, with no limit on the size of a field.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

from ..errors import DataError

__all__ = ["LINE", "FILE_SUFFIXES", "read_table", "read_tsv_rows"]

LINE = "__line__"   # reserved column: the 1-based line each row starts on
FILE_SUFFIXES = (".csv", ".tsv", ".jsonl")


def _decode(path: Path, encoding: str | None) -> str:
    """The file's text: UTF-8 (a leading BOM dropped) unless `encoding` names another codec.

    A byte that does not decode is an error naming its line: guessing latin-1 silently turns a UTF-8 file
    with one bad byte into mojibake the teacher then learns from.
    """
    raw = path.read_bytes()  # bytes, not read_text(): newlines inside quoted CSV fields stay as written
    codec = encoding or "utf-8-sig"
    try:
        return raw.decode(codec)
    except LookupError:
        raise DataError(f"unknown --encoding {encoding!r} for {path}: pass a Python codec name such as utf-8 or "
                        "latin-1") from None
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path} line {line} is not valid {encoding or 'UTF-8'} (byte {raw[exc.start]:#04x} at "
                        f"offset {exc.start}): re-save the file as UTF-8 or pass --encoding (e.g. latin-1)") from None


def _check_file(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist: pass an existing .csv/.tsv/.jsonl file")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DataError(f"data file {path} must end in {list(FILE_SUFFIXES)}, got {suffix!r}")
    return suffix


@contextlib.contextmanager
def _no_field_limit():
    """csv's default 128 KB field cap rejects long documents; lift it for the duration."""
    saved = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(saved)


def read_tsv_rows(path, encoding: str | None = None) -> list[tuple[int, list[str]]]:
    """(line, fields) for every non-blank line of a TSV, split on tabs with quoting off."""
    path = Path(path)
    text = _decode(path, encoding)
    # split("\n"), not splitlines(): latin-1 text holds \x85 and \x1c-\x1e, which splitlines() breaks on.
    return [(number, line.rstrip("\r").split("\t"))
            for number, line in enumerate(text.split("\n"), 1) if line.strip("\r")]


def read_table(path, encoding: str | None = None) -> dict[str, list]:
    """Columns of a file with a header row (.csv/.tsv) or one JSON object a line (.jsonl).

    Returns:
        column name -> values in file order, plus LINE -> the line each row starts on.
    Raises:
        DataError: missing file, unknown suffix, bad JSON, or a row whose field count is not the header's.
    """
    path = Path(path)
    suffix = _check_file(path)
    if suffix == ".jsonl":
        rows, lines = [], []
        for number, line in enumerate(_decode(path, encoding).split("\n"), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path} line {number} is not JSON ({exc}): write one object a line") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path} line {number} is not a JSON object: write one object a line")
                rows.append(row)
                lines.append(number)
        if not rows:
            raise DataError(f"{path} holds no JSON objects: write one object a line, one line per example")
        names = list(dict.fromkeys(k for row in rows for k in row))
        return {n: [row.get(n) for row in rows] for n in names} | {LINE: lines}
    if suffix == ".tsv":
        numbered = read_tsv_rows(path, encoding)
    else:
        numbered = []
        with _no_field_limit():
            reader = csv.reader(io.StringIO(_decode(path, encoding), newline=""))
            end = 0
            try:
                for fields in reader:
                    start, end = end + 1, reader.line_num
                    if fields:
                        numbered.append((start, fields))
            except csv.Error as exc:
                raise DataError(f"{path} line {reader.line_num}: {exc}; fix the quoting of that row") from None
    if not numbered:
        raise DataError(f"{path} is empty: expected a header row naming the columns, then one row per example")
    (_, header), body = numbered[0], numbered[1:]
    if not body:
        raise DataError(f"{path} has a header row ({', '.join(header)}) but no examples: add one row per example")
    for number, fields in body:
        if len(fields) != len(header):
            hint = " (a stray quote merges rows in a CSV)" if suffix == ".csv" else ""
            raise DataError(f"{path} line {number} has {len(fields)} fields but the header has {len(header)}"
                            f"{hint}: fix that row")
    columns = {name: [fields[i] for _, fields in body] for i, name in enumerate(header)}
    return columns | {LINE: [number for number, _ in body]}
