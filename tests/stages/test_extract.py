"""Extraction: what a store holds, read back with plain zarr, resumption, and one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from hskstore.method.compression import Compression
from hskstore.errors import ConfigError, DataError, ModelError, StoreError
from hskstore.stages.extract import ExtractConfig, extract
from hskstore.store import StoreWriter, open_store

LIMIT = 120  # 120 train + 30 validation tweets


def _config(teacher, output, **kwargs):
    kwargs.setdefault("compression", Compression(depth=2, length=5, width=0.25, student_layers=2))
    return ExtractConfig(teacher=teacher, task="tweets", output=str(output), limit=LIMIT, chunk_rows=32, **kwargs)


@pytest.fixture
def store(tiny_store):
    """The session's tiny store: what `_config(tiny_teacher, ...)` extracts (read only here)."""
    return Path(tiny_store)


def _teacher_forward(teacher_dir, ids, token_types, length):
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(teacher_dir, attn_implementation="eager").eval()
    ids = torch.from_numpy(ids[:length].astype(np.int64))[None]
    types = torch.from_numpy(token_types[:length].astype(np.int64))[None]
    with torch.no_grad():
        return model(input_ids=ids, token_type_ids=types, output_hidden_states=True, output_attentions=True)


def test_plain_zarr_reconstructs_a_teacher_vectors_kept_entries(store, tiny_teacher):
    group = zarr.open_group(str(store), mode="r")
    attrs = group.attrs.asdict()
    assert attrs["format"] == "hskstore" and attrs["complete"] is True
    d = attrs["teacher"]["hidden_size"]
    layers = attrs["resolved"]["teacher_layer_ids"]
    row = 3
    train = group["train"]
    length = int(train["lengths"][row])
    out = _teacher_forward(tiny_teacher, train["input_ids"][row], train["token_type_ids"][row], length)
    for slot_layer, teacher_layer in enumerate(layers):
        for slot in range(attrs["resolved"]["length"]):
            position = int(train["positions"][row, slot_layer, slot])
            if position < 0:
                continue
            mask = np.unpackbits(train["masks"][row, slot_layer, slot], count=d, bitorder="little").astype(bool)
            vector = out.hidden_states[teacher_layer][0, position].numpy()
            np.testing.assert_allclose(train["values"][row, slot_layer, slot].astype(np.float32), vector[mask],
                                       rtol=1e-3, atol=1e-3)
            # The kept entries are the vector's own top-k by magnitude.
            assert np.abs(vector[mask]).min() >= np.abs(vector[~mask]).max() - 1e-3
    np.testing.assert_allclose(train["logits"][row], out.logits[0].numpy(), rtol=1e-4, atol=1e-4)


def test_positions_rank_tokens_by_the_cls_attention_row_without_sep(store, tiny_teacher):
    group = zarr.open_group(str(store), mode="r")
    resolved = group.attrs["resolved"]
    train = group["train"]
    row = 5
    length = int(train["lengths"][row])
    ids = train["input_ids"][row][:length]
    out = _teacher_forward(tiny_teacher, train["input_ids"][row], train["token_type_ids"][row], length)
    for slot_layer, score_layer in enumerate(resolved["score_layer_ids"]):
        scores = out.attentions[score_layer][0, :, 0, :].mean(0).numpy()
        scores[ids == 102] = -np.inf
        expected = np.argsort(-scores, kind="stable")[: resolved["length"]]
        assert train["positions"][row, slot_layer].tolist() == expected.tolist()


def test_store_layout_is_the_documented_one(store):
    group = zarr.open_group(str(store), mode="r")
    train = group["train"]
    expected = {
        "input_ids": ("uint16", (120, 32)),
        "token_type_ids": ("uint8", (120, 32)),
        "lengths": ("int16", (120,)),
        "labels": ("int64", (120,)),
        "logits": ("float32", (120, 3)),
        "positions": ("int16", (120, 2, 5)),
        "values": ("float16", (120, 2, 5, 8)),
        "masks": ("uint8", (120, 2, 5, 4)),
    }
    arrays = {name: (str(train[name].dtype), train[name].shape) for name in train.array_keys()}
    assert arrays == expected | {"chunks_written": ("uint8", (4,))}   # one record per 32-row chunk
    assert all(train[name].chunks[0] == 32 for name in expected)
    assert train["chunks_written"][:].tolist() == [1, 1, 1, 1]
    assert group["validation"].attrs["num_examples"] == 30
    assert "tokenizer.json" in list(group["tokenizer"].array_keys())


