"""benchmarks/frontier.py: every arm is a valid sweep point, and the frontier is the undominated arms."""


import pytest

from _benchmark_scripts import benchmark_script

@pytest.fixture(scope="module")
def frontier():
    with benchmark_script("frontier") as module:
        yield module


def test_every_arm_is_a_sweep_point_with_its_own_store(frontier, tiny_teacher, tmp_path):
    from hskstore.experiments.sweep import SweepConfig, plan

    config = SweepConfig.of(output=str(tmp_path), teacher=tiny_teacher, task="tweets",
                            points=tuple(frontier.point(options) for options in frontier.ARMS.values()))
    keys = {p.key for p in plan(config, 32) if p.kind == "hsk"}
    assert keys == {frontier._key(options) for options in frontier.ARMS.values()}
    assert len(keys) == len(frontier.ARMS)


def test_the_frontier_holds_the_arms_no_other_arm_beats_on_bytes_and_accuracy(frontier):
    rows = [{"label": "float16", "bytes": 800, "dev_mean": 0.75}, {"label": "int8", "bytes": 600, "dev_mean": 0.75},
            {"label": "int4", "bytes": 420, "dev_mean": 0.74}, {"label": "bad", "bytes": 500, "dev_mean": 0.70},
            {"label": "static", "bytes": 280, "dev_mean": 0.74}]
    assert frontier.frontier(rows) == {"int8", "static"}
