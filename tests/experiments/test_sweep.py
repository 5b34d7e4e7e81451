"""`hskstore sweep`: points and levels, fair baselines, resumable runs, results table and plot."""

import csv
import json

import pytest
from click.testing import CliRunner

from hskstore.cli import cli
from hskstore.errors import ConfigError
from hskstore.experiments.sweep import SweepConfig, configurations_for, plan


def test_levels_draw_triples_within_ten_percent_as_the_paper_does():
    found = configurations_for(1.0, student_layers=3, max_length=16)
    assert (1, 9, 0.1) in found and (2, 5, 0.1) in found and (1, 12, 0.1) not in found
    assert all(0.9 <= d * n * w <= 1.1 and 1 <= d <= 4 for d, n, w in found)


def test_a_plan_lists_points_levels_then_both_baselines():
    config = SweepConfig.of(teacher="t", task="tweets", output="o", points=((1, 9, 0.1),), levels=(3.0,), per_level=2)
    points = plan(config, max_length=32)
    assert [p.kind for p in points] == ["hsk", "hsk", "hsk", "full", "pred"]
    assert points[0].key == "hsk-1-9-0.1" and points[3].compression.length is None
    assert plan(config, 32) == points                        # the same draws every time: resumable


def test_a_sweep_needs_points_or_levels():
    with pytest.raises(ConfigError, match="at least one point"):
        SweepConfig.of(teacher="t", task="tweets", output="o")