def test_store_records_config_teacher_task_and_tokenizer(store, tiny_teacher):
    attrs = open_store(store).attrs
    assert attrs["compression"]["length_strategy"] == "att-nosep"
    assert attrs["resolved"]["teacher_layer_ids"] == [2, 3]
    assert attrs["teacher"]["num_layers"] == 4 and attrs["teacher"]["path"] == tiny_teacher
    assert attrs["task"]["name"] == "tweets" and attrs["label_names"] == ["negative", "neutral", "positive"]
    assert attrs["created_by"].startswith("hskstore ")
    assert attrs["codecs"]["values"].startswith("blosc")


def test_labels_and_tokens_match_the_task(store):
    from hskstore.data.tasks import load_task

    task = load_task("tweets", limit=LIMIT)
    group = zarr.open_group(str(store), mode="r")
    assert group["train"]["labels"][:].tolist() == task.split("train")["sentiment"]


def test_an_interrupted_extraction_resumes_to_the_same_store(tiny_teacher, store, tmp_path, monkeypatch):
    path = tmp_path / "resumed.zarr"
    original = StoreWriter.write_chunk
    calls = {"n": 0}

    def crash_on_third_chunk(self, split, index, arrays):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        original(self, split, index, arrays)

    monkeypatch.setattr(StoreWriter, "write_chunk", crash_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        extract(_config(tiny_teacher, path), progress=False)
    with pytest.raises(StoreError, match="incomplete"):
        open_store(path)
    monkeypatch.setattr(StoreWriter, "write_chunk", original)
    extract(_config(tiny_teacher, path), progress=False)
    resumed, reference = zarr.open_group(str(path), mode="r"), zarr.open_group(str(store), mode="r")
    for split in ("train", "validation"):
        for name in reference[split].array_keys():
            np.testing.assert_array_equal(resumed[split][name][:], reference[split][name][:], err_msg=name)


def test_a_complete_store_is_not_overwritten_without_overwrite(tiny_teacher, store):
    with pytest.raises(StoreError, match="--overwrite"):
        extract(_config(tiny_teacher, store), progress=False)


@pytest.mark.integration
def test_a_different_config_cannot_resume_a_partial_store(tiny_teacher, tmp_path, monkeypatch):
    path = tmp_path / "partial.zarr"
    monkeypatch.setattr(StoreWriter, "write_chunk", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        extract(_config(tiny_teacher, path), progress=False)
    other = Compression(depth=2, length=4, width=0.25, student_layers=2)
    with pytest.raises(StoreError, match="different run.*length"):
        extract(_config(tiny_teacher, path, compression=other), progress=False)


@pytest.mark.integration
def test_static_width_masks_are_stored_once(tiny_teacher, tmp_path):
    path = tmp_path / "uniform.zarr"
    compression = Compression(depth=1, length=3, width=8, student_layers=2, width_strategy="uniform")
    extract(_config(tiny_teacher, path, compression=compression), progress=False)
    opened = open_store(path)
    assert "masks" not in opened.split("train").array_names
    assert opened.static_mask().nonzero()[0].tolist() == [0, 4, 8, 12, 16, 20, 24, 28]


@pytest.mark.integration
def test_full_hsk_keeps_every_token_and_activation_without_masks(tiny_teacher, tmp_path):
    path = tmp_path / "full.zarr"
    extract(_config(tiny_teacher, path, compression=Compression.full(student_layers=2)), progress=False)
    train = open_store(path).split("train")
    data = train.read_chunk(0)
    assert "masks" not in data and data["values"].shape[1:] == (3, 32, 32)
    lengths = data["lengths"]
    assert ((data["positions"][:, 0] >= 0).sum(1) == lengths).all()
    from hskstore.store.report import store_info

    assert store_info(path)["fraction_of_full"] == pytest.approx(1.0)  # padding is not knowledge


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(length=40), ConfigError, "larger than the max sequence length 32"),
        (dict(width=64), ConfigError, "larger than the teacher's hidden size d=32"),
        (dict(depth=4), ConfigError, "depth N^D must be in 1..L'+1"),
    ],
)
def test_impossible_triples_fail_before_anything_is_written(tiny_teacher, tmp_path, kwargs, error, message):
    with pytest.raises(error) as info:
        compression = Compression(student_layers=2, **kwargs)
        extract(_config(tiny_teacher, tmp_path / "s.zarr", compression=compression), progress=False)
    assert message in str(info.value)
    assert not (tmp_path / "s.zarr").exists()


