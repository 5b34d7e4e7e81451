"""Load a fine-tuned BERT-family teacher and read the [CLS] attention row without materialising attention.

The teacher keeps its fast (SDPA) attention path: forward hooks on the query and key projections of the
layers whose scores are needed capture the [CLS] query (B, d) and all keys (B, T, d); the head-averaged
[CLS] row is then one small batched dot product.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError
from .hub import local_model_dir

__all__ = [
    "quiet_transformers",
    "TeacherIdentity",
    "load_teacher",
    "load_tokenizer",
    "check_bert_family",
    "check_tokenizer_files",
    "check_max_length",
    "teacher_fingerprint",
    "CLSAttentionRecorder",
    "HiddenStateRecorder",
    "BERT_FAMILY",
    "TOKENIZER_FILES",
    "DEFAULT_MAX_LENGTH",
    "teacher_max_length",
    "teacher_data_seed",
    "teacher_task",
]

# model_type values whose encoder is BertModel-compatible (embeddings + encoder.layer[i].attention.self).
BERT_FAMILY = ("bert",)
# What `save_pretrained` writes for a BERT tokenizer; one of the first two holds the vocabulary.
VOCAB_FILES = ("vocab.txt", "tokenizer.json")
TOKENIZER_FILES = VOCAB_FILES + ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
# config.json fields hskstore reads: each must be a positive integer (max_position_embeddings when present).
_CONFIG_INTS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")
_BLOCK = 1 << 20  # fingerprint read size: constant memory whatever the checkpoint's size


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


DEFAULT_MAX_LENGTH = 128


def _teacher_info(teacher: str) -> dict:
    """hskstore_teacher.json (written by finetune), or {} for a teacher made elsewhere; one-line error if broken."""
    meta = Path(teacher) / "hskstore_teacher.json"
    if not meta.is_file():
        return {}
    try:
        info = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{meta} is not valid JSON ({exc}); delete it (extract then needs --max-length and "
                         "--data-seed) or fine-tune the teacher again") from None
    if not isinstance(info, dict) or not isinstance(info.get("config", {}), dict):
        raise ModelError(f"{meta} is not an object of fine-tuning settings; delete it or fine-tune the teacher again")
    return info


def _info_int(teacher: str, value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(f"{Path(teacher) / 'hskstore_teacher.json'} has {name}={value!r}, expected an integer; "
                         f"pass --{name.replace('_', '-')} or fine-tune the teacher again")
    return value


def teacher_max_length(teacher: str) -> int:
    """The max length the teacher was fine-tuned with (hskstore_teacher.json), else 128."""
    return _info_int(teacher, _teacher_info(teacher).get("max_length", DEFAULT_MAX_LENGTH), "max_length")


def teacher_data_seed(teacher: str) -> int:
    """The data seed the teacher was fine-tuned with (hskstore_teacher.json), else 0: same split everywhere."""
    info = _teacher_info(teacher)
    return _info_int(teacher, info.get("config", {}).get("data_seed", info.get("data_seed", 0)), "data_seed")


def teacher_task(teacher: str) -> dict | None:
    """The teacher's task as finetune recorded it: {"task", "options", "name", "label_names"}, or None."""
    meta = Path(teacher) / "hskstore_teacher.json"
    if not meta.is_file():
        return None
    info = json.loads(meta.read_text())
    spec, ref = info.get("task") or {}, info.get("task_ref")
    if ref is None and info.get("config", {}).get("task"):  # written before task_ref existed
        config = info["config"]
        ref = {"task": config["task"], "options": {k: config.get(k) for k in (
            "text_columns", "label_column", "label_names", "validation_file", "validation_fraction")}}
    if ref is None:
        return None
    return {**ref, "name": spec.get("name"), "label_names": spec.get("label_names")}


def _read_config(path: str | os.PathLike) -> dict:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ModelError(
            f"{path} is not a model directory: no config.json. "
            "Pass a directory written by `hskstore finetune` or `save_pretrained`."
        )
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{config_file} is not valid JSON ({exc}); restore it from the checkpoint it came "
                         "from, or save the model again with `save_pretrained`.") from None
    if not isinstance(config, dict):
        raise ModelError(f"{config_file} holds a JSON {type(config).__name__}, expected an object of model "
                         "settings; restore it from the checkpoint it came from.")
    return config


