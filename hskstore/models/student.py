"""Students: build them (ROSITA surgery from the teacher, or a TinyBERT-style BERT), save and load them.

Every student is an nn.Module with `forward(input_ids, attention_mask, token_type_ids) -> StudentOutput`
and the attributes num_layers (L'), hidden_size (d_S), vocab_size, num_labels and kind, the name of its
entry in the architecture registry (models.architectures.STUDENTS: "rosita" | "bert"), through which it
is built, saved and loaded. The projection d_S -> d used in the HSK stage belongs to the trainer, not to
the student.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ._rosita import RositaConfig, RositaStudent, StudentOutput, check_rosita_request, rosita_weights
from ..errors import ConfigError, ModelError
from .architectures import STUDENTS, expected_kinds
from .teacher import check_bert_family, load_teacher

__all__ = [
    "StudentOutput",
    "RositaConfig",
    "RositaStudent",
    "BertStudent",
    "ROSITA_DEFAULTS",
    "TINYBERT_DEFAULTS",
    "taylor_importance",
    "build_rosita",
    "build_bert_student",
    "save_student",
    "load_student",
    "read_student_meta",
    "student_summary",
    "STUDENT_FORMAT",
    "STUDENT_VERSION",
]

STUDENT_FORMAT = "hskstore-student"
STUDENT_VERSION = 1

# For the packaged 6-layer MiniLM teacher (d 384, 12 heads, FFN 1536). The paper's ROSITA_6 halves
# BERT-base's depth (12 -> 6), keeps 2 of 12 heads, FFN 768 of 3072 and embedding rank 128. MiniLM is
# already small, so pruning as hard would leave little to distil into: halve the depth (6 -> 3), keep
# half the heads (6 of 12) and the FFN (768 of 1536), and keep ROSITA_6's rank 128 (a third of d 384,
# it cuts the word table from 11.7M to 3.9M parameters, the bulk of this model).
ROSITA_DEFAULTS = dict(num_layers=3, num_heads=6, intermediate_size=768, embedding_rank=128)

# TinyBERT_4 (Jiao et al. 2020): 4 layers, d 312, FFN 1200, 12 heads; used for a fresh BertConfig.
TINYBERT_DEFAULTS = dict(num_layers=4, hidden_size=312, intermediate_size=1200, num_heads=12)


# ---------------------------------------------------------------------------------------------- importance

def _batch_inputs(batch: dict, device) -> dict:
    inputs = {"input_ids": batch["input_ids"].to(device)}
    for name in ("attention_mask", "token_type_ids"):
        if batch.get(name) is not None:
            inputs[name] = batch[name].to(device)
    return inputs


def _task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, or MSE when there is one output (regression)."""
    if logits.shape[-1] == 1:
        return nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
    return nn.functional.cross_entropy(logits, labels.view(-1).long())


def taylor_importance(model, batches, *, num_layers: int | None = None, progress: bool = False):
    """First-order Taylor importance of every head and FFN neuron of a BertForSequenceClassification.

    One pass over `batches` with the task loss and no weight update accumulates G = sum of |grad| per
    weight; the score of a weight is |G * W|. A head scores the sum over its columns of the attention
    output projection; a neuron the sum of its intermediate row plus its output-projection column.

    Args:
        model: BertForSequenceClassification (left in its current mode; eval keeps dropout off).
        batches: iterable of dicts with input_ids, attention_mask, token_type_ids (B, T) and labels (B,).
        num_layers: score only the bottom this-many layers (the forward and loss are the full model's).
    Returns:
        (head_scores (L', H), neuron_scores (L', F)) float32 on the CPU.
    Raises:
        ModelError: `batches` is empty, or a batch has no labels.
    """
    config = model.config
    layers = model.bert.encoder.layer[: num_layers or config.num_hidden_layers]
    heads, head_size = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    tracked = [(layer.attention.output.dense.weight, layer.intermediate.dense.weight, layer.output.dense.weight)
               for layer in layers]
    sums = [[torch.zeros_like(w, dtype=torch.float32) for w in ws] for ws in tracked]
    # Only the scored weights need a gradient: the rest (the 30k-row word table above all) would cost time.
    was_trainable = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for ws in tracked:
        for w in ws:
            w.requires_grad_(True)
    device = next(model.parameters()).device
    seen = 0
    try:
        with torch.enable_grad():
            for batch in _progress(batches, progress, "taylor importance"):
                if batch.get("labels") is None:
                    raise ModelError("taylor importance needs labels in every batch; got a batch without 'labels'")
                logits = model(**_batch_inputs(batch, device)).logits
                _task_loss(logits, batch["labels"].to(device)).backward()
                for ws, acc in zip(tracked, sums):
                    for w, a in zip(ws, acc):
                        a += w.grad.float().abs()
                        w.grad = None
                seen += 1
    finally:
        for p, flag in was_trainable.items():
            p.requires_grad_(flag)
            p.grad = None
    if seen == 0:
        raise ModelError("taylor importance got no batches; pass at least one batch of the task's training data")
    head_scores, neuron_scores = [], []
    for (w_att, w_in, w_out), (g_att, g_in, g_out) in zip(tracked, sums):
        att = (g_att * w_att.detach().float()).abs()                 # (d, H*h)
        head_scores.append(att.view(-1, heads, head_size).sum(dim=(0, 2)))      # (H,)
        neuron_scores.append((g_in * w_in.detach().float()).abs().sum(1)        # (F,) rows of (F, d)
                             + (g_out * w_out.detach().float()).abs().sum(0))   # (F,) cols of (d, F)
    return torch.stack(head_scores).cpu(), torch.stack(neuron_scores).cpu()


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="batch")


