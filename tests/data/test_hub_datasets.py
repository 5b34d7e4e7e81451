"""--task takes a datasets hub id (owner/name, or owner/name@revision) with the file-task columns; offline it
reads the local cache and fails in one line naming HF_DATASETS_OFFLINE/HF_HUB_OFFLINE, never hanging on the
network. The cache is a real one (tests/data/_hub_dataset_cache.py), read by the real `datasets.load_dataset`;
these tests read the real tweet corpus."""

import json
import time

import pytest
from click.testing import CliRunner

from hskstore.data.tasks import load_task, task_name_of, task_source
from hskstore.errors import DataError

from _hub_dataset_cache import NEWER, OLDER, REPO, hub_dataset_cache  # noqa: F401 (a fixture)


def _pairs():
    import datasets

    rows = {"premise": [f"p {i}" for i in range(12)], "hypothesis": [f"h {i}" for i in range(12)],
            "label": [i % 2 for i in range(12)]}
    split = datasets.Dataset.from_dict(rows)
    return datasets.DatasetDict({"train": split, "validation": split.select(range(4))})


def test_an_owner_slash_name_that_is_no_path_is_a_hub_dataset(tmp_path):
    assert task_source("someone/pairs").name == "hub"
    assert task_source("rte").name == "glue" and task_source("data/train.csv").name == "table"
    assert task_source("someone/pairs@v1.0").name == "hub" and task_source("someone/pairs@0a1b2c3").name == "hub"
    assert task_name_of("someone/pairs@v1.0") == task_name_of("someone/pairs") == "pairs"   # as the teacher records it


def test_a_hub_dataset_missing_from_the_offline_cache_fails_in_one_line_and_quickly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    started = time.perf_counter()
    with pytest.raises(DataError) as caught:
        load_task("nobody-here/no-such-dataset", text_columns=("premise", "hypothesis"))
    message = str(caught.value)
    assert "\n" not in message and "HF_DATASETS_OFFLINE" in message and "HF_HUB_OFFLINE" in message
    assert "nobody-here/no-such-dataset" in message
    assert time.perf_counter() - started < 60


def test_a_save_to_disk_directory_takes_two_text_columns(tmp_path):
    _pairs().save_to_disk(str(tmp_path / "saved"))
    data = load_task(str(tmp_path / "saved"), text_columns=("premise", "hypothesis"))
    assert data.spec.text_columns == ("premise", "hypothesis") and data.num_examples("train") == 12


@pytest.mark.integration
def test_a_cached_hub_dataset_loads_offline_through_datasets_own_cache_lookup(hub_dataset_cache):
    import datasets

    assert datasets.config.HF_HUB_OFFLINE
    data = load_task(REPO)  # text/label columns: the file-task defaults
    assert data.spec.name == "tweetset" and data.spec.label_names == ("negative", "neutral", "positive")
    newest = hub_dataset_cache[NEWER]
    assert data.num_examples("train") == newest["train"] and data.num_examples("validation") == newest["validation"]


@pytest.mark.integration
def test_a_revision_after_the_id_reads_that_commit_from_the_cache_not_the_newest(hub_dataset_cache):
    older = load_task(f"{REPO}@{OLDER}")
    assert older.num_examples("train") == hub_dataset_cache[OLDER]["train"] != hub_dataset_cache[NEWER]["train"]
    assert load_task(f"{REPO}@{OLDER[:8]}").num_examples("train") == hub_dataset_cache[OLDER]["train"]
    main = load_task(f"{REPO}@main")  # a branch: resolved through the hub cache's refs/main
    assert main.num_examples("train") == hub_dataset_cache[NEWER]["train"]


@pytest.mark.integration
def test_a_revision_missing_from_the_cache_fails_in_one_line_naming_the_offline_variables(hub_dataset_cache):
    with pytest.raises(DataError) as caught:
        load_task(f"{REPO}@{'c' * 40}")
    message = str(caught.value)
    assert "\n" not in message and "HF_HUB_OFFLINE" in message and "cccccccc" in message
    assert OLDER[:12] in message and NEWER[:12] in message  # what the cache does hold


@pytest.mark.integration
@pytest.mark.slow
def test_extract_takes_a_cached_hub_dataset_id_end_to_end(hub_dataset_cache, tiny_teacher, tmp_path):
    from hskstore.cli import cli

    store = tmp_path / "hub.zarr"
    result = CliRunner().invoke(cli, ["extract", "--teacher", tiny_teacher, "--task", f"{REPO}@{OLDER}",
                                      "--output", str(store), "--limit", "40", "--student-layers", "2",
                                      "--depth", "2", "--length", "5", "--width", "8", "--chunk-rows", "32",
                                      "--device", "cpu", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    info = json.loads(CliRunner().invoke(cli, ["info", str(store), "--json"]).output)
    assert info["examples"] == {"train": 40, "validation": 10}
