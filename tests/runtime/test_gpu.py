"""CUDA paths against a CPU reference, with a briefly fine-tuned real BERT (MiniLM, d = 384).

A random tiny teacher has small, smooth activations that float16 reproduces almost exactly; a
fine-tuned teacher has the outlier dimensions and sharp attention where float16 differs. The
reference is extracted with device="cpu" explicitly (on a CUDA machine "auto" would pick the GPU),
with the same token budget, so the two stores differ only by the device and its precision.
Runs unchanged wherever CUDA exists; skipped elsewhere.
"""

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.integration,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

LIMIT, TOKENS = 256, 4096


@pytest.fixture(scope="module")
def tuned_teacher(tmp_path_factory):
    from conftest import minilm_path

    from hskstore.stages.finetune import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("tuned_minilm")
    finetune(FinetuneConfig(model=minilm_path(), task="tweets", output=str(out), max_length=64, epochs=1,
                            batch_size=32, limit=1024, device="cuda"), progress=False)
    return str(out)


@pytest.fixture(scope="module")
def stores(tuned_teacher, tmp_path_factory):
    from hskstore.method.compression import Compression
    from hskstore.stages.extract import ExtractConfig, extract

    root = tmp_path_factory.mktemp("gpu_stores")
    out = {}
    for device in ("cpu", "cuda"):
        out[device] = str(root / f"{device}.zarr")
        extract(ExtractConfig(teacher=tuned_teacher, task="tweets", output=out[device], limit=LIMIT, chunk_rows=128,
                              batch_tokens=TOKENS, device=device,
                              compression=Compression(depth=2, length=9, width=0.1, student_layers=3)),
                progress=False)
    return out


def test_the_stores_record_where_and_how_they_were_made(stores):
    from hskstore.store import open_store

    cpu, gpu = open_store(stores["cpu"]).attrs, open_store(stores["cuda"]).attrs
    assert cpu["device"] == "cpu" and cpu["precision"] == "fp32"
    assert gpu["device"].startswith("cuda:0 (") and gpu["precision"] == "fp16-autocast"


def test_cuda_extraction_matches_the_cpu_reference_within_float16_error(stores):
    from hskstore.method.select import densify, unpack_bits
    from hskstore.store import open_store

    cpu, gpu = (open_store(stores[d]).split("train") for d in ("cpu", "cuda"))
    a, b = cpu.read_rows(0, len(cpu)), gpu.read_rows(0, len(gpu))
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    np.testing.assert_allclose(b["logits"], a["logits"], atol=2e-2, rtol=0)
    assert (a["logits"].argmax(1) == b["logits"].argmax(1)).mean() >= 0.99
    # float16 may swap near-ties among tokens and activations; almost every choice agrees.
    assert (a["positions"] == b["positions"]).mean() >= 0.97
    assert (a["masks"] == b["masks"]).mean() >= 0.97
    # Where a slot holds the same token, its full-width vectors agree to float16 precision.
    same = a["positions"] == b["positions"]                                      # (N, D, n)
    d = 384
    full = [densify(torch.from_numpy(x["values"]).float(), unpack_bits(torch.from_numpy(x["masks"]), d)).numpy()
            for x in (a, b)]
    scale = np.abs(full[0][same]).max(-1, keepdims=True)                         # per vector
    kept = unpack_bits(torch.from_numpy(a["masks"]), d).numpy() & unpack_bits(torch.from_numpy(b["masks"]), d).numpy()
    err = np.abs(full[0] - full[1])[same] / np.maximum(scale, 1e-6)
    assert np.quantile(err[kept[same]], 0.999) <= 1e-2


def without_dropout(student) -> str:
    """The student with dropout off: CPU and CUDA draw different random numbers, so with dropout on
    their losses would differ by the masks drawn, not by the precision."""
    import json
    from pathlib import Path

    meta_file = Path(student) / "student.json"
    meta = json.loads(meta_file.read_text())
    for key in ("dropout", "hidden_dropout_prob", "attention_probs_dropout_prob"):  # ROSITA's, BERT's
        if key in meta["config"]:
            meta["config"][key] = 0.0
    meta_file.write_text(json.dumps(meta))
    return str(student)


def test_cuda_training_uses_the_devices_precision_and_follows_the_cpu_losses(stores, tuned_teacher, tmp_path):
    from hskstore.runtime.device import training_precision
    from hskstore.experiments.demo import build_student
    from hskstore.stages.train import TrainConfig, Trainer

    student = tmp_path / "student"
    build_student("rosita", student, teacher=tuned_teacher, store=stores["cpu"], device="cuda", progress=False)
    without_dropout(student)
    expected = training_precision("cuda", torch.cuda.get_device_capability(0)).name
    losses = {}
    for device in ("cpu", "cuda"):
        trainer = Trainer(TrainConfig(store=stores["cpu"], student=str(student), output=str(tmp_path / device),
                                      stages=("hsk",), hsk_epochs=1, max_steps=5, device=device), progress=False)
        result = trainer.train()
        assert result["precision"] == (expected if device == "cuda" else "fp32")
        losses[device] = trainer.history[0]["step_losses"]
    assert np.isfinite(losses["cuda"]).all()
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=3e-2)  # bf16/fp16 autocast vs fp32


def test_online_training_runs_on_cuda(stores, tuned_teacher, tmp_path):
    from hskstore.experiments.demo import build_student
    from hskstore.stages.train import TrainConfig, Trainer

    student = tmp_path / "student"
    build_student("rosita", student, teacher=tuned_teacher, store=stores["cuda"], device="cuda", progress=False)
    trainer = Trainer(TrainConfig(store=stores["cuda"], student=str(student), output=str(tmp_path / "run"),
                                  teacher=tuned_teacher, device="cuda", max_steps=3, hsk_epochs=1, pred_epochs=1),
                      progress=False)
    result = trainer.train()
    assert np.isfinite([h["loss"] for h in result["history"]]).all()
