"""How ranks agree under torchrun: the collective timeout, rank 0 deciding for all, failures reaching every rank.

The pure parts run in this process; the rest runs once on 2 gloo processes under torchrun
(tests/runtime/_agreement_probe.py), and each test reads what the ranks saw.
"""

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hskstore.errors import ConfigError
from hskstore.runtime import distributed
from hskstore.runtime.distributed import DEFAULT_TIMEOUT_S, TIMEOUT_ENV, collective_timeout

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("_agreement_probe.py")
TORCHRUN = ROOT / "tests" / "_torchrun.py"  # python -m torch.distributed.run, with a quick exit
PROBE_TIMEOUT_S = 5


def test_the_collective_timeout_defaults_to_two_hours_instead_of_nccls_ten_minutes():
    assert collective_timeout({}) == datetime.timedelta(seconds=DEFAULT_TIMEOUT_S) == datetime.timedelta(hours=2)
    assert collective_timeout({TIMEOUT_ENV: "86400"}) == datetime.timedelta(days=1)
    assert collective_timeout({TIMEOUT_ENV: "90.5"}) == datetime.timedelta(seconds=90.5)


@pytest.mark.parametrize("raw", ["0", "-5", "two hours", "inf", "nan"])
def test_a_timeout_that_is_not_a_positive_number_of_seconds_is_a_one_line_error(raw):
    with pytest.raises(ConfigError, match=f"{TIMEOUT_ENV}=.*not a number of seconds > 0"):
        collective_timeout({TIMEOUT_ENV: raw})


def test_the_process_group_is_opened_with_the_timeout(monkeypatch):
    opened = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: opened.append((a, k)))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv(TIMEOUT_ENV, "600")
    distributed.setup("cpu")
    assert opened == [(("gloo",), {"timeout": datetime.timedelta(minutes=10)})]
    monkeypatch.delenv(TIMEOUT_ENV)
    distributed.setup("cpu")
    assert opened[-1][1]["timeout"] == datetime.timedelta(hours=2)


def test_one_process_decides_and_shares_by_itself():
    world = distributed.World()
    assert distributed.run_on_main(world, "x", lambda: {"epoch": 2}) == {"epoch": 2}
    value = {"a": torch.ones(2)}
    assert distributed.broadcast_object(value, world) is value
    with pytest.raises(ConfigError, match="bad"):
        distributed.run_on_main(world, "x", lambda: (_ for _ in ()).throw(ConfigError("bad")))
    done = []
    with distributed.Lockstep(world, "x") as lockstep:
        done += list(lockstep.each([1, 2, 3]))
    assert done == [1, 2, 3]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("agreement")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **{TIMEOUT_ENV: str(PROBE_TIMEOUT_S)})
    command = [sys.executable, str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(PROBE),
               str(out)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    seen = [json.loads((out / f"rank{r}.json").read_text()) if (out / f"rank{r}.json").is_file() else {}
            for r in range(2)]
    return seen, result



@pytest.mark.slow
def test_every_rank_receives_rank_0s_object_without_pickle(ranks):
    seen, result = ranks
    got = seen[1].get("broadcast")
    assert got is not None, result.stderr[-3000:]
    assert got == seen[0]["broadcast"]
    assert got["keys"] == sorted(map(repr, ["epoch", 7, "path", "n", "t", "h", "b", "step", "empty"]))
    assert got["tuple"] == [1.5, None, True] and got["path"] == "/x/checkpoint"
    assert got["n"] == [4, "int"]  # a numpy int arrives as an int
    assert got["tensors_equal"] and got["empty_shape"] == [0, 4]


@pytest.mark.slow
def test_rank_0_alone_runs_what_it_decides_and_the_others_get_its_result(ranks):
    seen, result = ranks
    assert seen[0]["run_on_main"] == {"ran": [0], "result": {"by": 0}}, result.stderr[-3000:]
    assert seen[1]["run_on_main"] == {"ran": [], "result": {"by": 0}}


@pytest.mark.slow
def test_a_failure_on_rank_0_reaches_the_others_as_a_one_line_error(ranks):
    seen, result = ranks
    assert seen[0]["run_on_main_failure"] == {"type": "ConfigError", "message": "output is a file"}
    assert seen[1]["run_on_main_failure"] == {
        "type": "HskError", "message": "rank 0 failed at preparing the output; its error is printed above"}


@pytest.mark.slow
def test_rank_0s_module_and_optimizer_state_reach_every_rank(ranks):
    seen, result = ranks
    shared = [seen[r]["share_state"] for r in range(2)]
    assert shared[0] == shared[1], result.stderr[-3000:]
    assert shared[1]["step"] == 1.0 and shared[1]["exp_avg"] is not None


@pytest.mark.slow
def test_ranks_with_different_amounts_of_work_step_together_and_a_failure_stops_all_of_them(ranks):
    seen, result = ranks
    assert seen[0]["lockstep"] == {"done": [0, 1, 2]} and seen[1]["lockstep"] == {"done": [0]}
    failed = [seen[r]["lockstep_failure"] for r in range(2)]
    assert failed[1]["type"] == "RuntimeError" and failed[1]["message"] == "out of memory on purpose"
    assert failed[0]["type"] == "HskError"
    assert failed[0]["message"] == "rank 1 failed at extracting its chunks; its error is printed above"
    assert failed[0]["seconds"] < 3  # at its next item, not at a timeout


@pytest.mark.slow
def test_a_rank_waits_for_a_late_one_as_long_as_the_timeout_says(ranks):
    seen, result = ranks
    late = seen[0].get("late_barrier")
    assert late is not None and late["raised"], result.stderr[-3000:]
    assert PROBE_TIMEOUT_S - 1 <= late["seconds"] < PROBE_TIMEOUT_S + 4
