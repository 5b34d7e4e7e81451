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


@pytest.fixture
def pair_student(tiny_teacher, tmp_path):
    """A 2-label student made for an RTE-like pair task (task.json names sentence1 and sentence2)."""
    from hskstore.models.student import build_bert_student, save_student
    from hskstore.models.teacher import load_tokenizer

    student = tmp_path / "rte-student"
    save_student(build_bert_student(num_labels=2, vocab_size=30522, num_layers=1, hidden_size=16, intermediate_size=32,
                                    num_heads=2, seed=0), student)
    load_tokenizer(tiny_teacher).save_pretrained(str(student))
    (student / "task.json").write_text(json.dumps({"task": {
        "name": "rte", "text_columns": ["sentence1", "sentence2"], "label_column": "label",
        "label_names": ["entailment", "not_entailment"], "metric": "accuracy"}, "max_length": 32}))
    return student


def test_a_pair_task_refuses_a_single_text_and_labels_pairs(pair_student):
    with pytest.raises(DataError, match=r"rte labels sentence pairs \(sentence1 \+ sentence2\).*--pair"):
        predict_texts(pair_student, ["A man sleeps."], device="cpu")
    rows = predict_texts(pair_student, ["A man sleeps."], ["Nobody sleeps."], device="cpu")
    assert rows[0]["text"] == "A man sleeps." and rows[0]["pair"] == "Nobody sleeps."
    assert rows[0]["label"] in ("entailment", "not_entailment")


def test_predict_file_reads_the_tasks_own_columns(pair_student, tmp_path):
    from hskstore.stages.evaluate import predict_file

    inputs = tmp_path / "inputs.tsv"
    inputs.write_text("index\tsentence1\tsentence2\n0\tA man sleeps.\tNobody sleeps.\n1\tIt rains.\tIt is wet.\n")
    rows = predict_file(pair_student, inputs, device="cpu")
    assert [(r["text"], r["pair"]) for r in rows] == [("A man sleeps.", "Nobody sleeps."), ("It rains.", "It is wet.")]
    (tmp_path / "one.tsv").write_text("sentence1\nA man sleeps.\n")
    with pytest.raises(DataError, match=r"has no column \['sentence2'\]"):
        predict_file(pair_student, tmp_path / "one.tsv", device="cpu")


def test_predict_on_the_command_line_takes_pairs_and_task_column_files(pair_student, tmp_path):
    from click.testing import CliRunner

    from hskstore.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["predict", str(pair_student), "--pair", "A man sleeps.", "Nobody sleeps.",
                                 "--pair", "It rains.", "It is wet.", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [(r["text"], r["pair"]) for r in rows] == [("A man sleeps.", "Nobody sleeps."), ("It rains.", "It is wet.")]
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(json.dumps({"sentence1": "Ça pleut.", "sentence2": "Il fait humide."}) + "\n")
    result = runner.invoke(cli, ["predict", str(pair_student), "--file", str(inputs), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["pair"] == "Il fait humide."
    single = runner.invoke(cli, ["predict", str(pair_student), "A man sleeps.", "--device", "cpu"])
    assert single.exit_code == 2 and "--pair" in single.output


def test_predict_reads_a_latin_1_file_when_told_its_encoding(pair_student, tmp_path):
    from click.testing import CliRunner

    from hskstore.cli import cli

    inputs = tmp_path / "inputs.tsv"
    inputs.write_bytes("sentence1\tsentence2\nÇa pleut.\tIl fait humide.\n".encode("latin-1"))
    result = CliRunner().invoke(cli, ["predict", str(pair_student), "--file", str(inputs), "--encoding", "latin-1",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["text"] == "Ça pleut."


def test_evaluate_scores_a_teacher_directory_on_its_recorded_task_and_split(tiny_teacher, tmp_path):
    """The teacher's number on the same footing as its students': its recorded task, seed and max length."""
    import shutil

    from click.testing import CliRunner

    from hskstore.cli import cli

    rows = [(f"{word} {i}", label) for i in range(20) for word, label in (("good day", "b"), ("bad day", "a"),
                                                                          ("odd day", "c"))]
    data = tmp_path / "days.csv"
    data.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, teacher)
    (teacher / "hskstore_teacher.json").write_text(json.dumps({
        "task": {"name": "days", "label_names": ["a", "b", "c"]}, "max_length": 16, "data_seed": 3,
        "task_ref": {"task": str(data), "options": {"validation_fraction": 0.25}}}))
    result = CliRunner().invoke(cli, ["evaluate", str(teacher), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.output)
    assert scored["task"] == "days" and scored["examples"] == 15 and 0 <= scored["accuracy"] <= 1
    other = CliRunner().invoke(cli, ["evaluate", str(teacher), "--task", "tweets", "--device", "cpu"])
    assert other.exit_code == 2 and "teacher" in other.output and "days" in other.output


def test_a_latin_1_file_task_loads_with_encoding_on_the_command_line(tiny_teacher, tmp_path):
    import shutil

    from click.testing import CliRunner

    from hskstore.cli import cli

    rows = [(f"{word} {i}", label) for i in range(20) for word, label in (("café crème", "b"), ("thé noir", "a"),
                                                                          ("eau plate", "c"))]
    data = tmp_path / "drinks.csv"
    data.write_bytes(("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows)).encode("latin-1"))
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, teacher)
    (teacher / "hskstore_teacher.json").write_text(json.dumps({"max_length": 16}))
    runner = CliRunner()
    refused = runner.invoke(cli, ["evaluate", str(teacher), "--task", str(data), "--device", "cpu"])
    assert refused.exit_code == 2 and "--encoding" in refused.output
    result = runner.invoke(cli, ["evaluate", str(teacher), "--task", str(data), "--encoding", "latin-1", "--json",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["task"] == "drinks"
