"""The cloud workflow against a real S3-compatible server: extract into a bucket, SIGKILL, resume, info, train.

The endpoint is given the standard ways: AWS_ENDPOINT_URL in the environment (the killed run) and
`--storage-option endpoint_url=...` on the command line (everything after it).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

from hskstore.cli import cli
from hskstore.store import open_store

pytestmark = pytest.mark.integration

EXTRACT = ["--task", "tweets", "--limit", "120", "--chunk-rows", "16", "--depth", "2", "--length", "5",
           "--width", "0.25", "--student-layers", "2", "--batch-size", "8"]


def _written_chunks(url, options) -> int:
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    fs.invalidate_cache()
    return len(fs.glob(url.removeprefix("s3://") + "/train/chunks_written/c/*"))


def _when_chunks_recorded(monkeypatch, url, count) -> threading.Event:
    """Set once the server (moto, in this process) has stored `count` train chunk records of the store at
    `url`: the test waits on the writes themselves instead of listing the bucket over and over."""
    from moto.s3.models import S3Backend

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    records, reached, put_object = set(), threading.Event(), S3Backend.put_object

    def counting_put_object(self, bucket_name, key_name, *args, **kwargs):
        stored = put_object(self, bucket_name, key_name, *args, **kwargs)
        if bucket_name == bucket and key_name.startswith(f"{prefix}/train/chunks_written/c/"):
            records.add(key_name)
            if len(records) >= count:
                reached.set()
        return stored

    monkeypatch.setattr(S3Backend, "put_object", counting_put_object)
    return reached


@pytest.mark.slow
def test_extract_into_a_bucket_survives_sigkill_then_info_train_evaluate(s3_server, s3_bucket_url, tiny_teacher,
                                                                        tiny_student, tmp_path, monkeypatch):
    endpoint, options = s3_server
    url = s3_bucket_url + "/tweets.zarr"
    env = os.environ | {"AWS_ENDPOINT_URL": endpoint, "TQDM_DISABLE": "1"}
    three_recorded = _when_chunks_recorded(monkeypatch, url, 3)
    process = subprocess.Popen([sys.executable, "-m", "hskstore", "extract", "--teacher", tiny_teacher,
                                "--output", url, *EXTRACT], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not three_recorded.wait(0.1) and process.poll() is None and time.monotonic() < deadline:
        pass
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = _written_chunks(url, options)
    assert 3 <= killed_at < 8, f"the run was killed after {killed_at} of 8 train chunks"

    runner = CliRunner()
    option = ["--storage-option", f"endpoint_url={endpoint}"]
    partial = runner.invoke(cli, ["info", url, "--json", "--allow-incomplete", *option])
    assert partial.exit_code == 0, partial.output
    assert json.loads(partial.output)["complete"] is False
    resumed = runner.invoke(cli, ["extract", "--teacher", tiny_teacher, "--output", url, "--json", *EXTRACT, *option])
    assert resumed.exit_code == 0, resumed.output

    local = str(tmp_path / "local.zarr")
    reference = runner.invoke(cli, ["extract", "--teacher", tiny_teacher, "--output", local, *EXTRACT])
    assert reference.exit_code == 0, reference.output
    with open_store(url, storage_options=options) as remote, open_store(local) as here:
        for split in here.splits:
            a = remote.split(split).read_rows(0, here.split(split).num_examples)
            b = here.split(split).read_rows(0, here.split(split).num_examples)
            for name in b:
                np.testing.assert_array_equal(a[name], b[name], err_msg=f"{split}/{name}")

    info = runner.invoke(cli, ["info", url, "--json", *option])
    assert info.exit_code == 0 and json.loads(info.output)["bytes"]["total"] > 0
    run = str(tmp_path / "run")
    trained = runner.invoke(cli, ["train", url, "--student", tiny_student, "--output", run, "--device", "cpu",
                                  "--hsk-epochs", "1", "--pred-epochs", "1", "--max-steps", "3", *option])
    assert trained.exit_code == 0, trained.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["store"] == url and metrics["config"]["storage_options"] == ["endpoint_url"]
    evaluated = runner.invoke(cli, ["evaluate", str(tmp_path / "run" / "student"), "--store", url, "--json",
                                    "--device", "cpu", *option])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["examples"] == 30


def test_a_missing_bucket_driver_or_store_is_a_one_line_error(s3_server):
    _, options = s3_server
    result = CliRunner().invoke(cli, ["info", "s3://hsk-test/nothing-here.zarr",
                                      "--storage-option", f"endpoint_url={options['endpoint_url']}"])
    assert result.exit_code == 2 and result.output.startswith("error: no store at s3://hsk-test/nothing-here.zarr")


def test_a_whole_object_read_from_s3_is_one_request_not_a_head_and_a_get(s3_server, s3_bucket_url, monkeypatch):
    """s3fs heads an object before reading it whole unless told not to split reads: every metadata and chunk
    read of a store would be two round trips (~440 requests to create and reopen a small store, 279 now)."""
    from werkzeug.serving import WSGIRequestHandler

    from hskstore.store.location import StoreLocation

    _, options = s3_server
    location = StoreLocation.of(s3_bucket_url + "/s.zarr", options)
    fs, path = location.backend.filesystem(location)             # what the store reads and writes through
    fs.pipe(path + "/zarr.json", b"{}")
    fs.invalidate_cache()
    requests = []
    original = WSGIRequestHandler.log_request
    monkeypatch.setattr(WSGIRequestHandler, "log_request",
                        lambda self, *a, **k: (requests.append(self.command), original(self, *a, **k))[1])
    assert fs.cat(path + "/zarr.json") == b"{}"
    assert requests == ["GET"]
