"""Students leave hskstore: as a transformers directory (BERT-shaped students) or as ONNX (every student).

A BERT student is a BertForSequenceClassification already. A ROSITA student becomes one exactly, with
its weights renamed key by key (the inverse of `_rosita.rosita_weights`): pruned heads come back as
all-zero heads (a zero query and key give uniform attention over zero values, so they add exactly
nothing) and a factorised word embedding is multiplied out to a (vocab x d) table. Only a hidden size
that is not a whole number of heads has no BERT form; such a student goes to ONNX, which traces the
student's own forward. Both formats carry the
tokenizer and the label names; ONNX takes int64 input_ids, attention_mask, token_type_ids (B, T) and
returns logits (B, C), with batch and sequence axes dynamic.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError
from ..runtime.outputs import check_output_dir
from ..models.student import copy_weights, load_student
from ..models.teacher import load_tokenizer, quiet_transformers

__all__ = ["FORMATS", "export_student", "rosita_as_bert", "EXPORT_INFO_FILE"]

FORMATS = ("transformers", "onnx")
EXPORT_INFO_FILE = "hskstore_export.json"
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _label_names(student_dir: Path, num_labels: int) -> list[str]:
    """Class names from the task the student was made for (task.json), else "0".."C-1"."""
    task_file = student_dir / "task.json"
    names = json.loads(task_file.read_text()).get("task", {}).get("label_names") if task_file.is_file() else None
    if names and len(names) == num_labels:
        return list(names)
    return ["score"] if num_labels == 1 else [str(i) for i in range(num_labels)]


def rosita_as_bert(student, label_names: list[str]):
    """The same network as a BertForSequenceClassification, or a ModelError naming why it has none.

    Every ROSITA student prunes alike in every layer (one head count, one FFN width), so BERT's per-model
    numbers describe it once the pruned heads are padded back with zeros and the embedding multiplied
    out. The cost is parameters, not accuracy: docs/cli.md ("export") gives the sizes.

    Raises:
        ModelError: the hidden size is not a whole number of heads of the student's head size.
    """
    from transformers import BertConfig, BertForSequenceClassification

    c = student.config
    if c.hidden_size % c.head_size or c.attention_size > c.hidden_size:
        raise ModelError(f"this ROSITA student has no transformers (BERT) form: its hidden size {c.hidden_size} is "
                         f"not a whole number of its {c.head_size}-wide heads ({c.num_heads} kept). Export it with "
                         "--format onnx")
    all_heads = c.hidden_size // c.head_size
    config = BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_layers,
        num_attention_heads=all_heads, intermediate_size=c.intermediate_size, hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
        layer_norm_eps=c.layer_norm_eps, hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.dropout,
        classifier_dropout=c.dropout, pad_token_id=c.pad_token_id, num_labels=c.num_labels,
        id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)},
        problem_type="regression" if c.num_labels == 1 else "single_label_classification",
        architectures=["BertForSequenceClassification"])
    model = BertForSequenceClassification(config).eval()
    s = student.state_dict()
    out = {"bert.embeddings." + k[len("embeddings."):]: v for k, v in s.items()
           if k.startswith("embeddings.") and k != "embeddings.word_projection.weight"}
    if c.embedding_rank is not None:  # (V, r) @ (r, d): the table the factorisation stands for
        out["bert.embeddings.word_embeddings.weight"] = \
            s["embeddings.word_embeddings.weight"] @ s["embeddings.word_projection.weight"].T
    pad = c.hidden_size - c.attention_size  # the pruned heads' rows and columns, all zero
    for i in range(c.num_layers):
        src, dst = f"layers.{i}.", f"bert.encoder.layer.{i}."
        for p in ("weight", "bias"):
            for name in ("query", "key", "value"):
                kept = s[f"{src}attention.{name}.{p}"]                               # (H*h, d) or (H*h,)
                out[f"{dst}attention.self.{name}.{p}"] = torch.cat([kept, kept.new_zeros(pad, *kept.shape[1:])])
            out[f"{dst}attention.output.dense.{p}"] = s[f"{src}attention.output.{p}"]
            out[f"{dst}attention.output.LayerNorm.{p}"] = s[f"{src}attention.LayerNorm.{p}"]
            out[f"{dst}intermediate.dense.{p}"] = s[f"{src}ffn.intermediate.{p}"]
            out[f"{dst}output.dense.{p}"] = s[f"{src}ffn.output.{p}"]
            out[f"{dst}output.LayerNorm.{p}"] = s[f"{src}ffn.LayerNorm.{p}"]
        weight = s[f"{src}attention.output.weight"]                                   # (d, H*h)
        out[f"{dst}attention.output.dense.weight"] = torch.cat([weight, weight.new_zeros(weight.shape[0], pad)], 1)
    for p in ("weight", "bias"):
        out[f"bert.pooler.dense.{p}"] = s[f"pooler.{p}"]
        out[f"classifier.{p}"] = s[f"classifier.{p}"]
    copy_weights(model, out)
    return model


class _Logits(nn.Module):
    """The student with plain tensor inputs and one output, as ONNX wants it."""

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.student(input_ids, attention_mask, token_type_ids).logits


def _example(student, batch: int, length: int, seed: int):
    """A padded batch of real-looking ids (B, T): [CLS] first, the last row half padding."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, student.vocab_size - 1), student.vocab_size, (batch, length), generator=generator)
    ids[:, 0] = min(101, student.vocab_size - 1)
    ids[-1, length // 2:] = 0
    types = torch.zeros_like(ids)
    types[0, length // 2:] = 1
    return ids, (ids != 0).long(), types


def _export_onnx(student, path: Path, opset: int) -> float | None:
    """Trace to ONNX, then check it with onnxruntime (when installed) on a batch of another shape.

    Returns the largest absolute logit difference from PyTorch, or None without onnxruntime.
    Raises ModelError when that difference exceeds 1e-3: a trace that froze a shape is caught here.
    """
    wrapper = _Logits(student).eval()  # eval on the wrapper: export restores the mode of the module it is given
    axes = {name: {0: "batch", 1: "sequence"} for name in ONNX_INPUTS} | {"logits": {0: "batch"}}
    with warnings.catch_warnings():
        # The tracer warns about Python-level branches on shapes; the check below is what decides.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, _example(student, 2, 6, 0), str(path), input_names=list(ONNX_INPUTS),
                          output_names=["logits"], dynamic_axes=axes, opset_version=opset, dynamo=False)
    try:
        import onnxruntime
    except ImportError:
        return None
    inputs = _example(student, 3, 11, 1)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], dict(zip(ONNX_INPUTS, (t.numpy() for t in inputs))))[0]
    with torch.no_grad():
        expected = wrapper(*inputs).numpy()
    difference = float(abs(got - expected).max())
    if difference > 1e-3:
        raise ModelError(f"the ONNX export differs from the PyTorch student by {difference:.2e} in the logits of a "
                         f"(3, 11) batch; try another --opset")
    return difference


