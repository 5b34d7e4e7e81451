"""The task travels: finetune records it, extract and evaluate default to it, a different --task is refused.

The whole GLUE-from-files path on the distribution's RTE and CoLA formats: finetune, extract and evaluate
with relative paths, then evaluate again from another directory.
"""

import json

import pytest
from click.testing import CliRunner

from hskstore.cli import cli
from test_glue_files import write_glue_folder


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("task, metric", [("rte", "accuracy"), ("cola", "matthews")])
def test_glue_files_through_finetune_extract_train_and_evaluate(tiny_bert_dir, tmp_path, monkeypatch, task, metric):
    work = tmp_path / "work"
    folder = write_glue_folder(work / "glue" / task.upper(), task, train_rows=24, dev_rows=8)
    monkeypatch.chdir(work)
    tuned = _run("finetune", "--model", tiny_bert_dir, "--task", task, "--data-dir", f"glue/{task.upper()}",
                 "--output", "teacher", "--epochs", 1, "--max-length", 16, "--device", "cpu", "--quiet")
    assert tuned.exit_code == 0, tuned.output
    info = json.loads((work / "teacher" / "hskstore_teacher.json").read_text())
    assert info["task"]["name"] == task and info["task"]["metric"] == metric and len(info["task"]["label_names"]) == 2
    assert info["task_ref"] == {"task": task, "options": info["task_ref"]["options"]}
    assert info["task_ref"]["options"]["data_dir"] == str(folder)  # absolute: later stages run from anywhere

    extracted = _run("extract", "--teacher", "teacher", "--output", "s.zarr", "--depth", 1, "--length", 4,
                     "--width", 8, "--student-layers", 2, "--chunk-rows", 8, "--device", "cpu", "--json", "--quiet")
    assert extracted.exit_code == 0, extracted.output
    summary = json.loads(extracted.output)
    assert summary["info"]["task"] == task and summary["info"]["examples"] == {"train": 24, "validation": 8}

    wrong = _run("extract", "--teacher", "teacher", "--output", "t.zarr", "--task", "tweets", "--device", "cpu")
    assert wrong.exit_code == 2 and wrong.output.count("\n") == 1
    assert f"--task tweets is task 'tweets' but teacher teacher was made for '{task}'" in wrong.output
    assert "--allow-task-mismatch" in wrong.output

    assert _run("student", "bert", "--store", "s.zarr", "--output", "init", "--layers", 2, "--hidden", 16,
                "--heads", 2, "--ffn", 32).exit_code == 0
    trained = _run("train", "s.zarr", "--student", "init", "--output", "run", "--max-steps", 2, "--hsk-epochs", 1,
                   "--pred-epochs", 1, "--device", "cpu", "--quiet", "--json")
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.output)["task"] == task

    monkeypatch.chdir(tmp_path)  # elsewhere: every recorded path must be absolute
    evaluated = _run("evaluate", work / "run" / "student", "--device", "cpu", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    result = json.loads(evaluated.output)
    assert result["task"] == task and result["examples"] == 8 and metric in result
    untrained = _run("evaluate", work / "init", "--device", "cpu", "--json")  # the store's task, recorded by `student`
    assert untrained.exit_code == 0 and json.loads(untrained.output)["task"] == task
    mismatch = _run("evaluate", work / "run" / "student", "--task", "tweets", "--device", "cpu")
    assert mismatch.exit_code == 2 and "was made for" in mismatch.output


def test_a_teacher_without_a_recorded_task_needs_task(tiny_teacher, tmp_path):
    result = _run("extract", "--teacher", tiny_teacher, "--output", tmp_path / "s.zarr", "--device", "cpu")
    assert result.exit_code == 2 and "records no task: pass --task" in result.output


def test_a_teacher_from_before_task_ref_still_names_its_task(tmp_path):
    from hskstore.stages.extract import teacher_task

    (tmp_path / "hskstore_teacher.json").write_text(json.dumps({
        "task": {"name": "tweets", "label_names": ["negative", "neutral", "positive"]},
        "config": {"task": "tweets", "text_columns": None, "label_column": None}}))
    recorded = teacher_task(str(tmp_path))
    assert recorded["task"] == "tweets" and recorded["name"] == "tweets"
