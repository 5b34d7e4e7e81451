"""CLI conventions: -h, fast --help without torch, --quiet, --json, --overwrite, Ctrl-C exits 130 and resumes,
--device checked before any work."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hskstore.cli import cli

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = sorted(cli.commands)


def _run(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env=env)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_dash_h_is_help(command):
    result = _run(*([command] if command else []), "-h")
    assert result.exit_code == 0 and "Usage:" in result.output


def test_help_imports_neither_torch_nor_transformers_and_is_fast():
    code = ("import sys, time; t = time.perf_counter(); from hskstore.cli import cli\n"
            "for args in (['--help'], ['train', '--help'], ['export', '-h']):\n"
            "    try: cli(args, prog_name='hskstore')\n"
            "    except SystemExit: pass\n"
            "print(time.perf_counter() - t, 'torch' in sys.modules, 'transformers' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    seconds, torch_loaded, transformers_loaded = done.stderr.split()
    assert (torch_loaded, transformers_loaded) == ("False", "False")
    assert float(seconds) < 0.5  # import and three help screens, after the interpreter's own start-up


@pytest.mark.integration
def test_quiet_and_tqdm_disable_silence_progress_bars(tiny_teacher, tmp_path):
    args = ["extract", "--teacher", tiny_teacher, "--task", "tweets", "--limit", 16, "--student-layers", 2,
            "--depth", 1, "--length", 4, "--width", 4, "--device", "cpu"]
    loud = _run(*args, "--output", tmp_path / "a.zarr")
    assert loud.exit_code == 0 and "extract:" in loud.output  # tqdm's bar on stderr
    quiet = _run(*args, "--output", tmp_path / "b.zarr", "--quiet", "--json")
    assert quiet.exit_code == 0 and "extract:" not in quiet.output
    assert json.loads(quiet.stdout)["info"]["examples"] == {"train": 16, "validation": 4}
    env_quiet = _run(*args, "--output", tmp_path / "c.zarr", env={"TQDM_DISABLE": "1"})
    assert env_quiet.exit_code == 0 and "extract:" not in env_quiet.output


def test_student_refuses_to_overwrite_a_teacher(tiny_store, tiny_teacher, tmp_path):
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, teacher)
    before = (teacher / "model.safetensors").read_bytes()
    sizes = ["--layers", 2, "--hidden", 16, "--heads", 2, "--ffn", 32]
    args = ["student", "bert", "--store", tiny_store, "--output", teacher, *sizes]
    refused = _run(*args)
    assert refused.exit_code == 2 and "exists and is not empty: pass --overwrite" in refused.output
    forced = _run(*args, "--overwrite")
    assert forced.exit_code == 2 and "does not hold a student" in forced.output
    assert (teacher / "model.safetensors").read_bytes() == before and not (teacher / "student.json").exists()
    built = _run("student", "bert", "--store", tiny_store, "--output", tmp_path / "s", *sizes, "--json")
    assert built.exit_code == 0 and json.loads(built.output)["kind"] == "bert"
    again = _run("student", "bert", "--store", tiny_store, "--output", tmp_path / "s", *sizes, "--overwrite")
    assert again.exit_code == 0, again.output


def test_train_refuses_a_non_empty_output_that_is_no_run(tiny_store, tiny_student, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep")
    result = _run("train", tiny_store, "--student", tiny_student, "--output", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 2 and "pass --overwrite" in result.output


def test_ctrl_c_exits_130_and_the_same_command_resumes(tiny_store, tiny_student, tmp_path, monkeypatch):
    from hskstore import train as train_module

    args = ["train", tiny_store, "--student", tiny_student, "--output", tmp_path / "run", "--max-steps", 2,
            "--hsk-epochs", 1, "--pred-epochs", 1, "--device", "cpu", "--quiet"]
    real = train_module.Trainer._run_stage

    def interrupted(self, stage, state):
        if stage == "pred":
            raise KeyboardInterrupt
        return real(self, stage, state)

    monkeypatch.setattr(train_module.Trainer, "_run_stage", interrupted)
    stopped = _run(*args)
    assert stopped.exit_code == 130 and "interrupted: rerun the same command to resume" in stopped.output
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["stages_done"] == ["hsk"]
    monkeypatch.setattr(train_module.Trainer, "_run_stage", real)
    resumed = _run(*args, "--json")
    assert resumed.exit_code == 0, resumed.output
    assert [h["stage"] for h in json.loads(resumed.output)["history"]] == ["hsk", "pred"]


def test_device_is_checked_before_any_work(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = _run("train", tmp_path / "missing.zarr", "--student", tmp_path, "--output", tmp_path / "r",
                  "--device", "cuda")
    assert result.exit_code == 2 and "CUDA is not available" in result.output and "missing.zarr" not in result.output
    typo = _run("evaluate", tmp_path, "--device", "gpu")
    assert typo.exit_code == 2 and "unknown device 'gpu'" in typo.output


@pytest.mark.integration
def test_finetune_interrupted_after_an_epoch_resumes_to_the_same_teacher(tiny_bert_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import hskstore.stages.finetune as finetune_module

    args = ["finetune", "--model", tiny_bert_dir, "--task", "tweets", "--limit", 48, "--epochs", 2,
            "--max-length", 16, "--batch-size", 16, "--device", "cpu", "--quiet", "--json"]
    straight = _run(*args, "--output", tmp_path / "straight")
    assert straight.exit_code == 0, straight.output

    real, calls = finetune_module.evaluate, []

    def stop_in_epoch_two(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(finetune_module, "evaluate", stop_in_epoch_two)
    stopped = _run(*args, "--output", tmp_path / "resumed")
    assert stopped.exit_code == 130
    assert json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())["epoch"] == 1
    monkeypatch.setattr(finetune_module, "evaluate", real)
    resumed = _run(*args, "--output", tmp_path / "resumed")
    assert resumed.exit_code == 0, resumed.output
    assert not (tmp_path / "resumed" / "checkpoint").exists()
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("straight", "resumed"))
    assert all((a[k] == b[k]).all() for k in a)  # the resumed run is the uninterrupted run
    history = [json.loads((tmp_path / d / "hskstore_teacher.json").read_text())["history"]
               for d in ("straight", "resumed")]
    assert [h["accuracy"] for h in history[0]] == [h["accuracy"] for h in history[1]]
    refused = _run(*args, "--output", tmp_path / "resumed")
    assert refused.exit_code == 2 and "pass --overwrite" in refused.output


@pytest.mark.integration
def test_ctrl_c_during_extract_keeps_finished_chunks_and_the_rerun_completes(tiny_teacher, tmp_path, monkeypatch):
    import hskstore.stages.extract as extract_module
    from hskstore.store import open_store

    args = ["extract", "--teacher", tiny_teacher, "--task", "tweets", "--limit", 64, "--chunk-rows", 16,
            "--student-layers", 2, "--depth", 1, "--length", 4, "--width", 4, "--device", "cpu", "--quiet",
            "--output", tmp_path / "s.zarr"]
    real, calls = extract_module._teacher_chunk, []

    def stop_at_the_third_chunk(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(extract_module, "_teacher_chunk", stop_at_the_third_chunk)
    stopped = _run(*args)
    assert stopped.exit_code == 130 and "interrupted" in stopped.output
    monkeypatch.setattr(extract_module, "_teacher_chunk", real)
    resumed = _run(*args, "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["examples_extracted"] == 64 + 16 - 2 * 16  # two chunks were kept
    assert open_store(tmp_path / "s.zarr").attrs["complete"] is True
