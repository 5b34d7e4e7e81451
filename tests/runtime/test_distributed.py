"""Two CPU processes under torchrun (gloo): sharded extraction and DDP training give the single-process results.

Each test starts `python -m torch.distributed.run --standalone --nproc-per-node 2` (through tests/_torchrun.py,
which exits sooner) on the real CLI (tests/_torchrun_probe.py wraps it to record batches, to kill rank 1 or make it fail at a chosen point,
and to give rank 1 a machine-local --output). The last tests are two machines on one box: two torchrun
launchers (--nnodes 2, one process each) meeting at a c10d rendezvous, the store on the suite's S3
server (moto, loopback), which both "nodes" reach.

A launch costs ~17 s of CPU (every process imports torch and transformers), most of this file's time:
a test checks several things on one launch (a fresh extraction into the object store, also its summary
and JSON; the crashed training run also with --overwrite over old runs) rather than launching again.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hskstore.store import open_store, store_state

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "tests" / "_torchrun_probe.py"
TORCHRUN = ROOT / "tests" / "_torchrun.py"  # python -m torch.distributed.run, with a quick exit
TINY_EXTRACT = ["--task", "tweets", "--limit", "120", "--chunk-rows", "32", "--depth", "2", "--length", "5",
                "--width", "0.25", "--student-layers", "2", "--device", "cpu"]  # the tiny_store fixture's options


def torchrun(args, probe=None, crash_at=0, timeout=240, node_local=False, nproc=2) -> subprocess.CompletedProcess:
    """The CLI under torchrun; `crash_at` is the probe's FAULT; `node_local`: rank 1 writes to --output X.rank1.

    `nproc=1` is one plain process (no torchrun: its agent would add ~3 s of CPU), as a single-GPU resume runs."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HSKSTORE_PROBE_NODE_LOCAL="1" if node_local else "0")
    target = [str(PROBE), str(probe), str(crash_at)] if probe is not None else ["-m", "hskstore"]
    launcher = [str(TORCHRUN), "--standalone", "--nproc-per-node", str(nproc)] if nproc > 1 else []
    command = [sys.executable, *launcher, *target, *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def assert_same_store(a, b):
    """Two stores (paths, or stores opened already: a remote one with its options) hold the same arrays."""
    first, second = (store if hasattr(store, "splits") else open_store(store) for store in (a, b))
    assert first.splits == second.splits
    for split in first.splits:
        x, y = first.split(split), second.split(split)
        assert x.array_names == y.array_names
        for name in x.array_names:
            np.testing.assert_array_equal(x.read_rows(0, len(x), [name])[name], y.read_rows(0, len(y), [name])[name],
                                          err_msg=f"{split}/{name}")


def test_two_processes_extract_into_an_object_store_the_same_store_as_one(tiny_teacher, tiny_store, s3_server,
                                                                        s3_bucket_url):
    """A fresh extraction from start to end (local directories: the killed-rank test's two runs)."""
    endpoint, options = s3_server
    result = torchrun(["extract", "--teacher", tiny_teacher, "--output", s3_bucket_url, *TINY_EXTRACT, "--json",
                       "--storage-option", f"endpoint_url={endpoint}"])
    assert result.returncode == 0, result.stderr[-3000:]
    remote, local = open_store(s3_bucket_url, storage_options=options), open_store(tiny_store)
    assert_same_store(remote, local)
    summary = remote.attrs["summary"]
    assert summary["processes"] == 2 and summary["examples_extracted"] == 150
    # each rank counts the truncated examples of its own rows; the store records their sum, as one process does
    assert remote.attrs["truncated"] == local.attrs["truncated"]
    assert sum(remote.attrs["truncated"].values()) > 0
    assert json.loads(result.stdout)["processes"] == 2  # one JSON document: the summary is printed by rank 0 only


def test_a_killed_rank_leaves_a_partial_store_that_a_rerun_finishes_identically(tiny_teacher, tiny_store, tmp_path):
    out = tmp_path / "killed.zarr"
    args = ["extract", "--teacher", tiny_teacher, "--output", str(out), *TINY_EXTRACT, "--json"]
    crashed = torchrun(args, probe=tmp_path / "probe", crash_at=1)  # rank 1 dies after its first chunk
    assert crashed.returncode != 0
    state, _ = store_state(out)
    assert state == "partial"
    partial = open_store(out, allow_incomplete=True)
    done = {s: partial.chunks_done(s) for s in partial.splits}
    assert 2 in done["train"] and 3 not in done["train"]  # rank 1 owns train chunks 2-3 and wrote only the first

    rerun = torchrun(args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_store(out, tiny_store)
    written = sum(min(32, open_store(out).split(s).num_examples - 32 * k) for s in done for k in done[s])
    assert open_store(out).attrs["summary"]["examples_extracted"] == 150 - written  # resumed, not redone


def test_a_failing_rank_stops_every_rank_with_a_one_line_error(tiny_teacher, tmp_path):
    """Rank 1 runs out of memory at its second chunk and, like a rank on another machine, lingers: rank 0
    must learn of it from the ranks' own meetings, not from torchrun's agent or the collective timeout."""
    out, probe = tmp_path / "failed.zarr", tmp_path / "probe"
    started = time.time()
    result = torchrun(["extract", "--teacher", tiny_teacher, "--output", str(out), *TINY_EXTRACT],
                      probe=probe, crash_at="raise:2", timeout=200)
    assert result.returncode != 0
    assert time.time() - float((probe / "raised-at").read_text()) < 60, "ranks waited for a timeout"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    expected = "error: rank 1 failed at extracting its chunks; its error is printed above"
    assert errors == [expected], result.stderr[-3000:]
    assert "CUDA out of memory (simulated" in result.stderr
    assert time.time() - started < 200


def _no_dropout_student(tiny_student, directory) -> str:
    import shutil

    shutil.copytree(tiny_student, directory)
    meta = json.loads((directory / "student.json").read_text())
    meta["config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (directory / "student.json").write_text(json.dumps(meta))
    return str(directory)


def _epoch_rows(probe, steps):
    """Rows each rank staged, as the first `steps` batches of its record (the prefetcher may stage more)."""
    out = []
    for rank in range(2):
        lines = (probe / f"rows-rank{rank}.jsonl").read_text().splitlines()
        out.append([np.array(json.loads(line)) for line in lines[:steps]])
    return out


def _multiset(rows):
    return sorted(map(tuple, np.concatenate(rows).tolist()))


def _reference_losses(store, student, output, epochs):
    """One process, global batches of 16 made of the two ranks' batches: what DDP must reproduce."""
    from hskstore.store.stream import HSK_ARRAYS, TOKEN_ARRAYS, StoreStream
    from hskstore.stages.train import TrainConfig, Trainer

    trainer = Trainer(TrainConfig(store=store, student=student, output=str(output), stages=("hsk",), hsk_epochs=2,
                                  hsk_batch_size=16, hsk_lr=1e-3, device="cpu"), progress=False)
    trainer.student.train()
    trainer.projection.train()
    optimizer = trainer.optimizer("hsk", 1e-3)
    losses = []
    for epoch in range(epochs):
        ranks = [StoreStream(store, "train", 8, arrays=[*TOKEN_ARRAYS, *HSK_ARRAYS], seed=0, rank=r, world_size=2)
                 for r in range(2)]
        for stream in ranks:
            stream.set_epoch(epoch)
        for parts in zip(*ranks, strict=True):
            batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            losses.append(trainer.step("hsk", optimizer, batch))
    return losses, trainer


def test_ddp_training_sees_every_example_once_matches_one_process_resumes_and_only_rank_0_overwrites(
        tiny_store, tiny_student, tmp_path):
    """Rank 1's --output is machine-local (run.rank1): only rank 0 sees the checkpoint, and both ranks resume.
    Each rank's --output holds an old run: with --overwrite rank 0 alone prepares, so rank 1's must survive."""
    student = _no_dropout_student(tiny_student, tmp_path / "student")
    run, local = tmp_path / "run", tmp_path / "run.rank1"
    for old in (run, local):
        old.mkdir()
        (old / "metrics.json").write_text('{"old": true}')
    args = ["train", tiny_store, "--student", student, "--output", str(run), "--stages", "hsk", "--hsk-epochs", "2",
            "--hsk-batch-size", "16", "--hsk-lr", "1e-3", "--device", "cpu"]
    reference, trainer = _reference_losses(tiny_store, student, tmp_path / "reference", epochs=2)
    steps = len(reference) // 2  # 120 rows over 2 ranks of 8: 8 steps an epoch (4 chunks of 32, 32, 32, 24 rows)

    first = torchrun([*args, "--overwrite"], probe=tmp_path / "first", crash_at=steps + 2,
                     node_local=True)  # rank 1 dies in epoch 2
    assert first.returncode != 0
    history = json.loads((tmp_path / "first" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1]
    rows = _epoch_rows(tmp_path / "first", steps)
    everything = open_store(tiny_store).split("train").read_rows(0, 120, ["input_ids"])["input_ids"]
    assert _multiset(rows[0] + rows[1]) == _multiset([everything])  # each example once, over both ranks
    np.testing.assert_allclose(history[0]["step_losses"], reference[:steps], rtol=1e-4)

    second = torchrun(args, probe=tmp_path / "second", node_local=True)  # without --overwrite: resumes at epoch 1
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = json.loads((tmp_path / "second" / "history.json").read_text())
    assert [h["epoch"] for h in resumed] == [1, 2] and "step_losses" not in resumed[0]  # epoch 1 not redone
    rows = _epoch_rows(tmp_path / "second", steps)
    assert [len(r) for r in rows] == [steps, steps]
    assert _multiset(rows[0] + rows[1]) == _multiset([everything])
    np.testing.assert_allclose(resumed[1]["step_losses"], reference[steps:], rtol=1e-4)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and [h["epoch"] for h in metrics["history"]] == [1, 2]
    # Rank 0's saved student is the one-process reference's student after the same 16 steps.
    from hskstore.models.student import load_student

    saved = load_student(run / "student").state_dict()
    for name, value in trainer.student.state_dict().items():
        torch.testing.assert_close(saved[name], value, rtol=1e-4, atol=1e-6)
    # rank 1 wrote nothing of its own, and its old run survived --overwrite
    assert [p.name for p in local.iterdir()] == ["metrics.json"]
    assert json.loads((local / "metrics.json").read_text()) == {"old": True}


def _consumed_rows(probe, world_size, steps=None):
    """input_ids of the rows trained on, step by step and rank by rank within a step (the global batch order)."""
    ranks = [(probe / f"rows-rank{r}.jsonl").read_text().splitlines() for r in range(world_size)]
    steps = len(ranks[0]) if steps is None else steps
    assert all(len(lines) >= steps for lines in ranks)
    return [np.array(json.loads(ranks[r][s])) for s in range(steps) for r in range(world_size)]


def test_a_run_killed_mid_epoch_resumes_at_another_world_size_without_repeating_or_skipping(tiny_store, tiny_student,
                                                                                          tmp_path):
    """Checkpoints every 2 steps of the epoch's 8. Two processes, rank 1 dies after step 3; one process
    resumes at step 2 and dies after step 5; two processes resume at step 4 and finish: each resume trains
    on the global order's next examples (32..119, then 64..119), at the other number of processes."""
    from hskstore.store.stream import StoreStream

    student = _no_dropout_student(tiny_student, tmp_path / "student")
    run = tmp_path / "run"
    args = ["train", tiny_store, "--student", student, "--output", str(run), "--stages", "hsk", "--hsk-epochs", "1",
            "--hsk-batch-size", "16", "--hsk-lr", "1e-3", "--device", "cpu", "--checkpoint-every", "2"]
    first = torchrun(args, probe=tmp_path / "first", crash_at=3, nproc=2)
    assert first.returncode != 0
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert (state["stage"], state["epoch"], state["step"], state["examples"]) == ("hsk", 0, 2, 32)

    second = torchrun(args, probe=tmp_path / "second", crash_at=3, nproc=1)  # 2 -> 1, dies after its 3rd step
    assert second.returncode != 0
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert (state["stage"], state["epoch"], state["step"], state["examples"]) == ("hsk", 0, 4, 64)

    third = torchrun(args, probe=tmp_path / "third", nproc=2)  # 1 -> 2
    assert third.returncode == 0, third.stderr[-3000:]
    rows = (_consumed_rows(tmp_path / "first", 2, steps=2) + _consumed_rows(tmp_path / "second", 1, steps=2)
            + _consumed_rows(tmp_path / "third", 2))
    everything = open_store(tiny_store).split("train").read_rows(0, 120, ["input_ids"])["input_ids"]
    order, _, _ = StoreStream(tiny_store, "train", 16, seed=0).global_order()
    np.testing.assert_array_equal(np.concatenate(rows), everything[order])  # each example once, in the global order
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [(h["epoch"], h["step"], h.get("resumed_at_example")) for h in history] == [(1, 8, 64)]


# ------------------------------------------------------------------ two nodes on one box

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_nodes(args, probe, crash_at=0, timeout=180) -> list[subprocess.CompletedProcess]:
    """The CLI on 2 "nodes" of 1 process each; node 0's launcher hosts the rendezvous store."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", HSKSTORE_PROBE_NODE_LOCAL="0")
    port = _free_port()
    launchers = []
    for node in range(2):
        command = [sys.executable, str(TORCHRUN), "--nnodes", "2", "--nproc-per-node", "1",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", f"test-{port}",
                   "--rdzv-conf", f"is_host={int(node == 0)}", "--max-restarts", "0",
                   str(PROBE), str(probe), str(crash_at), *args]
        launchers.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, start_new_session=True))
    results = []
    try:
        for launcher in launchers:
            out, err = launcher.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(launcher.args, launcher.returncode, out, err))
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
    return results


def _errors(results):
    return "\n".join(r.stderr[-2000:] for r in results)


def test_two_nodes_extract_into_an_object_store_and_after_a_killed_node_a_relaunch_of_both_finishes_the_store_of_one(
        tiny_teacher, tiny_store, s3_server, s3_bucket_url, tmp_path):
    """The killed run (rank 1 dies after its first chunk) leaves a partial store; the relaunch of both nodes
    writes the chunks still missing and completes it: what one process extracts."""
    endpoint, options = s3_server
    args = ["extract", "--teacher", tiny_teacher, "--output", s3_bucket_url, *TINY_EXTRACT,
            "--storage-option", f"endpoint_url={endpoint}"]
    crashed = two_nodes(args, tmp_path / "crashed", crash_at=1)      # rank 1 dies after its first chunk
    assert any(r.returncode != 0 for r in crashed)
    state, _ = store_state(s3_bucket_url, storage_options=options)
    assert state == "partial"
    rerun = two_nodes(args, tmp_path / "rerun")
    assert [r.returncode for r in rerun] == [0, 0], _errors(rerun)
    remote = open_store(s3_bucket_url, storage_options=options)
    assert_same_store(remote, open_store(tiny_store))
    assert remote.attrs["summary"]["processes"] == 2
    assert remote.attrs["summary"]["examples_extracted"] < 150      # resumed: the killed run's chunks stay


def test_ddp_training_over_two_nodes_matches_one_process(tiny_store, tiny_student, s3_server, s3_bucket_url, tmp_path):
    """Both nodes train from the object store; one process on the local copy takes the same global batches."""
    import fsspec

    from hskstore.stages.train import TrainConfig, Trainer

    endpoint, options = s3_server
    fsspec.filesystem("s3", **options).put(tiny_store, s3_bucket_url.removeprefix("s3://"), recursive=True)
    student = _no_dropout_student(tiny_student, tmp_path / "student")
    schedule = dict(stages=("hsk",), hsk_epochs=1, hsk_batch_size=16, hsk_lr=1e-3, max_steps=4, device="cpu")
    results = two_nodes(["train", s3_bucket_url, "--storage-option", f"endpoint_url={endpoint}", "--student", student,
                         "--output", str(tmp_path / "run"), "--stages", "hsk", "--hsk-epochs", "1",
                         "--hsk-batch-size", "16", "--hsk-lr", "1e-3", "--max-steps", "4", "--device", "cpu"],
                        tmp_path / "probe")
    assert [r.returncode for r in results] == [0, 0], _errors(results)
    two = json.loads((tmp_path / "probe" / "history.json").read_text())[0]["step_losses"]
    one = Trainer(TrainConfig(store=tiny_store, student=student, output=str(tmp_path / "one"), **schedule),
                  progress=False)
    one.train()
    assert len(two) == 4
    np.testing.assert_allclose(two, one.history[0]["step_losses"], rtol=1e-4)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["world_size"] == 2
