"""Students leave hskstore: transformers loads BERT-shaped students as they are, ONNX runs every kind.

Each check compares logits against hskstore's own loader on a padded batch of a shape not used when
the model was exported (ONNX axes are dynamic).
"""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hskstore.cli import cli
from hskstore.models.student import build_rosita, load_student, save_student


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _batch(vocab: int = 30522):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (3, 11), generator=generator)
    ids[:, 0], ids[1, 6:] = 101, 0
    mask = (ids != 0).long()
    types = torch.zeros_like(ids)
    types[0, 5:] = 1
    return ids, mask, types


def _ours(student_dir):
    ids, mask, types = _batch()
    with torch.no_grad():
        return load_student(student_dir)(ids, mask, types).logits.numpy()


def _transformers(directory):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
    ids, mask, types = _batch()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.numpy(), model


def _onnxruntime(path):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids, mask, types = _batch()
    return session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                    "token_type_ids": types.numpy()})[0]


@pytest.fixture(scope="module")
def bert_student(tiny_store, tmp_path_factory):
    """A BERT student built for the tiny store: tokenizer, task.json (label names) and all."""
    directory = tmp_path_factory.mktemp("export") / "bert"
    result = _run("student", "bert", "--store", tiny_store, "--output", directory, "--layers", 2, "--hidden", 16,
                  "--heads", 2, "--ffn", 32)
    assert result.exit_code == 0, result.output
    return directory


def test_a_bert_student_directory_loads_with_plain_transformers(bert_student):
    theirs, model = _transformers(bert_student)
    np.testing.assert_allclose(theirs, _ours(bert_student), atol=1e-5)
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}  # the store's classes


def test_a_student_saved_before_the_transformers_layout_still_loads(bert_student, tmp_path):
    from safetensors.torch import load_file, save_file

    old = tmp_path / "old"
    old.mkdir()
    (old / "student.json").write_text((bert_student / "student.json").read_text())
    state = load_file(str(bert_student / "model.safetensors"))
    save_file({f"model.{k}": v for k, v in state.items()}, str(old / "model.safetensors"))  # the old key prefix
    np.testing.assert_allclose(_ours(old), _ours(bert_student), atol=0)


def test_a_distilled_student_exports_to_transformers_and_onnx_with_the_same_logits(tiny_store, bert_student, tmp_path):
    trained = _run("train", tiny_store, "--student", bert_student, "--output", tmp_path / "run", "--max-steps", 2,
                   "--hsk-epochs", 1, "--pred-epochs", 1, "--device", "cpu", "--quiet")
    assert trained.exit_code == 0, trained.output
    student = tmp_path / "run" / "student"
    ours = _ours(student)
    assert _run("export", student, tmp_path / "hf").exit_code == 0
    theirs, model = _transformers(tmp_path / "hf")
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(tmp_path / "hf"))("hello")["input_ids"][0] == 101
    exported = _run("export", student, tmp_path / "onnx", "--format", "onnx", "--json")
    assert exported.exit_code == 0, exported.output
    summary = json.loads(exported.output)
    assert "model.onnx" in summary["files"] and summary["label_names"] == ["negative", "neutral", "positive"]
    np.testing.assert_allclose(_onnxruntime(tmp_path / "onnx" / "model.onnx"), ours, atol=1e-4)


def test_a_full_width_rosita_student_becomes_a_bert(tiny_teacher, tmp_path):
    student = build_rosita(tiny_teacher, num_layers=2, num_heads=None, intermediate_size=None, embedding_rank=None,
                           progress=False)
    save_student(student, tmp_path / "rosita")
    result = _run("export", tmp_path / "rosita", tmp_path / "hf")
    assert result.exit_code == 0, result.output
    theirs, model = _transformers(tmp_path / "hf")
    assert model.config.num_hidden_layers == 2
    np.testing.assert_allclose(theirs, _ours(tmp_path / "rosita"), atol=1e-5)


def _rosita(**shape):
    """A randomly initialised ROSITA student of the given shape (2 layers, FFN 40, 3 labels)."""
    from hskstore.models.student import RositaConfig, RositaStudent

    return RositaStudent(RositaConfig(vocab_size=30522, num_layers=2, intermediate_size=40, num_labels=3,
                                      **shape)).eval()


