"""`hskstore bench`: the three step modes and the reader, timed on the user's own store."""

import json

import pytest
from click.testing import CliRunner

from hskstore.experiments.bench import BenchConfig, time_reader
from hskstore.cli import cli
from hskstore.errors import ConfigError


def test_bench_json_has_medians_and_both_ratios(tiny_store, tiny_student, tiny_teacher):
    result = CliRunner().invoke(cli, ["bench", tiny_store, "--student", tiny_student, "--teacher", tiny_teacher,
                                      "--steps", "2", "--rounds", "2", "--reader-batches", "3", "--device", "cpu",
                                      "--json"], catch_exceptions=False)
    assert result.exit_code == 0
    data = json.loads(result.output)
    steps = data["steps"]
    assert set(steps["median_seconds_per_step"]) == {"student_only", "offline", "online"}
    assert all(len(rounds) == 2 for rounds in steps["seconds_per_step"].values())
    medians = steps["median_seconds_per_step"]
    assert steps["offline_over_student_only"] == pytest.approx(medians["offline"] / medians["student_only"])
    assert steps["online_over_offline"] == pytest.approx(medians["online"] / medians["offline"])
    assert data["reader"]["median_rows_per_second"] > 0


def test_without_a_teacher_the_online_ratio_is_absent_and_said_so(tiny_store, tiny_student):
    result = CliRunner().invoke(cli, ["bench", tiny_store, "--student", tiny_student, "--steps", "1", "--rounds", "1",
                                      "--reader-batches", "2", "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "offline / student-only" in result.output and "pass --teacher" in result.output


def test_the_reader_counts_rows_across_epochs(tiny_store):
    # 120 train rows in batches of 50: 3 batches per epoch, so 7 batches need a third epoch.
    result = time_reader(tiny_store, batch_size=50, batches=7, repeats=1, device="cpu")
    assert result["batches"] == 7 and result["rows_per_second"][0] > 0
    assert result["rows_per_cpu_second"][0] > 0  # CPU-time rate too: the one a shared machine distorts less


def test_bench_config_lists_every_problem():
    with pytest.raises(ConfigError) as error:
        BenchConfig(store="s", student="t", steps=0, rounds=0)
    assert "steps" in str(error.value) and "rounds" in str(error.value)


def test_the_reader_times_a_quantized_store(tiny_store, tmp_path):
    from hskstore.store.convert import convert_store

    quantized = str(tmp_path / "int4.zarr")
    convert_store(tiny_store, quantized, value_format="int4")
    result = time_reader(quantized, batch_size=50, batches=3, repeats=1, device="cpu")
    assert result["batches"] == 3 and result["rows_per_second"][0] > 0
