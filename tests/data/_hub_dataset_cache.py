"""A real local cache of a hub dataset, two revisions of a few hundred tweets, as an online load leaves it.

`datasets` (5.x) offline never reads the hub cache: `load_dataset("owner/name")` falls back to the build an
earlier online load wrote under HF_DATASETS_CACHE, `<owner>___<name>/<config>/<version>/<commit>/` (arrow
files and dataset_info.json), and reads it with its `Cache` builder. The fixture writes that build with the
same `Csv` builder an online load of a CSV repository runs (hash = the commit), from the repository's
files, then puts it under the owner's name (a builder given a local file refuses a `repo_id`; the name
is the only difference). Beside it, the hub cache an online load also leaves: `datasets--owner--name/
snapshots/<commit>/` with the CSVs, and `refs/main`. Nothing is stubbed; HF_HUB_OFFLINE stays set.
"""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

REPO = "someorg/tweetset"
OLDER, NEWER = "a1" * 20, "b2" * 20  # two 40-hex commits; NEWER is main's and the newest build
ROWS = {OLDER: 300, NEWER: 200}      # train rows per revision (validation: a quarter)


def _write_split(path, texts, labels):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels))


@pytest.fixture()
def hub_dataset_cache(tmp_path, monkeypatch) -> dict:
    """Point datasets and huggingface_hub at a fresh cache holding REPO at OLDER and NEWER; {commit: sizes}."""
    import datasets
    import huggingface_hub.constants as hub
    from datasets.packaged_modules.csv.csv import Csv

    from hskstore.data.tasks import load_task

    tweets = load_task("tweets", limit=max(ROWS.values()), seed=0)
    names = tweets.spec.label_names
    train, validation = tweets.split("train"), tweets.split("validation")
    data_cache, hub_cache = tmp_path / "datasets", tmp_path / "hub"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(data_cache))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    repo_dir = hub_cache / f"datasets--{REPO.replace('/', '--')}"
    sizes = {}
    for commit in (OLDER, NEWER):  # built in this order: NEWER is the newest build
        n = ROWS[commit]
        sizes[commit] = {"train": n, "validation": n // 4}
        snapshot = repo_dir / "snapshots" / commit
        snapshot.mkdir(parents=True)
        files = {}
        for split, rows, count in (("train", train, n), ("validation", validation, n // 4)):
            order = np.random.default_rng(0).permutation(len(rows["text"]))[:count]  # the corpus is label-sorted
            _write_split(snapshot / f"{split}.csv", [rows["text"][i] for i in order],
                         [names[rows["sentiment"][i]] for i in order])
            files[split] = str(snapshot / f"{split}.csv")
        Csv(cache_dir=str(data_cache), dataset_name=REPO.split("/")[1], hash=commit, config_id="default",
            data_files=files).download_and_prepare()
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(NEWER)
    shutil.move(str(data_cache / REPO.split("/")[1]), str(data_cache / REPO.replace("/", "___")))
    return sizes
