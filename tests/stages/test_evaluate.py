"""`evaluate` scores the whole dev split; `predict` refuses inputs a model would label anyway."""

import json

import pytest

from hskstore.errors import DataError
from hskstore.stages.evaluate import predict_texts


@pytest.mark.parametrize("texts, pairs, message", [
    ([], None, "nothing to predict"),
    ([""], None, "input 1's text is empty"),
    (["fine", "   "], None, "input 2's text is empty"),
    (["a premise"], [""], "input 1's second text is empty"),
    (["one", "two"], ["only one"], "2 texts but 1 second texts"),
])
def test_empty_or_unpaired_inputs_are_refused_before_the_student_loads(tmp_path, texts, pairs, message):
    with pytest.raises(DataError, match=message):
        predict_texts(tmp_path / "no-student-needed", texts, pairs)


def test_predict_on_the_command_line_refuses_an_empty_text(tmp_path):
    from click.testing import CliRunner

    from hskstore.cli import cli

    result = CliRunner().invoke(cli, ["predict", str(tmp_path), ""])
    assert result.exit_code == 2 and result.output.strip().startswith("error: input 1's text is empty")


def test_evaluate_scores_the_whole_validation_split_not_the_stores_limit(tiny_teacher, tmp_path):
    """A student distilled from a 16-row store is scored on all 25 held-out rows, and says so."""
    from hskstore.models.student import build_bert_student, save_student
    from hskstore.models.teacher import load_tokenizer
    from hskstore.stages.evaluate import evaluate_student

    rows = [f"{word} {i}" for i in range(50) for word in ("good day", "bad day")][:100]
    data = tmp_path / "days.csv"
    data.write_text("text,label\n" + "".join(f"{t},{'pos' if t.startswith('good') else 'neg'}\n" for t in rows))
    student = tmp_path / "student"
    save_student(build_bert_student(num_labels=2, vocab_size=30522, num_layers=1, hidden_size=16, intermediate_size=32,
                                    num_heads=2, seed=0), student)
    load_tokenizer(tiny_teacher).save_pretrained(str(student))
    options = {"text_columns": ["text"], "label_column": "label", "validation_fraction": 0.25}
    (student / "task.json").write_text(json.dumps({
        "task": {"name": "days", "label_names": ["neg", "pos"], "metric": "accuracy"},
        "task_ref": {"task": str(data), "options": options}, "max_length": 16, "data_seed": 0, "limit": 16}))
    whole = evaluate_student(student, device="cpu")
    assert whole["examples"] == 25 and whole["split"] == "validation" and str(data) in whole["source"]
    assert evaluate_student(student, device="cpu", limit=16)["examples"] == 4  # a quarter of --limit, when asked
