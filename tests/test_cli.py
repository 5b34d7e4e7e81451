"""The `hskstore` command: thin, one-line errors, the same results as the library."""

import json

import pytest
from click.testing import CliRunner

from hskstore.cli import cli


@pytest.fixture()
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


def test_info_prints_components_and_json(run, tiny_store):
    text = run("info", tiny_store)
    assert text.exit_code == 0
    for word in ("values", "masks", "positions", "tokens", "logits", "A^HSK", "full HSK"):
        assert word in text.output
    data = json.loads(run("info", tiny_store, "--json").output)
    assert data["triple"] == [2, 5, 8] and data["examples"] == {"train": 120, "validation": 30}
    assert data["bytes"]["values"] > 0 and data["full_hsk_bytes"] > data["bytes"]["hsk"]


def test_extract_dry_run_resolves_without_touching_disk(run, tiny_teacher, tmp_path):
    result = run("extract", "--teacher", tiny_teacher, "--output", tmp_path / "s.zarr", "--student-layers", 2,
                 "--depth", 2, "--dry-run")
    assert result.exit_code == 0
    assert json.loads(result.output)["resolved"]["teacher_layer_ids"] == [2, 3]
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--length", "99"], "larger than the max sequence length 32"),
        (["--width", "33"], "larger than the teacher's hidden size d=32"),
        (["--depth", "9"], "depth N^D must be in 1..L'+1"),
        (["--task", "nosuchtask"], "unknown task 'nosuchtask'"),
    ],
)
def test_extract_errors_are_one_line_with_exit_status_2(run, tiny_teacher, tmp_path, args, message):
    result = run("extract", "--teacher", tiny_teacher, "--output", tmp_path / "s.zarr", "--limit", 10, *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1


def test_info_on_a_missing_store_says_how_to_make_one(run, tmp_path):
    result = run("info", tmp_path / "nothing.zarr")
    assert result.exit_code == 2 and "hskstore extract" in result.output


def test_student_train_evaluate_predict_round_trip(run, tiny_store, tiny_teacher, tmp_path):
    built = run("student", "bert", "--store", tiny_store, "--output", tmp_path / "student", "--layers", 2,
                "--hidden", 16, "--heads", 2, "--ffn", 32)
    assert built.exit_code == 0, built.output
    trained = run("train", tiny_store, "--student", tmp_path / "student", "--output", tmp_path / "run",
                  "--max-steps", 2, "--hsk-epochs", 1, "--pred-epochs", 1, "--device", "cpu")
    assert trained.exit_code == 0, trained.output
    assert "offline run" in trained.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [h["stage"] for h in metrics["history"]] == ["hsk", "pred"]
    evaluated = run("evaluate", tmp_path / "run" / "student", "--json", "--device", "cpu", "--limit", "120")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["examples"] == 30  # --limit caps validation at a quarter, as extract does
    predicted = run("predict", tmp_path / "run" / "student", "I love it", "terrible idea", "--device", "cpu")
    rows = [json.loads(line) for line in predicted.output.splitlines()]
    assert [r["text"] for r in rows] == ["I love it", "terrible idea"]
    assert all(r["label"] in ("negative", "neutral", "positive") for r in rows)


def test_a_rosita_student_needs_the_stores_own_teacher(run, tiny_store, tmp_path):
    from conftest import save_tiny_teacher

    other = save_tiny_teacher(tmp_path / "two-labels", num_labels=2)
    result = run("student", "rosita", "--teacher", other, "--store", tiny_store, "--output", tmp_path / "r")
    assert result.exit_code == 2 and "extracted from another teacher" in result.output


def test_rosita_student_from_the_cli_is_cut_from_the_teacher(run, tiny_store, tiny_teacher, tmp_path):
    result = run("student", "rosita", "--teacher", tiny_teacher, "--store", tiny_store, "--output", tmp_path / "r",
                 "--layers", 2, "--heads", 2, "--ffn", 16, "--rank", 8, "--importance-examples", 32)
    assert result.exit_code == 0, result.output
    assert "layers=2" in result.output and "heads=2" in result.output and "rank=8" in result.output


@pytest.mark.parametrize("width, expected", [("0.25", 8), ("1", 1), ("12", 12), ("1.0", 32), ("all", 32)])
def test_width_is_a_count_or_a_fraction_with_a_decimal_point(run, tiny_teacher, tmp_path, width, expected):
    result = run("extract", "--teacher", tiny_teacher, "--output", tmp_path / "s.zarr", "--student-layers", 2,
                 "--width", width, "--dry-run")
    assert json.loads(result.output)["resolved"]["width"] == expected


def test_non_numbers_and_unknown_devices_are_usage_errors(run, tiny_teacher, tmp_path):
    bad_depth = run("extract", "--teacher", tiny_teacher, "--output", tmp_path / "s.zarr", "--depth", "two")
    assert bad_depth.exit_code == 2 and "whole number" in bad_depth.output and "Traceback" not in bad_depth.output
    bad_device = run("extract", "--teacher", tiny_teacher, "--output", tmp_path / "s.zarr", "--device", "tpu")
    assert bad_device.exit_code == 2 and "unknown device 'tpu'" in bad_device.output


def test_overwrite_refuses_to_delete_a_directory_that_is_not_a_store(run, tiny_teacher, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    result = run("extract", "--teacher", tiny_teacher, "--output", tmp_path / "precious", "--overwrite")
    assert result.exit_code == 2 and "not an hskstore store" in result.output
    assert (tmp_path / "precious" / "notes.txt").is_file()
