"""`hskstore sweep`: points and levels, fair baselines, resumable runs, results table and plot."""

import csv
import json

import pytest
from click.testing import CliRunner

from hskstore.cli import cli
from hskstore.errors import ConfigError
from hskstore.sweep import SweepConfig, configurations_for, plan


def test_levels_draw_triples_within_ten_percent_as_the_paper_does():
    found = configurations_for(1.0, student_layers=3, max_length=16)
    assert (1, 9, 0.1) in found and (2, 5, 0.1) in found and (1, 12, 0.1) not in found
    assert all(0.9 <= d * n * w <= 1.1 and 1 <= d <= 4 for d, n, w in found)


def test_a_plan_lists_points_levels_then_both_baselines():
    config = SweepConfig(teacher="t", task="tweets", output="o", points=((1, 9, 0.1),), levels=(3.0,), per_level=2)
    points = plan(config, max_length=32)
    assert [p.kind for p in points] == ["hsk", "hsk", "hsk", "full", "pred"]
    assert points[0].key == "hsk-1-9-0.1" and points[3].compression.length is None
    assert plan(config, 32) == points                        # the same draws every time: resumable


def test_a_sweep_needs_points_or_levels():
    with pytest.raises(ConfigError, match="at least one point"):
        SweepConfig(teacher="t", task="tweets", output="o")


@pytest.mark.slow
def test_sweep_end_to_end_on_the_tiny_teacher_is_resumable(tiny_teacher, tiny_student, tmp_path):
    args = ["sweep", "--teacher", tiny_teacher, "--output", str(tmp_path / "sweep"), "--student", tiny_student,
            "--point", "1,3,0.25", "--point", "2,5,0.5", "--seeds", "0,1", "--student-layers", "2",
            "--limit", "40", "--hsk-epochs", "1", "--pred-epochs", "1", "--pred-lr-grid", "1e-4,1e-3",
            "--device", "cpu"]
    first = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    results = json.loads((tmp_path / "sweep" / "results.json").read_text())
    summary = {row["point"]: row for row in results["summary"]}
    assert list(summary) == ["hsk-1-3-0.25", "hsk-2-5-0.5", "full", "pred"]
    assert all(row["seeds"] == 2 for row in summary.values())
    assert summary["hsk-1-3-0.25"]["amount_hsk"] == pytest.approx(1 * 3 * 8 / 32)
    # Prediction-only KD: same total epochs (1 + 1), its lr the best of the grid on dev.
    pred_rows = [r for r in results["rows"] if r["kind"] == "pred"]
    grid = pred_rows[0]["grid"]
    assert pred_rows[0]["pred_lr"] == float(max(grid, key=grid.get))
    pred_run = json.loads((tmp_path / "sweep" / "runs" / "pred" / f"lr{pred_rows[0]['pred_lr']:g}-seed1" /
                           "metrics.json").read_text())
    assert pred_run["config"]["stages"] == ["pred"] and pred_run["config"]["pred_epochs"] == 2
    with open(tmp_path / "sweep" / "results.csv") as handle:
        assert [row["point"] for row in csv.DictReader(handle)] == list(summary)
    try:
        import matplotlib  # noqa: F401  (the optional extra `plot`)
        assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    except ImportError:
        assert "plot skipped" in first.output
    # 3 HSK points x 2 seeds, a 2-lr grid with seed 0, then the best lr with seed 1.
    assert "[9/9]" in first.output and "ETA" in first.output
    # A rerun trains nothing: every run is reused, and the table is the same.
    again = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert again.exit_code == 0 and again.output.count("reused") == 9
    assert json.loads((tmp_path / "sweep" / "results.json").read_text())["summary"] == results["summary"]


def test_a_dry_run_prints_the_plan_and_writes_nothing(tiny_teacher, tmp_path):
    result = CliRunner().invoke(cli, ["sweep", "--teacher", tiny_teacher, "--output", str(tmp_path / "s"),
                                      "--level", "1", "--level", "3", "--student-layers", "2", "--dry-run"],
                                catch_exceptions=False)
    assert result.exit_code == 0
    plan_ = json.loads(result.output)
    assert [p["kind"] for p in plan_["points"]] == ["hsk", "hsk", "full", "pred"]
    assert plan_["runs"] == 3 * 3 + 4 + 2                 # 3 seeds per point; a 4-lr grid, then 2 more seeds
    assert not (tmp_path / "s").exists()


def test_a_rerun_with_another_recipe_is_refused_before_any_work(tiny_teacher, tmp_path):
    from dataclasses import asdict

    from hskstore.sweep import sweep

    config = SweepConfig(teacher=tiny_teacher, task="tweets", output=str(tmp_path / "s"), points=((1, 3, 0.25),),
                         hsk_epochs=1)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.json").write_text(json.dumps({"config": asdict(config) | {"hsk_epochs": 2}}))
    with pytest.raises(ConfigError, match="another recipe.*hsk_epochs: 2 then, 1 now"):
        sweep(config)
    assert not (tmp_path / "s" / "stores").exists()
