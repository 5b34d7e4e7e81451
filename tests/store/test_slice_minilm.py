"""`hskstore slice` on the real MiniLM teacher: a sliced store equals the store extracted directly."""

import json

import numpy as np
import pytest

from hskstore.method.compression import Compression
from hskstore.stages.extract import ExtractConfig, extract
from hskstore.store import open_store
from hskstore.store.slicing import slice_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def minilm_teacher(tmp_path_factory):
    """all-MiniLM-L6-v2's real encoder with a seeded 3-way classifier head: real hidden states and attention."""
    import torch
    from transformers import BertForSequenceClassification

    from conftest import minilm_path
    from hskstore.models.teacher import load_tokenizer

    directory = tmp_path_factory.mktemp("minilm_teacher")
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=3)
    model.save_pretrained(directory, safe_serialization=True)
    load_tokenizer(minilm_path()).save_pretrained(directory)
    (directory / "hskstore_teacher.json").write_text(json.dumps({"max_length": 48}))
    return str(directory)


def _extract(teacher, path, depth, length, width):
    extract(ExtractConfig(teacher=teacher, task="tweets", output=str(path), limit=48, chunk_rows=32,
                          compression=Compression(depth=depth, length=length, width=width, student_layers=3)),
            progress=False)
    return str(path)


def test_slicing_2_20_02_to_1_9_01_equals_extracting_1_9_01(minilm_teacher, tmp_path):
    large = _extract(minilm_teacher, tmp_path / "large.zarr", 2, 20, 0.2)
    direct = _extract(minilm_teacher, tmp_path / "direct.zarr", 1, 9, 0.1)
    sliced = str(tmp_path / "sliced.zarr")
    slice_store(large, sliced, depth=1, length=9, width=0.1)
    with open_store(direct) as a, open_store(sliced) as b:
        assert a.compression == b.compression and a.resolved == b.resolved
        for split in a.splits:
            x = a.split(split).read_rows(0, a.split(split).num_examples)
            y = b.split(split).read_rows(0, b.split(split).num_examples)
            assert set(x) == set(y)
            for name in ("positions", "masks", "values", "input_ids", "logits", "labels"):
                np.testing.assert_array_equal(x[name], y[name], err_msg=f"{split}/{name}")
