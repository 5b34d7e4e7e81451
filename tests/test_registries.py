"""Registries that carry behaviour: a new width strategy is one registry entry, nothing else.

The strategy below is registered from this file only; extraction, the store layout, slicing and training
pick it up through the properties it declares (a per-vector mask, masks that nest, how to re-rank).
"""

import numpy as np
import pytest
import torch

from hskstore.errors import ConfigError, StoreError
from hskstore.method.compression import Compression
from hskstore.method.strategies import WIDTH, WidthStrategy, width_choices
from hskstore.store import open_store
from hskstore.store.slicing import slice_store


def _largest_first(stored: torch.Tensor) -> torch.Tensor:
    """The largest signed values first (not magnitudes), ties to the lower dimension."""
    return stored.float().sort(dim=-1, descending=True, stable=True).indices


LARGEST = WidthStrategy("largest", per_vector=True, nests=True, order=_largest_first,
                        description="the k largest h of each vector")
SHUFFLED = WidthStrategy("shuffled", per_vector=True, nests=False, order=lambda stored: _largest_first(-stored),
                         description="declared not to nest")


def _extract(teacher, path, width, strategy):
    from hskstore.stages.extract import ExtractConfig, extract

    extract(ExtractConfig(teacher=teacher, task="tweets", output=str(path), limit=40, chunk_rows=32,
                          compression=Compression(depth=1, length=4, width=width, student_layers=2,
                                                  width_strategy=strategy)), progress=False)
    return str(path)


def _arrays(path):
    with open_store(path) as store:
        return {split: store.split(split).read_rows(0, store.split(split).num_examples) for split in store.attrs["splits"]}


def test_a_per_vector_width_strategy_registered_from_a_test_extracts_slices_and_trains(
        tiny_teacher, tiny_student, tmp_path, monkeypatch):
    from hskstore.stages.train import TrainConfig, Trainer

    monkeypatch.setitem(WIDTH, "largest", LARGEST)                       # register
    every = _extract(tiny_teacher, tmp_path / "every.zarr", None, "largest")
    eight = _extract(tiny_teacher, tmp_path / "eight.zarr", 8, "largest")
    three = _extract(tiny_teacher, tmp_path / "three.zarr", 3, "largest")
    slice_store(eight, str(tmp_path / "from-eight.zarr"), width=3)
    slice_store(every, str(tmp_path / "from-every.zarr"), width=3)

    extracted = _arrays(three)
    assert set(extracted["train"]) >= {"values", "masks"}                # a mask per vector, as declared
    full = _arrays(every)["train"]["values"].astype(np.float32)          # (N, 1, 4, 32): every activation
    bits = np.unpackbits(extracted["train"]["masks"], axis=-1, count=32, bitorder="little").astype(bool)
    filled = extracted["train"]["positions"] >= 0
    threshold = np.sort(full, axis=-1)[..., -3:-2]                       # each vector's third largest value
    assert (full[bits] >= np.broadcast_to(threshold, full.shape)[bits]).all() and (bits.sum(-1)[filled] == 3).all()
    for sliced in ("from-eight.zarr", "from-every.zarr"):                # slicing gives what extraction gives
        for split, arrays in _arrays(str(tmp_path / sliced)).items():
            for name in ("positions", "values", "masks"):
                np.testing.assert_array_equal(arrays[name], extracted[split][name])

    trainer = Trainer(TrainConfig(store=str(tmp_path / "from-eight.zarr"), student=tiny_student,
                                  output=str(tmp_path / "run"), stages=("hsk",), hsk_epochs=1, hsk_batch_size=16,
                                  max_steps=2, device="cpu"), progress=False)
    trainer.train()
    assert np.isfinite(trainer.history[0]["step_losses"]).all() and trainer.history[0]["step_losses"][0] > 0

    monkeypatch.undo()                                                   # unregister
    assert "largest" not in width_choices()
    with pytest.raises(ConfigError, match="width_strategy must be one of"):
        Compression(width_strategy="largest")


def test_a_per_vector_strategy_that_does_not_nest_is_not_sliced_to_a_smaller_width(tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.setitem(WIDTH, "shuffled", SHUFFLED)
    store = _extract(tiny_teacher, tmp_path / "eight.zarr", 8, "shuffled")
    with pytest.raises(StoreError, match="'shuffled' does not nest"):
        slice_store(store, str(tmp_path / "three.zarr"), width=3)
    slice_store(store, str(tmp_path / "shorter.zarr"), length=2)         # other dimensions still slice