def check_bert_family(path: str | os.PathLike) -> dict:
    """Raise a one-line ModelError unless `path` holds a BERT-family checkpoint; return its config dict.

    The sizes hskstore reads from config.json are checked here, so a mistyped file fails before any
    weights load instead of deep inside transformers or torch.
    """
    path = local_model_dir(path)
    config = _read_config(path)
    model_type = config.get("model_type")
    if model_type not in BERT_FAMILY:
        raise ModelError(
            f"{path} holds a '{model_type}' model; hskstore distils BERT-family models "
            f"(model_type in {list(BERT_FAMILY)}). Fine-tune a BERT checkpoint first."
        )
    names = _CONFIG_INTS + (("max_position_embeddings",) if "max_position_embeddings" in config else ())
    bad = [f"{name}={config.get(name)!r}" for name in names
           if isinstance(config.get(name), bool) or not isinstance(config.get(name), int) or config[name] < 1]
    if bad:
        raise ModelError(f"{Path(path) / 'config.json'} has invalid sizes ({', '.join(bad)}): expected positive "
                         "integers; restore config.json from the checkpoint it came from.")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise ModelError(f"{Path(path) / 'config.json'}: hidden_size {config['hidden_size']} is not a multiple of "
                         f"num_attention_heads {config['num_attention_heads']}; restore config.json.")
    return config


def check_tokenizer_files(path: str | os.PathLike) -> None:
    """Raise a one-line ModelError unless `path` holds a tokenizer vocabulary (vocab.txt or tokenizer.json).

    Without one, transformers builds a tokenizer of the five special tokens and every word becomes [UNK]:
    a store of such tokens is useless, and nothing would fail until the student is evaluated.
    """
    path = local_model_dir(path)
    if not any((Path(path) / name).is_file() for name in VOCAB_FILES):
        raise ModelError(f"{path} has no tokenizer vocabulary (none of {list(VOCAB_FILES)}): copy the tokenizer "
                         "files of the base model into it, or save the tokenizer beside the model "
                         "(`hskstore finetune` does).")


def check_max_length(max_length: int, config: dict, what: str, path) -> None:
    """A max length the model's position embeddings cannot take fails here, not as an index error in a forward."""
    limit = config.get("max_position_embeddings", 512)  # BertConfig's default when the file has none
    if max_length > limit:
        raise ModelError(f"max length {max_length} is larger than the {limit} positions {what} {path} has "
                         f"(max_position_embeddings): use --max-length {limit} or less.")


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def teacher_fingerprint(path: str | os.PathLike) -> dict:
    """SHA-256 of a teacher's model files (config.json, *.safetensors) and of its tokenizer files.

    Contents, not paths or times: re-fine-tuning into the same directory gives another fingerprint.
    Files are streamed in 1 MiB blocks and nothing is cached (a cache keyed on path and mtime would
    miss a rewrite within the filesystem's time resolution).

    Returns:
        {"algorithm": "sha256", "weights": {file: hex}, "tokenizer": {file: hex}}
    Raises:
        ModelError: no safetensors weights in `path`.
    """
    root = local_model_dir(path)
    weights = sorted(p for p in root.iterdir() if p.is_file() and (p.name == "config.json" or
                                                                   p.name.endswith(".safetensors") or
                                                                   p.name.endswith(".safetensors.index.json")))
    if not any(p.name.endswith(".safetensors") for p in weights):
        raise ModelError(f"{path} has no safetensors weights (model.safetensors); save the teacher with "
                         "`hskstore finetune` or `save_pretrained(safe_serialization=True)`.")
    tokenizer = sorted(root / name for name in TOKENIZER_FILES if (root / name).is_file())
    return {"algorithm": "sha256",
            "weights": {p.name: _sha256(p) for p in weights},
            "tokenizer": {p.name: _sha256(p) for p in tokenizer}}


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    path = local_model_dir(path)
    check_tokenizer_files(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tokenizer from {path}: {exc}. Save the tokenizer beside the model.") from None
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise ModelError(f"the tokenizer in {path} has only its {len(tokenizer)} special tokens: every word would be "
                         "[UNK]. Copy the base model's vocab.txt / tokenizer.json into it.")
    return tokenizer


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

    path = local_model_dir(path)
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
    except Exception as exc:  # OSError, ValueError, and transformers' own config validation errors
        raise ModelError(f"cannot load a BERT teacher from {path}: {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())}") from None
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


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' load report (it lists a freshly initialised classifier, expected when fine-tuning)."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