def _top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in ascending index order (keeps the teacher's head order)."""
    return torch.topk(scores, k).indices.sort().values


# ------------------------------------------------------------------------------------------------- ROSITA

def copy_weights(student: nn.Module, sources: dict) -> None:
    """Copy `sources` into `student` key by key; every key must exist on both sides with the same shape."""
    target = student.state_dict()
    missing, extra = sorted(set(target) - set(sources)), sorted(set(sources) - set(target))
    if missing or extra:
        raise ModelError(f"weight surgery keys do not match the student: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for key, param in target.items():
            value = sources[key]
            if value.shape != param.shape:
                raise ModelError(f"weight surgery: {key} expected shape {tuple(param.shape)}, "
                                 f"got {tuple(value.shape)} from the teacher")
            param.copy_(value)


def build_rosita(
    teacher_path: str | os.PathLike,
    batches=None,
    *,
    num_layers: int = 3,
    num_heads: int | None = None,
    intermediate_size: int | None = None,
    embedding_rank: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> RositaStudent:
    """Cut a ROSITA-style student out of a fine-tuned teacher (docs/method.md, "Students").

    Keeps the bottom `num_layers` layers, the `num_heads` heads and `intermediate_size` FFN neurons of
    highest Taylor importance per layer (one pass over `batches`, no weight update), and factorises the
    word embedding to `embedding_rank` by truncated SVD. None keeps everything along that dimension.
    ROSITA_DEFAULTS holds the numbers for the packaged 6-layer MiniLM teacher.

    Args:
        teacher_path: directory of a fine-tuned BertForSequenceClassification (safetensors).
        batches: iterable of dicts of input_ids, attention_mask, token_type_ids (B, T) and labels (B,);
            needed only when heads or neurons are pruned.
    Returns:
        RositaStudent in eval mode on `device`.
    Raises:
        ConfigError: a requested size is out of the teacher's range (all problems listed).
        ModelError: the teacher is not a fine-tuned BERT classifier, or `batches` is missing or empty.
    """
    config = check_bert_family(teacher_path)
    check_rosita_request(teacher_path, config, num_layers, num_heads, intermediate_size, embedding_rank)
    if "BertForSequenceClassification" not in (config.get("architectures") or []):
        raise ModelError(f"{teacher_path} has no classifier head (architectures {config.get('architectures')}); "
                         "fine-tune the teacher on the task first (`hskstore finetune`)")
    pruning = num_heads is not None or intermediate_size is not None
    if pruning and batches is None:
        raise ModelError("build_rosita needs `batches` of the task's training data to score heads and neurons; "
                         "pass them, or num_heads=None and intermediate_size=None to keep all")
    teacher, identity = load_teacher(teacher_path, device=device)
    heads_total, ffn_total = identity.num_heads, config["intermediate_size"]
    head_scores = torch.zeros(num_layers, heads_total)
    neuron_scores = torch.zeros(num_layers, ffn_total)
    if pruning:
        head_scores, neuron_scores = taylor_importance(teacher, batches, num_layers=num_layers, progress=progress)
    student_config = RositaConfig(
        vocab_size=identity.vocab_size,
        hidden_size=identity.hidden_size,
        num_layers=num_layers,
        num_heads=num_heads or heads_total,
        head_size=identity.hidden_size // heads_total,
        intermediate_size=intermediate_size or ffn_total,
        num_labels=identity.num_labels,
        embedding_rank=embedding_rank,
        max_position_embeddings=config["max_position_embeddings"],
        type_vocab_size=config["type_vocab_size"],
        layer_norm_eps=config["layer_norm_eps"],
        hidden_act=config["hidden_act"],
        dropout=config["hidden_dropout_prob"],
        pad_token_id=config.get("pad_token_id") or 0,
    )
    heads = [_top_k(s, student_config.num_heads) for s in head_scores]
    neurons = [_top_k(s, student_config.intermediate_size) for s in neuron_scores]
    student = RositaStudent(student_config).to(device)
    copy_weights(student, rosita_weights(teacher, student_config, heads, neurons, embedding_rank))
    return student.eval()


# --------------------------------------------------------------------------------------------- TinyBERT

class BertStudent(nn.Module):
    """A BertForSequenceClassification behind the common student interface."""

    kind = "bert"

    def __init__(self, model):
        super().__init__()
        self.model = model

    num_layers = property(lambda self: self.model.config.num_hidden_layers)
    hidden_size = property(lambda self: self.model.config.hidden_size)
    vocab_size = property(lambda self: self.model.config.vocab_size)
    num_labels = property(lambda self: self.model.config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> StudentOutput:
        """Args: (B, T) each. Returns StudentOutput with L'+1 hidden states (B, T, d_S) and logits (B, C)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         output_hidden_states=True, return_dict=True)
        return StudentOutput(tuple(out.hidden_states), out.logits)


def build_bert_student(
    checkpoint: str | os.PathLike | None = None,
    *,
    num_labels: int,
    vocab_size: int | None = None,
    num_layers: int | None = None,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_heads: int | None = None,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> BertStudent:
    """A TinyBERT-style student: a BERT checkpoint directory, or a fresh BertConfig.

    With `checkpoint` the architecture is the checkpoint's; sizes given here must agree with it (a check,
    not a request). Without it, unset sizes take TINYBERT_DEFAULTS (4 layers, d 312, FFN 1200, 12 heads)
    and `vocab_size` is required: it must be the teacher's, since the student reads the stored token ids.
    New weights (all of a fresh model, a checkpoint's classifier) are drawn from `seed`.

    Raises:
        ConfigError: sizes inconsistent with each other or with the checkpoint (all problems listed).
        ModelError: the checkpoint is not a BERT-family safetensors checkpoint.
    """
    from transformers import BertConfig, BertForSequenceClassification

    requested = dict(num_layers=num_layers, hidden_size=hidden_size, intermediate_size=intermediate_size,
                     num_heads=num_heads, vocab_size=vocab_size)
    problems = [f"{k} must be a positive integer, got {v!r}" for k, v in requested.items()
                if v is not None and (not isinstance(v, int) or v < 1)]
    if not isinstance(num_labels, int) or num_labels < 1:
        problems.append(f"num_labels must be a positive integer, got {num_labels!r}")
    if problems:
        raise ConfigError(problems)
    extra = {"problem_type": "regression"} if num_labels == 1 else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if checkpoint is not None:
            config = check_bert_family(checkpoint)
            names = dict(num_layers="num_hidden_layers", hidden_size="hidden_size", num_heads="num_attention_heads",
                         intermediate_size="intermediate_size", vocab_size="vocab_size")
            problems = [f"{k}={v} but {checkpoint} has {names[k]}={config.get(names[k])}; drop {k} or pick another "
                        f"checkpoint" for k, v in requested.items() if v is not None and v != config.get(names[k])]
            if problems:
                raise ConfigError(problems)
            try:
                model = BertForSequenceClassification.from_pretrained(
                    str(checkpoint), num_labels=num_labels, use_safetensors=True, trust_remote_code=False,
                    ignore_mismatched_sizes=True, **extra)
            except (OSError, ValueError) as exc:
                raise ModelError(f"cannot load a BERT student from {checkpoint}: {exc}. "
                                 "It needs config.json and model.safetensors.") from None
        else:
            sizes = {k: requested[k] if requested[k] is not None else TINYBERT_DEFAULTS[k] for k in TINYBERT_DEFAULTS}
            if vocab_size is None:
                raise ConfigError("vocab_size is required for a fresh BERT student: pass the teacher's vocab_size")
            if sizes["hidden_size"] % sizes["num_heads"]:
                raise ConfigError(f"hidden_size {sizes['hidden_size']} must be a multiple of num_heads "
                                  f"{sizes['num_heads']}; e.g. 312 with 12 heads")
            model = BertForSequenceClassification(BertConfig(
                vocab_size=vocab_size, hidden_size=sizes["hidden_size"], num_hidden_layers=sizes["num_layers"],
                num_attention_heads=sizes["num_heads"], intermediate_size=sizes["intermediate_size"],
                max_position_embeddings=max_position_embeddings, num_labels=num_labels, **extra))
    return BertStudent(model).eval()


# ------------------------------------------------------------------------------------------- save / load

def save_student(student: nn.Module, directory: str | os.PathLike, tokenizer=None) -> Path:
    """Write student.json, model.safetensors and (if given) the tokenizer files to `directory`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    architecture = STUDENTS.get(getattr(student, "kind", None))
    if architecture is None:
        raise ModelError(f"cannot save a student of kind {getattr(student, 'kind', None)!r}; expected {expected_kinds()}")
    config = architecture.config_of(student)
    module = architecture.weights_of(student)
    if architecture.on_save is not None:
        architecture.on_save(student, directory)
    # safetensors refuses shared or non-contiguous storage; a clone of each tensor is neither.
    tensors = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    # student.json goes last: a directory interrupted mid-save does not look like a student.
    meta = {"format": STUDENT_FORMAT, "version": STUDENT_VERSION, "kind": student.kind,
            "num_labels": student.num_labels, "config": config}
    (directory / "student.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory


def read_student_meta(directory: str | os.PathLike) -> dict:
    """student.json of a student directory, checked (format, version, kind, a config object); no weights read."""
    directory = Path(directory)
    meta_file = directory / "student.json"
    if not meta_file.is_file():
        raise ModelError(f"{directory} is not an hskstore student (no student.json). Build one with `hskstore student ...`")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{meta_file} is not valid JSON ({exc}); rebuild the student with `hskstore student ...`") from None
    if not isinstance(meta, dict) or meta.get("format") != STUDENT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelError(f"{meta_file} has format {found!r}, expected {STUDENT_FORMAT!r}; "
                         "point at a directory written by `hskstore student`")
    if meta.get("version") != STUDENT_VERSION:
        raise ModelError(f"Unsupported hskstore student version: {meta.get('version')!r}. "
                         f"Expected version {STUDENT_VERSION}; rebuild the student with this hskstore")
    if not isinstance(meta.get("kind"), str) or meta["kind"] not in STUDENTS:
        raise ModelError(f"{meta_file} has kind {meta.get('kind')!r}, expected {expected_kinds()}")
    if not isinstance(meta.get("config"), dict):
        raise ModelError(f"{meta_file} has no config object; rebuild the student with `hskstore student ...`")
    return meta


def load_student(directory: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a student written by save_student, in eval mode (reads JSON and safetensors only)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = read_student_meta(directory)
    meta_file = directory / "student.json"
    kind = meta["kind"]
    architecture = STUDENTS[kind]
    try:
        student = architecture.from_config(meta["config"])
    except ConfigError:
        raise
    except Exception as exc:  # transformers' config validation raises its own classes, not ValueError
        raise ModelError(f"{meta_file} has an invalid {kind} config ({type(exc).__name__}: {' '.join(str(exc).split())}); "
                         "rebuild the student with `hskstore student ...`") from None
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{directory} has student.json but no model.safetensors; save the student again")
    state = load_file(str(weights))
    target = architecture.weights_of(student)
    prefix = architecture.legacy_prefix
    if prefix and all(key.startswith(prefix) for key in state):  # e.g. BERT students before they were transformers dirs
        state = {key[len(prefix):]: value for key, value in state.items()}
    missing, unexpected = sorted(set(target.state_dict()) - set(state)), sorted(set(state) - set(target.state_dict()))
    if missing or unexpected:
        raise ModelError(f"{weights} does not match its student.json: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}; save the student again")
    copy_weights(target, state)
    return student.to(device).eval()


def student_summary(student: nn.Module) -> dict:
    """kind, layers, hidden, heads, ffn, rank, vocab, labels and parameter count of a student."""
    heads, ffn, rank = STUDENTS[student.kind].shape(student)
    return {
        "kind": student.kind,
        "layers": student.num_layers,
        "hidden": student.hidden_size,
        "heads": heads,
        "ffn": ffn,
        "rank": rank,
        "vocab": student.vocab_size,
        "num_labels": student.num_labels,
        "parameters": sum(p.numel() for p in student.parameters()),
    }
