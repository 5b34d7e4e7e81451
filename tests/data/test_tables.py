"""Reading .csv/.tsv/.jsonl task files: UTF-8 by default, every undecodable or empty file a one-line error."""

import pytest

from hskstore.data.tables import read_table, read_tsv_rows
from hskstore.errors import DataError


def test_a_utf8_file_with_a_byte_order_mark_reads_its_first_column_by_name(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufefftext,label\nhéllo,1\nbye,0\n".encode("utf-8"))
    assert read_table(path)["text"] == ["héllo", "bye"]


@pytest.mark.parametrize("suffix, body, line", [(".csv", b"text,label\nok,0\nh\xe9llo,1\n", 3),
                                                (".tsv", b"text\tlabel\nok\t0\nh\xe9llo\t1\n", 3),
                                                (".jsonl", b'{"text": "ok"}\n{"text": "h\xe9llo"}\n', 2)])
def test_a_byte_that_is_not_utf8_names_the_file_line_and_encoding_option(tmp_path, suffix, body, line):
    path = tmp_path / f"latin{suffix}"
    path.write_bytes(body)
    with pytest.raises(DataError, match=rf"latin{suffix} line {line} is not valid UTF-8 .*--encoding"):
        read_table(path)


def test_a_named_encoding_reads_what_utf8_cannot(tmp_path):
    path = tmp_path / "latin.tsv"
    path.write_bytes(b"text\tlabel\nh\xe9llo\t1\n")
    assert read_table(path, encoding="latin-1")["text"] == ["héllo"]
    assert read_tsv_rows(path, encoding="latin-1")[1] == (2, ["héllo", "1"])


def test_an_unknown_encoding_is_a_one_line_error(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("text,label\na,0\n")
    with pytest.raises(DataError, match="unknown --encoding 'klingon'"):
        read_table(path, encoding="klingon")


@pytest.mark.parametrize("name, text, message", [
    ("header.csv", "text,label\n", r"has a header row \(text, label\) but no examples"),
    ("header.tsv", "text\tlabel\n", r"has a header row \(text, label\) but no examples"),
    ("blank.jsonl", "\n\n", "holds no JSON objects"),
    ("empty.csv", "", "is empty"),
])
def test_a_file_without_examples_is_an_error_not_a_task_of_no_rows(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_table(path)
