"""Registries that carry behaviour: a new width strategy or student architecture is one registry entry.

The entries below are registered from this file only. Extraction, the store layout, slicing and training
pick a width strategy up through the properties it declares (a per-vector mask, masks that nest, how to
re-rank); building, saving, loading and training pick a student architecture up through its entry.
"""

import numpy as np
import pytest
import torch

from hskstore.errors import ConfigError, ModelError, StoreError
from hskstore.method.compression import Compression
from hskstore.method.strategies import WIDTH, WidthStrategy, width_choices
from hskstore.models.architectures import STUDENTS, StudentArchitecture, student_kinds
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


# ---------------------------------------------------------------------------------------- student architectures

class _Averaging(torch.nn.Module):
    """A toy student: an embedding, then per layer a tanh(linear) of the running states; [CLS] classifies."""

    kind = "averaging"

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        self.embed = torch.nn.Embedding(config["vocab_size"], config["hidden_size"])
        self.layers = torch.nn.ModuleList(torch.nn.Linear(config["hidden_size"], config["hidden_size"])
                                          for _ in range(config["num_layers"]))
        self.head = torch.nn.Linear(config["hidden_size"], config["num_labels"])

    num_layers = property(lambda self: self.config["num_layers"])
    hidden_size = property(lambda self: self.config["hidden_size"])
    vocab_size = property(lambda self: self.config["vocab_size"])
    num_labels = property(lambda self: self.config["num_labels"])

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        from hskstore.models.student import StudentOutput

        states = [self.embed(input_ids)]
        for layer in self.layers:
            states.append(torch.tanh(layer(states[-1])))
        return StudentOutput(tuple(states), self.head(states[-1][:, 0]))


def _build_averaging(inputs):
    torch.manual_seed(inputs.seed)
    return _Averaging(dict(vocab_size=inputs.vocab_size, num_labels=inputs.num_labels,
                           num_layers=inputs.size("num_layers", 2), hidden_size=inputs.size("hidden_size", 8))).eval()


AVERAGING = StudentArchitecture(
    "averaging", build=_build_averaging, from_config=_Averaging, config_of=lambda student: student.config,
    shape=lambda student: (None, None, None), requires="an averaging student needs --store")


def test_a_student_architecture_registered_from_a_test_is_built_saved_loaded_and_trained(
        tiny_store, tmp_path, monkeypatch):
    from hskstore.experiments.demo import build_student
    from hskstore.models.student import load_student
    from hskstore.stages.train import TrainConfig, Trainer

    monkeypatch.setitem(STUDENTS, "averaging", AVERAGING)                # register
    with pytest.raises(ModelError, match="an averaging student needs --store"):
        build_student("averaging", tmp_path / "none")
    summary = build_student("averaging", tmp_path / "student", store=tiny_store, hidden_size=12, progress=False)
    assert (summary["kind"], summary["layers"], summary["hidden"], summary["num_labels"]) == ("averaging", 2, 12, 3)
    loaded = load_student(tmp_path / "student")
    assert isinstance(loaded, _Averaging) and loaded.config == {"vocab_size": 30522, "num_labels": 3,
                                                                "num_layers": 2, "hidden_size": 12}
    trainer = Trainer(TrainConfig(store=tiny_store, student=str(tmp_path / "student"), output=str(tmp_path / "run"),
                                  stages=("hsk",), hsk_epochs=1, hsk_batch_size=16, max_steps=2, device="cpu"),
                      progress=False)
    trainer.train()
    assert np.isfinite(trainer.history[0]["step_losses"]).all()

    monkeypatch.undo()                                                   # unregister
    assert "averaging" not in student_kinds()
    with pytest.raises(ModelError, match="has kind 'averaging', expected 'rosita' or 'bert'"):
        load_student(tmp_path / "student")
