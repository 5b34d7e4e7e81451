"""Fine-tuning turns a BERT checkpoint into a teacher directory that records its task and metrics."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import csv
import json

import pytest
import torch

from hskstore.data.tasks import TWEETS, TaskSpec, load_task, tokenize
from hskstore.errors import ConfigError, ModelError
from hskstore.stages.finetune import TEACHER_INFO_FILE, FinetuneConfig, evaluate, finetune
from hskstore.models.teacher import load_teacher, load_tokenizer


def _config(model, output, **overrides):
    options = dict(model=model, task="tweets", output=str(output), limit=200, epochs=1, max_length=32,
                   batch_size=16, lr=1e-3, device="cpu")
    return FinetuneConfig(**{**options, **overrides})


# --- configuration ------------------------------------------------------------------------------------

def test_config_lists_every_problem_at_once():
    with pytest.raises(ConfigError) as info:
        FinetuneConfig(model="m", task="tweets", output="o", epochs=0, lr=-1.0, keep="first")
    problems = info.value.problems
    assert any("epochs" in p for p in problems) and any("lr" in p for p in problems)
    assert any("keep must be one of ['best', 'last']" in p for p in problems)


def test_config_round_trips_through_a_dict_and_lists_become_tuples():
    config = FinetuneConfig(model="m", task="d.csv", output="o", text_columns=["a", "b"])
    assert config.text_columns == ("a", "b")
    assert FinetuneConfig.from_dict(config.to_dict()) == config


def test_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown finetune keys"):
        FinetuneConfig.from_dict({"model": "m", "task": "tweets", "output": "o", "learning_rate": 1e-4})


def test_a_non_bert_model_is_refused_before_any_work(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelError, match="'gpt2' model"):
        finetune(_config(str(tmp_path), tmp_path / "out"), progress=False)


def test_a_directory_without_a_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        finetune(_config(str(tmp_path), tmp_path / "out"), progress=False)


# --- training -----------------------------------------------------------------------------------------

@pytest.mark.integration
def test_finetune_writes_a_loadable_teacher_with_labels_and_metrics(tiny_bert_dir, tmp_path):
    output = tmp_path / "teacher"
    metrics = finetune(_config(tiny_bert_dir, output, limit=64), progress=False)
    assert {"accuracy", "train_loss", "epoch", "train_seconds"} <= set(metrics) and 0 <= metrics["accuracy"] <= 1
    for name in ("config.json", "model.safetensors", "tokenizer.json", TEACHER_INFO_FILE):
        assert (output / name).is_file(), name
    info = json.loads((output / TEACHER_INFO_FILE).read_text())
    assert TaskSpec.from_dict(info["task"]) == TWEETS
    assert info["max_length"] == 32 and info["epochs"] == 1 and info["seed"] == 0
    assert info["base_model"] == tiny_bert_dir and info["metrics"]["accuracy"] == metrics["accuracy"]
    model, identity = load_teacher(output)
    assert identity.num_labels == 3 and identity.num_layers == 2
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}


@pytest.mark.integration
def test_finetune_learns_a_keyword_task_and_lowers_the_training_loss(tiny_bert_dir, tmp_path):
    # The label is whether "great" or "awful" appears among real tweet words: easy for any working loop.
    words = " ".join(load_task("tweets", limit=50).split("train")["text"]).split()
    path = tmp_path / "keyword.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(96):
            filler = words[i * 5:i * 5 + 5]
            writer.writerow([" ".join(filler[:2] + [["awful", "great"][i % 2]] + filler[2:]), ["bad", "good"][i % 2]])
    output = tmp_path / "out"
    metrics = finetune(_config(tiny_bert_dir, output, task=str(path), validation_file=str(path), limit=None,
                               epochs=6, batch_size=8, lr=3e-3, warmup_fraction=0.0), progress=False)
    assert metrics["accuracy"] >= 0.9
    history = json.loads((output / TEACHER_INFO_FILE).read_text())["history"]
    assert history[-1]["train_loss"] < 0.5 < history[0]["train_loss"]


@pytest.mark.integration
def test_finetune_is_deterministic_on_cpu_given_the_seed(tiny_bert_dir, tmp_path):
    first = finetune(_config(tiny_bert_dir, tmp_path / "a", limit=64), progress=False)
    second = finetune(_config(tiny_bert_dir, tmp_path / "b", limit=64), progress=False)
    assert first["accuracy"] == second["accuracy"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


@pytest.mark.integration
def test_keep_best_saves_the_epoch_with_the_best_validation_metric(tiny_bert_dir, tmp_path):
    output = tmp_path / "best"
    metrics = finetune(_config(tiny_bert_dir, output, limit=64, epochs=3), progress=False)
    history = json.loads((output / TEACHER_INFO_FILE).read_text())["history"]
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert metrics["accuracy"] == max(m["accuracy"] for m in history)
    # The saved weights are that epoch's: re-evaluating them gives the same score.
    data = load_task("tweets", limit=64)
    tokens = tokenize(load_tokenizer(output), data.split("validation"), data.spec, max_length=32)
    model, _ = load_teacher(output)
    assert evaluate(model, tokens, data.spec, 64, torch.device("cpu"))["accuracy"] == metrics["accuracy"]


# --- checkpoints and resume ---------------------------------------------------------------------------

def _interrupt_after_first_checkpoint(monkeypatch):
    import hskstore.stages.finetune as finetune_module

    original = finetune_module.save_checkpoint

    def save_then_stop(*args, **kwargs):
        original(*args, **kwargs)
        monkeypatch.setattr(finetune_module, "save_checkpoint", original)
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune_module, "save_checkpoint", save_then_stop)


def test_an_interrupted_finetune_resumes_to_the_same_teacher_byte_for_byte(tiny_bert_dir, tmp_path, monkeypatch):
    finetune(_config(tiny_bert_dir, tmp_path / "straight", limit=64, epochs=2), progress=False)
    _interrupt_after_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        finetune(_config(tiny_bert_dir, tmp_path / "run", limit=64, epochs=2), progress=False)
    assert json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["epoch"] == 1
    finetune(_config(tiny_bert_dir, tmp_path / "run", limit=64, epochs=2), progress=False)
    weights = "model.safetensors"
    assert (tmp_path / "run" / weights).read_bytes() == (tmp_path / "straight" / weights).read_bytes()
    history = json.loads((tmp_path / "run" / TEACHER_INFO_FILE).read_text())["history"]
    assert [m["epoch"] for m in history] == [1, 2] and not (tmp_path / "run" / "checkpoint").exists()


def test_a_finetune_checkpoint_of_other_options_is_refused_naming_them(tiny_bert_dir, tmp_path, monkeypatch):
    _interrupt_after_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        finetune(_config(tiny_bert_dir, tmp_path, limit=64, epochs=2), progress=False)
    with pytest.raises(ConfigError, match="different fine-tuning run .*lr differ"):
        finetune(_config(tiny_bert_dir, tmp_path, limit=64, epochs=2, lr=5e-4), progress=False)


def test_a_finetune_killed_between_the_checkpoint_renames_resumes_from_the_old_one(tiny_bert_dir, tmp_path,
                                                                                  monkeypatch):
    _interrupt_after_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        finetune(_config(tiny_bert_dir, tmp_path, limit=64, epochs=2), progress=False)
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")  # as if killed right after the first rename
    finetune(_config(tiny_bert_dir, tmp_path, limit=64, epochs=2), progress=False)
    history = json.loads((tmp_path / TEACHER_INFO_FILE).read_text())["history"]
    assert [m["epoch"] for m in history] == [1, 2]  # epoch 1 was not redone


def test_finetune_records_truncation_warns_and_writes_a_model_card(tiny_bert_dir, tmp_path, capsys):
    output = tmp_path / "teacher"
    metrics = finetune(_config(tiny_bert_dir, output, limit=64, max_length=8), progress=False)
    info = json.loads((output / TEACHER_INFO_FILE).read_text())
    counts, examples = info["truncated"]["counts"], info["truncated"]["examples"]
    assert examples == {"train": 64, "validation": 16} and counts["train"] > 1  # tweets are longer than 6 words
    assert "--max-length 8" in capsys.readouterr().err
    card = (output / "README.md").read_text()
    assert "tags: [hskstore, knowledge-distillation, teacher]" in card and "**Task:** tweets" in card
    assert "## Metrics (validation split)" in card and f"{metrics['accuracy']:.4f}" in card
    assert tiny_bert_dir in card  # the base model
