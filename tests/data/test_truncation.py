"""Inputs longer than --max-length are counted, recorded and warned about, never truncated silently."""

from hskstore.configs.finetune import FinetuneConfig
from hskstore.data.tasks import TaskSpec, count_truncated, tokenize, truncation_warning
from hskstore.models.teacher import load_tokenizer

PAIR = TaskSpec("pairs", ("a", "b"), "label", ("no", "yes"), "accuracy", source="file")


def test_glue_and_file_tasks_default_to_128_tokens_and_tweets_keep_64():
    assert FinetuneConfig(model="m", task="rte", output="o").max_length == 128
    assert FinetuneConfig(model="m", task="data.csv", output="o").max_length == 128
    assert FinetuneConfig(model="m", task="tweets", output="o").max_length == 64
    assert FinetuneConfig(model="m", task="rte", output="o", max_length=64).max_length == 64


def test_only_examples_longer_than_max_length_count_as_truncated(tiny_teacher):
    tokenizer = load_tokenizer(tiny_teacher)
    split = {"a": ["short", "word " * 30, "word " * 5], "b": ["x", "y", "word " * 3], "label": [0, 1, 0]}
    tokens = tokenize(tokenizer, split, PAIR, 12)
    assert count_truncated(tokenizer, split, PAIR, 12, tokens["lengths"]) == 1
    assert count_truncated(tokenizer, split, PAIR, 12) == 1  # without lengths: every row tokenised again
    exact = {"a": ["word " * 7], "b": ["word " * 2], "label": [0]}  # [CLS] 7 [SEP] 2 [SEP] fills 12 exactly
    assert count_truncated(tokenizer, exact, PAIR, 12, tokenize(tokenizer, exact, PAIR, 12)["lengths"]) == 0


def test_a_warning_names_the_count_and_max_length_above_one_percent_only():
    assert truncation_warning({"train": 1}, {"train": 100}, 64) is None
    line = truncation_warning({"train": 37, "validation": 0}, {"train": 100, "validation": 10}, 64)
    assert "37 of 100 train examples (37.0%)" in line and "--max-length 64" in line and "\n" not in line


def test_extract_records_truncation_and_info_reports_it(tiny_store):
    from hskstore.store import open_store
    from hskstore.store.report import format_info, store_info

    with open_store(tiny_store) as opened:
        truncated = opened.attrs["truncated"]
    assert set(truncated) == {"train", "validation"} and all(isinstance(n, int) for n in truncated.values())
    assert "truncated   train" in format_info(store_info(tiny_store))


def test_info_on_a_store_without_the_count_says_it_was_not_recorded(tiny_store):
    from hskstore.store.report import format_info, store_info

    info = store_info(tiny_store)
    info["truncated"] = None
    assert "not recorded" in format_info(info)
