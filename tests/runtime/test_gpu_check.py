"""benchmarks/gpu.py, the GPU check that lives in the repo, run in its --dry-run: the CPU at a tiny size.

On a CUDA machine the same script runs the GPU tests, compares a CUDA store with a CPU one and times
extraction and training; here the dry run checks that every step of it runs and reports.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
           TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))


@pytest.mark.slow
@pytest.mark.integration
def test_the_dry_run_goes_through_every_step_of_the_gpu_check_and_writes_its_report(tmp_path):
    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--output", str(out)], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["ok"] and report["device"] == "cpu"
    assert report["training_precision"] == report["inference_precision"] == "fp32"
    tests = report["tests"]  # the dry run collects the GPU tests, it does not run them
    assert tests["returncode"] == 0 and "tests/runtime/test_gpu.py" in tests["command"]
    assert tests["counts"]["collected"] >= 4
    # The CPU against itself: every compared row is found and agrees exactly.
    comparison = report["comparison"]
    assert comparison["rows_compared"] == report["sizes"]["compare_rows"] and comparison["rows_unmatched"] == 0
    assert comparison["positions_equal"] == comparison["masks_equal"] == comparison["argmax_equal"] == 1.0
    assert comparison["value_error_max"] == 0.0 and comparison["logits_max_abs_error"] == 0.0
    extraction, training = report["extraction"], report["training"]
    assert extraction["median_extract"] > 0 and extraction["median_plain"] > 0 and extraction["extract_over_plain"] > 0
    assert set(training["median_seconds_per_step"]) == {"student_only", "offline", "online"}
    assert training["online_over_offline"] > 0
    assert set(report["phases_seconds"]) == {"gpu tests", "extract and compare", "plain inference", "training steps"}
    assert "saved " + str(out) in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here: the check would run")
def test_without_cuda_the_check_says_so_in_one_line_and_points_to_the_dry_run():
    result = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: no CUDA device here: run this on a GPU machine, or pass --dry-run to "
                                     "check the script")


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_comparison_passes_the_same_teachers_rows_and_fails_another_teachers(tiny_store, tmp_path):
    """What the check compares, on stores whose answer is known: a nested subset extracted by the same
    teacher agrees exactly; one extracted by another teacher (same shapes, other weights) does not."""
    from conftest import save_tiny_teacher

    from hskstore.method.compression import Compression
    from hskstore.stages.extract import ExtractConfig, extract

    check = _gpu_check()
    made = {}
    for seed in (0, 1):  # seed 0 is tiny_store's teacher
        teacher = save_tiny_teacher(tmp_path / f"teacher{seed}", seed=seed)
        made[seed] = str(tmp_path / f"subset{seed}.zarr")
        extract(ExtractConfig(teacher=teacher, task="tweets", output=made[seed], limit=40, chunk_rows=32,
                              splits=("train",),
                              compression=Compression(depth=2, length=5, width=0.25, student_layers=2)),
                progress=False)
    same = check.compare_stores(tiny_store, made[0])
    assert same["ok"] and same["rows_compared"] == 40 and same["rows_unmatched"] == 0
    assert same["positions_equal"] == same["masks_equal"] == 1.0 and same["value_error_max"] == 0.0
    other = check.compare_stores(tiny_store, made[1])
    assert not other["ok"] and other["rows_compared"] == 40
    assert other["value_error_q999"] > check.MAX_VALUE_ERROR