def export_student(student_dir, output, fmt: str = "transformers", *, overwrite: bool = False,
                   opset: int = 17) -> dict:
    """Write a saved student to `output` as a transformers directory or an ONNX file, with its tokenizer.

    Returns:
        {"format", "kind", "output", "files", "label_names"}; the same is written to hskstore_export.json.
    Raises:
        ModelError: not a student, an unknown format, or a ROSITA shape with no BERT equivalent.
        ConfigError: `output` is not empty and `overwrite` is off (or it holds something else).
    """
    if fmt not in FORMATS:
        raise ModelError(f"export format must be one of {list(FORMATS)}, got {fmt!r}")
    student_dir, output = Path(student_dir), Path(output)
    student = load_student(student_dir)
    labels = _label_names(student_dir, student.num_labels)
    if fmt == "transformers":
        model = student.model if student.kind == "bert" else rosita_as_bert(student, labels)
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {n: i for i, n in enumerate(labels)}
    else:
        bert_config = _bert_config(student, labels)
    check_output_dir(output, "export", overwrite)  # after the checks above: a refused export deletes nothing
    output.mkdir(parents=True, exist_ok=True)
    if fmt == "transformers":
        with quiet_transformers():  # transformers' own "Writing model shards" bar: one file, no bar needed
            model.save_pretrained(str(output), safe_serialization=True)
    else:
        checked = _export_onnx(student, output / "model.onnx", opset)
        bert_config.save_pretrained(str(output))  # config.json: ONNX runtimes that follow transformers read it
    has_tokenizer = any((student_dir / name).is_file() for name in ("tokenizer.json", "vocab.txt"))
    if has_tokenizer:
        load_tokenizer(student_dir).save_pretrained(str(output))
    _write_card(student_dir, output, student, fmt, labels)
    files = sorted(p.name for p in output.iterdir())
    summary = {"format": fmt, "kind": student.kind, "source": str(student_dir.resolve()), "output": str(output),
               "label_names": labels, "tokenizer": has_tokenizer, "files": files}
    if fmt == "onnx":
        summary |= {"inputs": list(ONNX_INPUTS), "outputs": ["logits"], "opset": opset,
                    "max_abs_logit_difference": checked}  # None: onnxruntime not installed, not checked
    (output / EXPORT_INFO_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def _bert_config(student, labels: list[str]):
    """The transformers config that describes the ONNX graph's inputs, outputs and labels."""
    if student.kind == "bert":
        config = student.model.config
    else:
        try:
            config = rosita_as_bert(student, labels).config
        except ModelError:  # no BERT form: the graph runs all the same; the config carries labels and sizes
            from transformers import BertConfig

            c = student.config
            config = BertConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_layers,
                                num_attention_heads=1, intermediate_size=c.intermediate_size,
                                max_position_embeddings=c.max_position_embeddings, num_labels=c.num_labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {n: i for i, n in enumerate(labels)}
    return config


def _write_card(student_dir: Path, output: Path, student, fmt: str, labels: list[str]) -> None:
    """README.md for the export: the student's task, its dev metrics when its run recorded them, the store."""
    from ..models.card import invocation, write_model_card

    task_file, metrics_file = student_dir / "task.json", student_dir.parent / "metrics.json"
    task = json.loads(task_file.read_text()).get("task") if task_file.is_file() else None
    run = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    how = ("Load with `AutoModelForSequenceClassification.from_pretrained(DIR)`." if fmt == "transformers" else
           "Run `model.onnx` with onnxruntime: int64 inputs input_ids, attention_mask, token_type_ids (batch, "
           "sequence), output logits (batch, labels); `config.json` and the tokenizer sit beside it, the layout "
           "Optimum's ORTModelForSequenceClassification.from_pretrained(DIR) reads.")
    write_model_card(output, title=f"hskstore {student.kind} student ({fmt} export)", role="export",
                     task=task or {"label_names": labels}, metrics=run.get("student_dev"), split="validation",
                     base_model=run.get("teacher"), compression=run.get("compression"),
                     amount_hsk=run.get("amount_hsk"), command=invocation(), notes=[how])