@pytest.mark.parametrize("heads, rank", [(2, None), (None, 8), (3, 8)])
def test_a_pruned_or_factorised_rosita_student_loads_as_a_plain_bert_with_equal_logits(tmp_path, heads, rank):
    """Pruned heads come back as zero heads and a factorised embedding is multiplied out: same logits."""
    torch.manual_seed(0)
    student = _rosita(hidden_size=32, num_heads=heads or 4, head_size=8, embedding_rank=rank)
    save_student(student, tmp_path / "rosita")
    result = _run("export", tmp_path / "rosita", tmp_path / "hf")
    assert result.exit_code == 0, result.output
    theirs, model = _transformers(tmp_path / "hf")
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.model_type == "bert"
    assert model.config.num_attention_heads == 4 and model.config.intermediate_size == 40
    np.testing.assert_allclose(theirs, _ours(tmp_path / "rosita"), atol=1e-5)


def test_a_rosita_student_whose_width_is_not_whole_heads_goes_to_onnx_not_transformers(tmp_path):
    torch.manual_seed(0)
    student = _rosita(hidden_size=30, num_heads=2, head_size=8)
    save_student(student, tmp_path / "rosita")
    refused = _run("export", tmp_path / "rosita", tmp_path / "hf")
    assert refused.exit_code == 2 and refused.output.count("\n") == 1
    assert "not a whole number of its 8-wide heads" in refused.output and "--format onnx" in refused.output
    assert not (tmp_path / "hf").exists()
    assert _run("export", tmp_path / "rosita", tmp_path / "onnx", "--format", "onnx").exit_code == 0
    np.testing.assert_allclose(_onnxruntime(tmp_path / "onnx" / "model.onnx"), _ours(tmp_path / "rosita"), atol=1e-4)


def test_export_refuses_a_non_empty_output_without_overwrite(bert_student, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep")
    refused = _run("export", bert_student, tmp_path / "out")
    assert refused.exit_code == 2 and "pass --overwrite" in refused.output
    stranger = _run("export", bert_student, tmp_path / "out", "--overwrite")
    assert stranger.exit_code == 2 and "will not delete it" in stranger.output
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep"
    assert _run("export", bert_student, tmp_path / "hf").exit_code == 0
    assert _run("export", bert_student, tmp_path / "hf", "--overwrite").exit_code == 0


def test_an_onnx_export_carries_config_tokenizer_and_card_in_the_layout_optimum_reads(bert_student, tmp_path):
    """Optimum's ORTModelForSequenceClassification.from_pretrained(DIR) reads model.onnx + config.json + tokenizer."""
    from transformers import AutoConfig, AutoTokenizer

    assert _run("export", bert_student, tmp_path / "onnx", "--format", "onnx").exit_code == 0
    config = AutoConfig.from_pretrained(str(tmp_path / "onnx"))
    assert config.model_type == "bert" and config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert AutoTokenizer.from_pretrained(str(tmp_path / "onnx"))("a tweet")["input_ids"][0] == 101
    card = (tmp_path / "onnx" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "tweets" in card and "onnxruntime" in card


def test_an_export_of_a_distilled_student_has_a_card_with_its_dev_metric_store_and_command(tiny_store, bert_student,
                                                                                          tmp_path, monkeypatch):
    trained = _run("train", tiny_store, "--student", bert_student, "--output", tmp_path / "run", "--max-steps", 1,
                   "--device", "cpu", "--quiet")
    assert trained.exit_code == 0, trained.output
    monkeypatch.setattr("sys.argv", ["hskstore", "export", str(tmp_path / "run" / "student"), str(tmp_path / "hf")])
    assert _run("export", tmp_path / "run" / "student", tmp_path / "hf").exit_code == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "## Metrics (validation split)" in card and "| accuracy |" in card
    assert "(N^D, N^L, N^W) = (2, 5, 0.25)" in card and "A^HSK" in card
    assert f"hskstore export {tmp_path / 'run' / 'student'}" in card