def test_a_non_bert_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelError, match="'gpt2' model; hskstore distils BERT-family"):
        extract(ExtractConfig(teacher=str(tmp_path), task="tweets", output=str(tmp_path / "s.zarr")), progress=False)


def test_unknown_tasks_and_columns_are_named(tiny_teacher, tmp_path):
    with pytest.raises(DataError, match="unknown task 'sst3'"):
        extract(ExtractConfig(teacher=tiny_teacher, task="sst3", output=str(tmp_path / "s.zarr")), progress=False)
    table = tmp_path / "data.csv"
    table.write_text("sentence,label\nhello there,0\nbye now,1\n" * 10)
    with pytest.raises(DataError, match="text"):
        extract(ExtractConfig(teacher=tiny_teacher, task=str(table), output=str(tmp_path / "s.zarr")), progress=False)


@pytest.mark.integration
def test_a_teacher_with_another_label_count_is_refused(tmp_path):
    from conftest import save_tiny_teacher

    two = save_tiny_teacher(tmp_path / "two", num_labels=2)
    with pytest.raises(ConfigError, match="predicts 2 labels but task 'tweets' has 3"):
        extract(_config(two, tmp_path / "s.zarr"), progress=False)


@pytest.mark.integration
def test_info_describes_a_partial_store_from_its_written_chunks_only(tiny_teacher, tmp_path, monkeypatch):
    from hskstore.store.report import store_info

    path = tmp_path / "partial.zarr"
    original = StoreWriter.write_chunk
    calls = {"n": 0}

    def stop_after_two(self, split, index, arrays):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        original(self, split, index, arrays)

    monkeypatch.setattr(StoreWriter, "write_chunk", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        extract(_config(tiny_teacher, path), progress=False)
    info = store_info(path, allow_incomplete=True)
    assert info["complete"] is False
    assert 10 < info["mean_tokens"] < 32  # tweets, not diluted by unwritten zero-length rows
    partial = open_store(path, allow_incomplete=True).split("train")
    assert partial.read_rows(0, 32, ["positions"])["positions"].shape == (32, 2, 5)   # written: readable
    with pytest.raises(StoreError, match="chunk 3 of split 'train' has not been written yet"):
        partial.read_rows(100, 120, ["positions"])                                   # never fill values


def test_mantissa_rounding_zeroes_low_bits_within_its_error_bound(tiny_teacher, store, tmp_path):
    rounded_path = tmp_path / "bits7.zarr"
    compression = Compression(depth=2, length=5, width=0.25, student_layers=2, value_bits=7)
    extract(_config(tiny_teacher, rounded_path, compression=compression), progress=False)
    exact_chunk = open_store(store).split("train").read_chunk(0)
    rounded_chunk = open_store(rounded_path).split("train").read_chunk(0)
    exact, rounded = exact_chunk["values"], rounded_chunk["values"]
    assert (rounded.view(np.uint16) & 0b111 == 0).all()
    # Ranking uses the rounded magnitudes, so a near-tie can keep another dimension: compare same-mask vectors.
    same_dims = (exact_chunk["masks"] == rounded_chunk["masks"]).all(-1, keepdims=True)
    assert same_dims.mean() > 0.9
    normal = (np.abs(exact) > 1e-3) & same_dims
    error = np.abs(rounded.astype(np.float32) - exact.astype(np.float32))[normal] / np.abs(exact[normal].astype(np.float32))
    assert 0 < error.max() <= 2 ** -8


def test_mantissa_bits_need_float16_values():
    with pytest.raises(ConfigError, match="value_bits rounds float16 mantissas"):
        Compression(value_bits=7, value_dtype="float32")


@pytest.mark.integration
def test_a_store_interrupted_while_its_layout_was_created_is_made_anew(tiny_teacher, tmp_path, monkeypatch):
    path = tmp_path / "half.zarr"
    zarr.open_group(str(path), mode="w").attrs.update({"format": "hskstore", "format_version": 1,
                                                        "complete": False})
    extract(_config(tiny_teacher, path), progress=False)  # no layout_complete: recreated, not "resumed"
    opened = open_store(path)
    assert opened.complete and "tokenizer.json" in opened.tokenizer_files()


@pytest.mark.integration
def test_a_teacher_without_a_fine_tuned_classifier_is_refused(tmp_path):
    from conftest import minilm_path

    with pytest.raises(ModelError, match="no fine-tuned classifier"):
        extract(ExtractConfig(teacher=minilm_path(), task="tweets", output=str(tmp_path / "s.zarr"), limit=10),
                progress=False)


@pytest.mark.integration
def test_a_teacher_error_is_raised_even_when_the_writer_failed_too(tiny_teacher, tmp_path, monkeypatch):
    import importlib

    extraction = importlib.import_module("hskstore.stages.extract")  # the module (hskstore.stages.extract is also a function)
    teacher_chunk, calls = extraction._teacher_chunk, {"n": 0}

    def out_of_memory_on_second_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return teacher_chunk(*args, **kwargs)

    def disk_full(self, split, index, arrays):
        raise OSError("No space left on device (simulated)")

    monkeypatch.setattr(extraction, "_teacher_chunk", out_of_memory_on_second_chunk)
    monkeypatch.setattr(StoreWriter, "write_chunk", disk_full)
    with pytest.raises(RuntimeError, match="out of memory") as raised:
        extract(_config(tiny_teacher, tmp_path / "s.zarr"), progress=False)
    assert any("No space left on device" in note for note in getattr(raised.value, "__notes__", []))


def test_token_budgets_give_short_texts_large_batches_and_long_texts_small_ones():
    from hskstore.stages.extract import batch_bounds

    lengths = np.array([64, 64, 60, 30, 30, 30, 30, 10, 10, 10, 10, 10])  # sorted longest first
    bounds = batch_bounds(lengths, None, 128)
    assert bounds == [(0, 2), (2, 4), (4, 8), (8, 12)]        # 128 // 64 = 2 rows, then 2, 4 and 4 (of 12)
    assert all(max(lengths[a:b]) * (b - a) <= 128 for a, b in bounds)
    assert batch_bounds(lengths, 5, 128) == [(0, 5), (5, 10), (10, 12)]   # a fixed row count wins
    assert batch_bounds(np.array([512]), None, 100) == [(0, 1)]            # one row at least


def test_only_the_stored_layers_are_kept_and_they_equal_output_hidden_states(tiny_teacher):
    from hskstore.models.teacher import HiddenStateRecorder, load_teacher

    model, _ = load_teacher(tiny_teacher)
    ids = torch.tensor([[101, 7592, 2088, 999, 102]])
    with torch.no_grad(), HiddenStateRecorder(model.bert, [0, 2, 4]) as recorder:
        out = model(input_ids=ids, output_hidden_states=True)
    assert sorted(recorder.states) == [0, 2, 4]
    for i, state in recorder.states.items():
        assert torch.equal(state, out.hidden_states[i])


def test_the_store_records_the_device_and_precision_it_was_made_with(store):
    attrs = open_store(store).attrs
    assert attrs["device"] == "cpu" and attrs["precision"] == "fp32" and attrs["numerics"] == "cpu-float32"
    assert attrs["summary"]["device"] == "cpu" and attrs["summary"]["precision"] == "fp32"
    assert attrs["batch_size"] is None and attrs["batch_tokens"] == 8192


@pytest.mark.parametrize("chunks, world", [(4, 2), (5, 2), (1, 2), (7, 3), (64, 8)])
def test_ranks_extract_disjoint_contiguous_chunk_ranges_covering_the_split(chunks, world):
    from hskstore.runtime.distributed import World
    from hskstore.stages.extract import rank_chunks

    ranges = [rank_chunks(chunks, World(rank=r, world_size=world)) for r in range(world)]
    assert [k for r in ranges for k in r] == list(range(chunks))  # in rank order, each chunk once
    assert max(map(len, ranges)) - min(map(len, ranges)) <= 1
