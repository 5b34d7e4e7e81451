"""Hub ids work wherever a model directory does, offline from a real local hub cache.

The fixture lays out the cache exactly as huggingface_hub writes it (models--org--name/snapshots/<commit>/
and refs/main) from the packaged all-MiniLM-L6-v2 and from the tiny test teacher, then points HF_HOME at it.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hskstore.errors import ModelError
from hskstore.models.hub import hub_provenance, local_model_dir, looks_like_hub_id

ROOT = Path(__file__).resolve().parents[2]
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _cache_model(hub: Path, repo_id: str, source: Path) -> Path:
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        if file.is_file() and (file.suffix in (".json", ".safetensors") or file.name == "vocab.txt"):
            shutil.copy(file, snapshot / file.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.fixture(scope="module")
def hub_home(tiny_teacher, tmp_path_factory):
    from conftest import minilm_path

    home = tmp_path_factory.mktemp("hf_home")
    _cache_model(home / "hub", "sentence-transformers-test/all-MiniLM-L6-v2", Path(minilm_path()))
    _cache_model(home / "hub", "hskstore-test/tiny-teacher", Path(tiny_teacher))
    return home


@pytest.fixture
def offline_cache(hub_home, monkeypatch):
    """huggingface_hub reads HF_HOME at import: point its constants at the fixture's cache for this test."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_home


@pytest.mark.parametrize("value, expected", [("bert-base-uncased", True), ("org/name", True), ("./dir", False),
                                             ("/abs/dir", False), ("a/b/c", False), ("runs/x/", False)])
def test_what_counts_as_a_hub_id(value, expected):
    assert looks_like_hub_id(value) is expected


def test_a_hub_id_loads_the_cached_minilm_with_its_tokenizer_and_revision(offline_cache):
    from hskstore.models.teacher import load_teacher, load_tokenizer

    model, identity = load_teacher("sentence-transformers-test/all-MiniLM-L6-v2", num_labels=3)
    assert (identity.num_layers, identity.hidden_size, identity.num_labels) == (6, 384, 3)
    assert load_tokenizer("sentence-transformers-test/all-MiniLM-L6-v2")("good")["input_ids"][0] == 101
    assert hub_provenance("sentence-transformers-test/all-MiniLM-L6-v2") == {
        "hub_id": "sentence-transformers-test/all-MiniLM-L6-v2", "revision": REVISION}
    assert hub_provenance(str(local_model_dir("sentence-transformers-test/all-MiniLM-L6-v2"))) is None


def test_an_uncached_hub_id_offline_is_a_one_line_error_at_once(offline_cache):
    from hskstore.models.teacher import check_bert_family

    started = time.monotonic()
    with pytest.raises(ModelError, match=r"'bert-base-uncased' is not a local directory and not in the hub cache .*"
                                         r"HF_HUB_OFFLINE"):
        check_bert_family("bert-base-uncased")
    assert time.monotonic() - started < 5


def test_extract_takes_a_hub_id_on_the_command_line(hub_home, tmp_path):
    env = dict(os.environ, HF_HOME=str(hub_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-m", "hskstore", "extract", "--teacher", "hskstore-test/tiny-teacher",
                           "--task", "tweets", "--output", str(tmp_path / "s.zarr"), "--limit", "32",
                           "--depth", "1", "--length", "3", "--width", "0.25", "--student-layers", "2",
                           "--device", "cpu", "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    from hskstore.store import open_store

    with open_store(str(tmp_path / "s.zarr")) as store:  # the teacher's hub id and the snapshot's revision
        assert store.attrs["teacher"]["hub"] == {"hub_id": "hskstore-test/tiny-teacher", "revision": REVISION}
    missing = subprocess.run([sys.executable, "-m", "hskstore", "extract", "--teacher", "no-such-org/no-model",
                              "--task", "tweets", "--output", str(tmp_path / "t.zarr"), "--quiet"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "HF_HUB_OFFLINE" in missing.stderr


def test_finetune_records_the_revision_of_a_base_model_given_by_hub_id(offline_cache, tmp_path):
    import json

    from hskstore.stages.finetune import FinetuneConfig, finetune

    finetune(FinetuneConfig(model="hskstore-test/tiny-teacher", task="tweets", output=str(tmp_path / "t"), limit=16,
                            epochs=1, max_length=16, batch_size=8, device="cpu"), progress=False)
    info = json.loads((tmp_path / "t" / "hskstore_teacher.json").read_text())
    assert info["base_model_hub"] == {"hub_id": "hskstore-test/tiny-teacher", "revision": REVISION}
    assert "hskstore-test/tiny-teacher" in (tmp_path / "t" / "README.md").read_text()
