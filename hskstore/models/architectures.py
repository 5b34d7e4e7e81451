"""The student architectures, each a small object in one registry: add an architecture here, nowhere else.

`hskstore student KIND` offers these names, `experiments.demo.build_student` builds through an entry,
and `save_student`, `load_student` and `student_summary` (models.student) read and write student
directories through it. A student is an nn.Module whose class attribute `kind` names its entry. This
module imports neither torch nor transformers (`hskstore --help` reads the names); the entries' functions
import what they use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = ["StudentInputs", "StudentArchitecture", "STUDENTS", "student_kinds", "student_architecture", "expected_kinds"]


@dataclass(frozen=True)
class StudentInputs:
    """What a builder gets: the user's sizes, and what the store (and teacher) fix."""

    vocab_size: int                   # the store's teacher's: the student reads the stored token ids
    num_labels: int
    max_length: int                   # the store's T: a student needs at least as many positions
    sizes: dict = field(default_factory=dict)  # num_layers, num_heads, intermediate_size, embedding_rank, hidden_size
    teacher: str | None = None        # the fine-tuned teacher directory, when given
    checkpoint: str | None = None     # a checkpoint directory to start from, when given
    batches: Iterable | None = None   # the store's training batches with labels, read only if iterated
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def size(self, name: str, default=None):
        """A size the user set, else `default`."""
        value = self.sizes.get(name)
        return default if value is None else value


def _itself(student):
    return student


@dataclass(frozen=True)
class StudentArchitecture:
    name: str
    build: Callable[[StudentInputs], Any]            # -> a new student (nn.Module, eval mode)
    from_config: Callable[[dict], Any]               # student.json's "config" -> a student of that shape (weights next)
    config_of: Callable[[Any], dict]                 # the student's config as student.json keeps it
    shape: Callable[[Any], tuple]                    # (heads, ffn, embedding rank or None) for student_summary
    requires: str                                    # the one-line error when the store (or the teacher) is missing
    weights_of: Callable[[Any], Any] = _itself       # the module whose state_dict is model.safetensors
    on_save: Callable[[Any, Path], None] | None = None         # more files in the student directory
    name_classes: Callable[[Any, list], None] | None = None    # record the task's class names in the student
    cut_from_teacher: bool = False   # built from the teacher's weights: needs the teacher (and a store of it),
                                     # and saves the teacher's tokenizer (else the store's)
    legacy_prefix: str = ""          # weight-key prefix of older student files, stripped on load
    description: str = ""


# ------------------------------------------------------------------------------------------------ ROSITA

def _build_rosita(inputs: StudentInputs):
    import torch

    from .student import ROSITA_DEFAULTS, build_rosita

    sizes = {name: inputs.size(name, default) for name, default in ROSITA_DEFAULTS.items()}
    torch.manual_seed(inputs.seed)
    return build_rosita(inputs.teacher, inputs.batches, device=inputs.device, progress=inputs.progress, **sizes)


def _rosita_from_config(config: dict):
    from ._rosita import RositaConfig, RositaStudent

    return RositaStudent(RositaConfig.from_dict(config))


def _rosita_shape(student) -> tuple:
    c = student.config
    return c.num_heads, c.intermediate_size, c.embedding_rank


# ------------------------------------------------------------------------------------------------ BERT

def _build_bert(inputs: StudentInputs):
    from .student import build_bert_student

    if inputs.checkpoint is not None:  # a fresh student has 512 positions, the most a store holds
        from .teacher import check_bert_family, check_max_length

        check_max_length(inputs.max_length, check_bert_family(inputs.checkpoint), "the checkpoint", inputs.checkpoint)
    return build_bert_student(inputs.checkpoint, num_labels=inputs.num_labels,
                              vocab_size=None if inputs.checkpoint else inputs.vocab_size,
                              num_layers=inputs.size("num_layers"), hidden_size=inputs.size("hidden_size"),
                              intermediate_size=inputs.size("intermediate_size"), num_heads=inputs.size("num_heads"),
                              seed=inputs.seed)


def _bert_from_config(config: dict):
    from transformers import BertConfig, BertForSequenceClassification

    from .student import BertStudent

    return BertStudent(BertForSequenceClassification(BertConfig.from_dict(config)))


def _bert_config(student) -> dict:
    import json

    return json.loads(student.model.config.to_json_string(use_diff=False))


def _bert_save(student, directory: Path) -> None:
    # A BERT student is also a transformers directory: config.json plus its model's own keys (no "model."
    # prefix), so AutoModelForSequenceClassification.from_pretrained loads it as it is.
    student.model.config.architectures = ["BertForSequenceClassification"]
    student.model.config.to_json_file(str(directory / "config.json"))


def _bert_name_classes(student, names: list) -> None:
    """id2label/label2id from the task, so a transformers export predicts names, not LABEL_0."""
    student.model.config.id2label = dict(enumerate(names))
    student.model.config.label2id = {name: i for i, name in enumerate(names)}


def _bert_shape(student) -> tuple:
    c = student.model.config
    return c.num_attention_heads, c.intermediate_size, None


STUDENTS: dict[str, StudentArchitecture] = {a.name: a for a in (
    StudentArchitecture(
        "rosita", build=_build_rosita, from_config=_rosita_from_config, config_of=lambda s: s.config.to_dict(),
        shape=_rosita_shape, cut_from_teacher=True,
        requires="a ROSITA student needs --teacher (the fine-tuned teacher) and --store (its training data scores "
                 "heads and neurons)",
        description="cut from the teacher: its bottom layers, the most important heads and FFN neurons, an SVD "
                    "of the word embedding"),
    StudentArchitecture(
        "bert", build=_build_bert, from_config=_bert_from_config, config_of=_bert_config, shape=_bert_shape,
        weights_of=lambda s: s.model, on_save=_bert_save, name_classes=_bert_name_classes, legacy_prefix="model.",
        requires="a BERT student needs --store, whose teacher fixes the vocabulary and label count",
        description="a BertForSequenceClassification: a checkpoint, or a fresh TinyBERT-sized config"),
)}


def student_kinds() -> list[str]:
    return list(STUDENTS)


def expected_kinds() -> str:
    """"'rosita' or 'bert'": the registered kinds, for error messages."""
    return " or ".join(map(repr, STUDENTS))


def student_architecture(kind: str) -> StudentArchitecture:
    """The registered architecture `kind`, or a one-line ModelError listing the registered ones."""
    if not isinstance(kind, str) or kind not in STUDENTS:
        from ..errors import ModelError

        raise ModelError(f"unknown student kind {kind!r}: expected {expected_kinds()}")
    return STUDENTS[kind]