@pytest.mark.slow
@pytest.mark.integration
def test_sweep_end_to_end_on_the_tiny_teacher_is_resumable(tiny_teacher, tiny_student, tmp_path):
    args = ["sweep", "--teacher", tiny_teacher, "--task", "tweets", "--output", str(tmp_path / "sweep"),
            "--student", tiny_student,
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
    # The teacher ran once for both points: a (2, 5, 16) cover store, each point sliced from it.
    from hskstore.store import open_store

    for key in ("hsk-1-3-0.25", "hsk-2-5-0.5"):
        with open_store(str(tmp_path / "sweep" / "stores" / f"{key}.zarr")) as store:
            assert store.attrs["derived_from"]["location"].endswith("cover.zarr")
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
    result = CliRunner().invoke(cli, ["sweep", "--teacher", tiny_teacher, "--task", "tweets",
                                      "--output", str(tmp_path / "s"), "--limit", "40",
                                      "--level", "1", "--level", "3", "--student-layers", "2", "--dry-run"],
                                catch_exceptions=False)
    assert result.exit_code == 0
    plan_ = json.loads(result.output)
    assert [p["kind"] for p in plan_["points"]] == ["hsk", "hsk", "full", "pred"]
    assert plan_["runs"] == 3 * 3 + 4 + 2                 # 3 seeds per point; a 4-lr grid, then 2 more seeds
    assert plan_["task"] == "tweets" and plan_["examples"] == {"train": 40, "validation": 10}  # the data, resolved
    assert not (tmp_path / "s").exists()


def test_a_rerun_with_another_recipe_is_refused_before_any_work(tiny_teacher, tmp_path):
    from dataclasses import asdict

    from hskstore.experiments.sweep import sweep

    config = SweepConfig.of(teacher=tiny_teacher, task="tweets", output=str(tmp_path / "s"), points=((1, 3, 0.25),),
                            hsk_epochs=1)
    (tmp_path / "s").mkdir()
    saved = asdict(config)
    saved["train"]["hsk_epochs"] = 2
    (tmp_path / "s" / "sweep.json").write_text(json.dumps({"config": saved}))
    with pytest.raises(ConfigError, match="another recipe.*hsk_epochs: 2 then, 1 now"):
        sweep(config)
    # A sweep.json written before the templates (one flat config) is held to the same recipe.
    flat = {"teacher": tiny_teacher, "task": "tweets", "hsk_epochs": 2, "limit": None, "extract_options": {}}
    (tmp_path / "s" / "sweep.json").write_text(json.dumps({"config": flat}))
    with pytest.raises(ConfigError, match="another recipe.*hsk_epochs: 2 then, 1 now"):
        sweep(config)
    assert not (tmp_path / "s" / "stores").exists()


def test_a_teacher_named_by_another_path_to_the_same_directory_is_the_same_recipe(tiny_teacher, tmp_path,
                                                                                   monkeypatch):
    import os
    from dataclasses import asdict

    from hskstore.experiments.sweep import _check_recipe

    config = SweepConfig.of(teacher=tiny_teacher, task="tweets", output=str(tmp_path / "s"), points=((1, 3, 0.25),))
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.json").write_text(json.dumps({"config": asdict(config)}, default=str))
    monkeypatch.chdir(os.path.dirname(tiny_teacher))
    relative = SweepConfig.of(teacher=os.path.basename(tiny_teacher), task="tweets", output=str(tmp_path / "s"),
                              points=((1, 3, 0.25),))
    _check_recipe(tmp_path / "s", relative)                               # resumes: no error
    other = SweepConfig.of(teacher=str(tmp_path), task="tweets", output=str(tmp_path / "s"), points=((1, 3, 0.25),))
    with pytest.raises(ConfigError, match="another recipe.*teacher"):
        _check_recipe(tmp_path / "s", other)


def test_a_point_may_change_strategies_and_the_hsk_loss_and_keep_every_token():
    from hskstore.experiments.sweep import parse_point as _point

    entry = _point("1,9,0.1,width_strategy=rand,l_top=4,hsk_loss=kept")
    assert entry == (1, 9, 0.1, {"width_strategy": "rand", "l_top": 4, "hsk_loss": "kept"})
    config = SweepConfig.of(teacher="t", task="tweets", output="o", points=(entry, (1, 9, 0.1, {"l_top": 4}),
                                                                            _point("2,all,all")))
    varied, base, deep = plan(config, max_length=32)[:3]
    assert varied.key == "hsk-1-9-0.1+hsk_loss=kept+l_top=4+width_strategy=rand"
    assert varied.compression.width_strategy == "rand" and varied.compression.l_top == 4
    assert varied.train_options == (("hsk_loss", "kept"),)
    assert base.store_key == "hsk-1-9-0.1+l_top=4" and varied.store_key != base.store_key
    assert deep.key == "hsk-2-all-all" and deep.compression.length_strategy == "all"
    with pytest.raises(ConfigError, match="unknown point options.*'lr'"):
        SweepConfig.of(teacher="t", task="tweets", output="o", points=((1, 9, 0.1, {"lr": 1}),))
    with pytest.raises(ConfigError, match="points repeat"):
        plan(SweepConfig.of(teacher="t", task="tweets", output="o", points=((1, 9, 0.1), (1, 9, 0.1))), 32)


@pytest.mark.slow
@pytest.mark.integration
def test_every_arm_can_get_the_baselines_tuning_and_stores_are_shared_or_sliced(tiny_teacher, tiny_student, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--teacher", tiny_teacher, "--task", "tweets", "--output", str(out), "--student", tiny_student,
            "--point", "1,3,0.25", "--point", "1,3,0.25,hsk_loss=kept", "--point", "1,all,all", "--no-pred",
            "--seeds", "0,1", "--student-layers", "2", "--limit", "40", "--hsk-epochs", "1", "--pred-epochs", "1",
            "--point-lr-grid", "1e-4,1e-3", "--device", "cpu"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "[12/12]" in result.output                       # 4 arms x (a 2-lr grid with seed 0, then seed 1)
    rows = json.loads((out / "results.json").read_text())["rows"]
    for key in ("hsk-1-3-0.25", "hsk-1-3-0.25+hsk_loss=kept", "hsk-1-all-all", "full"):
        first, second = [r for r in rows if r["point"] == key]
        assert first["lr"] == float(max(first["grid"], key=first["grid"].get)) == second["lr"]
        assert (out / "runs" / key / f"lr{second['lr']:g}-seed1" / "metrics.json").is_file()
    kept = json.loads((out / "runs" / "hsk-1-3-0.25+hsk_loss=kept" / "lr0.001-seed0" / "metrics.json").read_text())
    assert kept["config"]["hsk_loss"] == "kept" and kept["config"]["hsk_lr"] == kept["config"]["pred_lr"] == 1e-3
    stores = sorted(p.name for p in (out / "stores").iterdir() if p.suffix == ".zarr")
    assert stores == ["full.zarr", "hsk-1-3-0.25.zarr", "hsk-1-all-all.zarr"]   # the loss variant shares a store
    from hskstore.store import open_store

    with open_store(str(out / "stores" / "hsk-1-all-all.zarr")) as store:     # every token: sliced from full HSK
        assert store.attrs["derived_from"]["location"].endswith("full.zarr")


def _pair_teacher_and_student(tmp_path, task_record=None):
    from conftest import save_tiny_teacher

    from hskstore.models.student import build_bert_student, save_student

    teacher = save_tiny_teacher(tmp_path / "teacher", num_labels=2)
    if task_record is not None:
        (tmp_path / "teacher" / "hskstore_teacher.json").write_text(json.dumps({"max_length": 32, **task_record}))
    student = tmp_path / "student"
    save_student(build_bert_student(num_labels=2, vocab_size=30522, num_layers=2, hidden_size=16,
                                    intermediate_size=32, num_heads=2, seed=0), student)
    return teacher, str(student)


SMALL = ["--point", "1,3,0.25", "--seeds", "0", "--student-layers", "2", "--no-full", "--pred-lr-grid", "1e-3",
         "--hsk-epochs", "1", "--pred-epochs", "1", "--hsk-batch-size", "8", "--pred-batch-size", "8",
         "--device", "cpu"]


def _glue_files_fixture():
    """tests/data/test_glue_files.py, which writes GLUE-format folders (imported by path: tests/data is no package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("glue_files_fixture",
                                                  Path(__file__).parents[1] / "data" / "test_glue_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_runs_on_glue_files_from_data_dir(tmp_path):
    write_glue_folder = _glue_files_fixture().write_glue_folder
    write_glue_folder(tmp_path / "RTE", "rte", train_rows=16, dev_rows=8)
    teacher, student = _pair_teacher_and_student(tmp_path)
    args = ["sweep", "--teacher", teacher, "--task", "rte", "--data-dir", str(tmp_path / "RTE"),
            "--output", str(tmp_path / "sweep"), "--student", student, *SMALL]
    dry = CliRunner().invoke(cli, [*args, "--dry-run"], catch_exceptions=False)
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["examples"] == {"train": 16, "validation": 8}
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "sweep" / "results.json").read_text())["summary"]
    assert [row["point"] for row in summary] == ["hsk-1-3-0.25", "pred"]
    from hskstore.store import open_store

    stores = sorted((tmp_path / "sweep" / "stores").glob("*.zarr"))
    with open_store(str(stores[0])) as store:
        assert store.task["name"] == "rte" and store.attrs["splits"] == {"train": 16, "validation": 8}


def test_sweep_defaults_to_the_file_task_the_teacher_recorded(tmp_path):
    data = tmp_path / "pairs.csv"
    data.write_text("first,second,label\n" + "".join(f"a {i},b {i},{'yes' if i % 2 else 'no'}\n" for i in range(24)))
    options = {"text_columns": ["first", "second"], "label_column": "label", "validation_fraction": 0.25}
    teacher, student = _pair_teacher_and_student(tmp_path, {
        "task": {"name": "pairs", "label_names": ["no", "yes"]}, "task_ref": {"task": str(data), "options": options}})
    args = ["sweep", "--teacher", teacher, "--output", str(tmp_path / "sweep"), "--student", student, *SMALL]
    dry = CliRunner().invoke(cli, [*args, "--dry-run"], catch_exceptions=False)
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["task"] == "pairs" and json.loads(dry.output)["examples"]["validation"] == 6
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "sweep" / "results.json").read_text())["rows"]) == 2


def test_a_dry_run_names_a_missing_task_with_flags_sweep_has(tiny_teacher, tmp_path):
    result = CliRunner().invoke(cli, ["sweep", "--teacher", tiny_teacher, "--output", str(tmp_path / "s"),
                                      "--point", "1,3,0.25", "--dry-run"])
    assert result.exit_code == 2 and "--task" in result.output
    missing = CliRunner().invoke(cli, ["sweep", "--teacher", tiny_teacher, "--output", str(tmp_path / "s"),
                                       "--task", "rte", "--data-dir", str(tmp_path / "nowhere"),
                                       "--point", "1,3,0.25", "--dry-run"])
    assert missing.exit_code == 2 and "nowhere" in missing.output and not (tmp_path / "s").exists()


def test_points_may_vary_the_value_format_and_are_requantized_from_float16_covers(tiny_teacher, tiny_student,
                                                                                 tmp_path):
    """The accuracy-per-byte study in one sweep: each format's store sliced from a float16 cover, static masks too."""
    from hskstore.store import open_store

    out = tmp_path / "sweep"
    args = ["sweep", "--teacher", tiny_teacher, "--task", "tweets", "--output", str(out), "--student", tiny_student,
            "--point", "1,3,0.25", "--point", "1,3,0.25,value_format=int4", "--point", "1,3,0.25,value_bits=7",
            "--point", "1,3,0.25,width_strategy=uniform,value_format=int8",
            "--point", "1,3,0.25,width_strategy=uniform,value_format=int4",
            "--no-full", "--no-pred", "--seeds", "0", "--student-layers", "2", "--limit", "40", "--hsk-epochs", "1",
            "--pred-epochs", "1", "--device", "cpu"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stores = out / "stores"
    assert sorted(p.name for p in stores.iterdir() if p.name.startswith("cover")) == ["cover-2.zarr", "cover.zarr"]
    formats = {}
    for key in ("hsk-1-3-0.25+value_format=int4", "hsk-1-3-0.25+value_format=int8+width_strategy=uniform",
                "hsk-1-3-0.25+value_format=int4+width_strategy=uniform"):
        with open_store(str(stores / f"{key}.zarr")) as store:
            assert store.attrs["derived_from"]["location"].split("/")[-1].startswith("cover")
            assert store.format_version == 3
            formats[key] = store.compression.value_format
    assert list(formats.values()) == ["int4", "int8", "int4"]
    summary = {row["point"]: row for row in json.loads((out / "results.json").read_text())["summary"]}
    assert summary["hsk-1-3-0.25+value_format=int4"]["variant"] == "value_format=int4"
    from hskstore.store.report import store_info

    infos = {key: store_info(str(stores / f"{key}.zarr")) for key in ("hsk-1-3-0.25", "hsk-1-3-0.25+value_format=int4")}
    for key, info in infos.items():   # the row's bytes are the store's stored HSK per example
        assert summary[key]["hsk_bytes_per_example"] == round(info["bytes_per_example"]["hsk"], 1) > 0
    # (40 examples: the int4 codes are smaller, while a scales array's fixed per-chunk bytes still show)
    assert infos["hsk-1-3-0.25+value_format=int4"]["bytes"]["values"] < infos["hsk-1-3-0.25"]["bytes"]["values"]
    with open(out / "results.csv") as handle:
        assert all(float(row["hsk_bytes_per_example"]) > 0 for row in csv.DictReader(handle))
