"""--task takes a datasets hub id (owner/name) with the file-task columns; offline it reads the local cache
and fails in one line naming HF_DATASETS_OFFLINE/HF_HUB_OFFLINE, never hanging on the network."""

import time

import pytest

from hskstore.data.tasks import load_task, task_source
from hskstore.errors import DataError


def _pairs():
    import datasets

    rows = {"premise": [f"p {i}" for i in range(12)], "hypothesis": [f"h {i}" for i in range(12)],
            "label": [i % 2 for i in range(12)]}
    split = datasets.Dataset.from_dict(rows)
    return datasets.DatasetDict({"train": split, "validation": split.select(range(4))})


def test_an_owner_slash_name_that_is_no_path_is_a_hub_dataset(tmp_path):
    assert task_source("someone/pairs").name == "hub"
    assert task_source("rte").name == "glue" and task_source("data/train.csv").name == "table"


def test_a_hub_dataset_missing_from_the_offline_cache_fails_in_one_line_and_quickly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    started = time.perf_counter()
    with pytest.raises(DataError) as caught:
        load_task("nobody-here/no-such-dataset", text_columns=("premise", "hypothesis"))
    message = str(caught.value)
    assert "\n" not in message and "HF_DATASETS_OFFLINE" in message and "HF_HUB_OFFLINE" in message
    assert "nobody-here/no-such-dataset" in message
    assert time.perf_counter() - started < 60


def test_a_cached_hub_dataset_loads_with_its_columns_as_a_pair_task(monkeypatch):
    """The cache itself is datasets' business; here load_dataset answers from it (stubbed), offline."""
    import datasets

    seen = {}

    def from_cache(name, *args, **kwargs):
        seen["offline"] = datasets.config.HF_HUB_OFFLINE
        return _pairs()

    monkeypatch.setattr(datasets, "load_dataset", from_cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    data = load_task("someone/pairs", text_columns=("premise", "hypothesis"), label_column="label")
    assert seen["offline"] and data.spec.name == "pairs" and data.spec.text_columns == ("premise", "hypothesis")
    assert data.spec.label_names == ("0", "1") and data.num_examples("validation") == 4


def test_a_save_to_disk_directory_takes_two_text_columns(tmp_path):
    _pairs().save_to_disk(str(tmp_path / "saved"))
    data = load_task(str(tmp_path / "saved"), text_columns=("premise", "hypothesis"))
    assert data.spec.text_columns == ("premise", "hypothesis") and data.num_examples("train") == 12
