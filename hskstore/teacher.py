"""Load a fine-tuned BERT-family teacher and read the [CLS] attention row without materialising attention.

The teacher keeps its fast (SDPA) attention path: forward hooks on the query and key projections of the
layers whose scores are needed capture the [CLS] query (B, d) and all keys (B, T, d); the head-averaged
[CLS] row is then one small batched dot product.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ModelError

__all__ = ["TeacherIdentity", "load_teacher", "load_tokenizer", "CLSAttentionRecorder", "HiddenStateRecorder",
           "BERT_FAMILY"]

# model_type values whose encoder is BertModel-compatible (embeddings + encoder.layer[i].attention.self).
BERT_FAMILY = ("bert",)


@dataclass(frozen=True)
class TeacherIdentity:
    path: str            # directory or hub name it was loaded from
    num_layers: int      # L
    hidden_size: int     # d
    num_heads: int
    vocab_size: int
    num_labels: int
    model_type: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _read_config(path: str | os.PathLike) -> dict:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ModelError(
            f"{path} is not a model directory: no config.json. "
            "Pass a directory written by `hskstore finetune` or `save_pretrained`."
        )
    return json.loads(config_file.read_text())


def check_bert_family(path: str | os.PathLike) -> dict:
    """Raise a one-line ModelError unless `path` holds a BERT-family checkpoint; return its config dict."""
    config = _read_config(path)
    model_type = config.get("model_type")
    if model_type not in BERT_FAMILY:
        raise ModelError(
            f"{path} holds a '{model_type}' model; hskstore distils BERT-family models "
            f"(model_type in {list(BERT_FAMILY)}). Fine-tune a BERT checkpoint first."
        )
    return config


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from {path}: {exc}. Save the tokenizer beside the model.") from None


def load_teacher(path: str | os.PathLike, num_labels: int | None = None, device: str | torch.device = "cpu"):
    """Load a BertForSequenceClassification teacher in eval mode.

    Args:
        path: a local directory (transformers format) or, online, a hub name.
        num_labels: when given and the checkpoint has no classifier yet (a plain BertModel), one is
            initialised with this many labels; a fine-tuned teacher must already have it.
    Returns:
        (model, identity)
    Raises:
        ModelError: not a BERT-family model, or it cannot be loaded.
    """
    from transformers import BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    config = check_bert_family(path)
    if num_labels is None and "BertForSequenceClassification" not in (config.get("architectures") or []):
        raise ModelError(f"{path} has no fine-tuned classifier (architectures {config.get('architectures')}): "
                         "its logits would be random. Fine-tune it first: `hskstore finetune --model "
                         f"{path} ...`")
    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar is noise around our own
    kwargs = {}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
        if num_labels == 1:
            kwargs["problem_type"] = "regression"
    try:
        model = BertForSequenceClassification.from_pretrained(
            str(path), trust_remote_code=False, use_safetensors=True, **kwargs
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a BERT teacher from {path}: {exc}") from None
    model.to(device).eval()
    identity = TeacherIdentity(
        path=str(path),
        num_layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"],
        num_heads=config["num_attention_heads"],
        vocab_size=config["vocab_size"],
        num_labels=model.config.num_labels,
        model_type=config["model_type"],
    )
    return model, identity


class CLSAttentionRecorder:
    """Capture the head-averaged [CLS] attention row of chosen encoder layers during a forward pass.

    Use as a context manager around the teacher's forward. `scores(attention_mask)` then returns
    {layer_index: (B, T) float32}: post-softmax probabilities (`kind="softmax"`, padding gets 0) or
    pre-softmax scores q.k/sqrt(d_head) (`kind="logits"`, padding gets -inf).
    """

    def __init__(self, encoder_layers, layer_indices, num_heads: int, kind: str = "softmax"):
        if kind not in ("softmax", "logits"):
            raise ValueError(f"kind must be 'softmax' or 'logits', got {kind!r}")
        self.layers = encoder_layers
        self.indices = sorted(set(layer_indices))
        self.num_heads = num_heads
        self.kind = kind
        self._query: dict[int, torch.Tensor] = {}
        self._key: dict[int, torch.Tensor] = {}
        self._handles = []

    def __enter__(self):
        for i in self.indices:
            attention = self.layers[i].attention.self
            self._handles.append(attention.query.register_forward_hook(self._save(self._query, i, cls_only=True)))
            self._handles.append(attention.key.register_forward_hook(self._save(self._key, i, cls_only=False)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @staticmethod
    def _save(bucket, index, cls_only):
        def hook(_module, _inputs, output):
            bucket[index] = output[:, 0] if cls_only else output

        return hook

    def scores(self, attention_mask: torch.Tensor) -> dict[int, torch.Tensor]:
        """Args: attention_mask (B, T), 1 for real tokens. Returns {layer: (B, T) float32}."""
        valid = attention_mask.bool()
        out = {}
        for i in self.indices:
            q = self._query[i].float()                       # (B, d)
            k = self._key[i].float()                         # (B, T, d)
            batch, length, hidden = k.shape
            head = hidden // self.num_heads
            q = q.view(batch, self.num_heads, 1, head)
            k = k.view(batch, length, self.num_heads, head).transpose(1, 2)  # (B, H, T, h)
            raw = (q * k).sum(-1) * head**-0.5               # (B, H, T)
            raw = raw.masked_fill(~valid[:, None, :], float("-inf"))
            if self.kind == "softmax":
                out[i] = raw.softmax(-1).mean(1)             # (B, T)
            else:
                out[i] = raw.mean(1)                         # (B, T); -inf stays on padding
        self._query.clear()
        self._key.clear()
        return out


class HiddenStateRecorder:
    """Keep only the hidden states H_i a selection needs, by forward hooks, instead of all L+1.

    `output_hidden_states=True` holds every layer's (B, T, d) until the forward returns; this keeps D of
    them. Use as a context manager around the forward; `states` is then {i: (B, T, d)} with H_0 the
    embeddings' output and H_i the output of encoder layer i-1, as in `hidden_states[i]`.
    """

    def __init__(self, bert, layer_ids):
        self.bert = bert
        self.layer_ids = sorted(set(layer_ids))
        self.states: dict[int, torch.Tensor] = {}
        self._handles = []

    def __enter__(self):
        for i in self.layer_ids:
            module = self.bert.embeddings if i == 0 else self.bert.encoder.layer[i - 1]
            self._handles.append(module.register_forward_hook(self._save(i)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _save(self, index):
        def hook(_module, _inputs, output):
            self.states[index] = output[0] if isinstance(output, tuple) else output

        return hook
