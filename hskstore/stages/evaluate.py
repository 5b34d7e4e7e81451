"""Use a trained student: GLUE-metric evaluation on a task split, predictions for raw texts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..runtime.device import resolve_device
from ..data.metrics import compute_metrics
from ..models.student import load_student
from ..models.teacher import load_teacher, load_tokenizer, teacher_data_seed, teacher_max_length, teacher_task

__all__ = ["evaluate_student", "evaluate_on_store", "predict_texts", "predict_file", "student_task", "is_teacher_dir"]


def is_teacher_dir(path) -> bool:
    """A fine-tuned teacher (hskstore_teacher.json, as finetune writes it) rather than a student directory."""
    return (Path(path) / "hskstore_teacher.json").is_file() and not (Path(path) / "student.json").is_file()


def _teacher_as_recorded(teacher_dir) -> dict:
    """The teacher's record in task.json's shape, so a teacher is scored on the same footing as a student."""
    known = teacher_task(str(teacher_dir)) or {}
    spec = {"name": known.get("name")} | ({"label_names": known["label_names"]} if known.get("label_names") else {})
    return {"task": spec, "task_ref": {"task": known.get("task"), "options": known.get("options") or {}},
            "max_length": teacher_max_length(str(teacher_dir)), "data_seed": teacher_data_seed(str(teacher_dir))
            } if known else {"max_length": teacher_max_length(str(teacher_dir))}


def student_task(student_dir) -> dict:
    """The task a trained student was distilled for (task.json written by `train`), or {}."""
    path = Path(student_dir) / "task.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@torch.no_grad()
def _logits(student, tokens: dict[str, np.ndarray], batch_size: int, device) -> np.ndarray:
    order = np.argsort(-tokens["lengths"], kind="stable")   # length-sorted: little padding
    out = np.zeros((len(order), student.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = int(tokens["lengths"][rows].max())
        batch = {k: torch.from_numpy(tokens[k][rows, :width]).to(device)
                 for k in ("input_ids", "attention_mask", "token_type_ids")}
        out[rows] = student(**batch).logits.float().cpu().numpy()
    return out


def evaluate_student(student_dir, task: str | None = None, split: str = "validation", *, limit: int | None = None,
                     seed: int | None = None, max_length: int | None = None, batch_size: int = 128, device: str = "auto",
                     task_options: dict | None = None, allow_task_mismatch: bool = False) -> dict:
    """Metrics of a saved student, or of a fine-tuned teacher directory, on a task split (own tokenizer).

    A teacher directory (hskstore_teacher.json) is scored the same way: its recorded task, data seed and
    max length stand in for task.json's, so the teacher's number and its students' share the split.

    Without `task`, the task and its split seed are those of the store the student was distilled from
    (task.json), so "validation" is the same held-out rows and never the teacher's training rows. The
    whole split is scored: a store extracted with `--limit` distilled from a subset, but a dev number
    on a subset is not the task's dev number. `limit` scores a subset only when asked.

    Raises:
        DataError: no task given and the student records none; a task other than the recorded one
            (unless `allow_task_mismatch`); or the split does not exist.
    """
    from ..data.tasks import check_same_labels, load_task, resolve_task, tokenize

    teacher = is_teacher_dir(student_dir)
    recorded = _teacher_as_recorded(student_dir) if teacher else student_task(student_dir)
    owner = f"{'teacher' if teacher else 'student'} {student_dir}"
    reference = recorded.get("task_ref") or {}
    spec = recorded.get("task") or {}
    known = {"task": reference.get("task") or spec.get("name"), "options": reference.get("options") or {},
             "name": spec.get("name")} if spec else None
    if task is None:
        # The store's own task, split seed and subset: the validation rows it was distilled against.
        seed = recorded.get("data_seed", seed) if seed is None else seed
    task, task_options = resolve_task(known, task, task_options, allow_mismatch=allow_task_mismatch,
                                      owner=owner)
    data = load_task(task, limit=limit, seed=0 if seed is None else seed, **task_options)
    if "label_names" in spec:
        check_same_labels(spec["label_names"], data.spec, owner, allow_task_mismatch)
    columns = data.split(split)  # "validation" also names MNLI's validation_matched
    device = resolve_device(device)
    student = (load_teacher(str(student_dir), device=device)[0] if teacher
               else load_student(student_dir, device=device))
    tokens = tokenize(load_tokenizer(student_dir), columns, data.spec,
                      max_length or recorded.get("max_length", 128))
    logits = _logits(student, tokens, batch_size, device)
    metrics = compute_metrics(data.spec.metric, logits[:, 0] if data.spec.is_regression else logits, tokens["labels"])
    source = f"{task}" + (f" ({data.spec.source})" if data.spec.source and data.spec.source != task else "")
    return {"task": data.spec.name, "split": split, "examples": len(logits), "source": source, **metrics}


def evaluate_on_store(student_dir, store, split: str = "validation", *, batch_size: int = 128, device: str = "auto",
                      storage_options: dict | None = None) -> dict:
    """Metrics of a saved student on a store's split, from the stored tokens and labels (no dataset, no hub).

    Raises:
        StoreError: the store is missing or incomplete, or its vocabulary or labels are not the student's.
    """
    from ..errors import StoreError
    from ..store import open_store

    device = resolve_device(device)
    student = load_student(student_dir, device=device)
    with open_store(store, storage_options=storage_options) as opened:
        if (student.vocab_size, student.num_labels) != (opened.teacher["vocab_size"], opened.num_labels):
            raise StoreError(f"store {store} holds {opened.num_labels}-label data tokenised with a "
                             f"{opened.teacher['vocab_size']}-token vocabulary; student {student_dir} has "
                             f"{student.num_labels} labels and {student.vocab_size} tokens: pass the store it was trained from")
        reader = opened.split(split)
        data = reader.read_rows(0, reader.num_examples, ["input_ids", "token_type_ids", "lengths", "labels"])
        task = opened.task
    positions = np.arange(data["input_ids"].shape[1])
    tokens = {"input_ids": data["input_ids"].astype(np.int64), "token_type_ids": data["token_type_ids"].astype(np.int64),
              "attention_mask": (positions[None, :] < data["lengths"][:, None]).astype(np.int64),
              "lengths": data["lengths"].astype(np.int64), "labels": data["labels"]}
    logits = _logits(student, tokens, batch_size, device)
    metrics = compute_metrics(task["metric"], logits[:, 0] if student.num_labels == 1 else logits, tokens["labels"])
    return {"task": task["name"], "split": split, "store": str(store), "examples": len(logits), **metrics}


def predict_texts(student_dir, texts: list[str], pairs: list[str] | None = None, *, max_length: int | None = None,
                  batch_size: int = 128, device: str = "auto") -> list[dict]:
    """Label (or score) each text; pairs gives the second sentence of pair tasks."""
    from ..data.tasks import TaskSpec, tokenize

    if not texts:
        raise DataError("nothing to predict: pass at least one text")
    for what, values in (("text", texts), ("second text", pairs or [])):
        empty = [i + 1 for i, value in enumerate(values) if not str(value).strip()]
        if empty:
            raise DataError(f"input {empty[0]}'s {what} is empty: a model given no words still answers, so an "
                            "empty input is refused; pass the text to label")
    if pairs is not None and len(pairs) != len(texts):
        raise DataError(f"{len(texts)} texts but {len(pairs)} second texts: pass one second text per text")
    recorded = student_task(student_dir)
    columns_wanted = (recorded.get("task") or {}).get("text_columns") or []
    if len(columns_wanted) == 2 and pairs is None:
        raise DataError(f"{recorded['task'].get('name', 'this task')} labels sentence pairs "
                        f"({' + '.join(columns_wanted)}); one text alone would be labelled as a pair with nothing: "
                        "pass --pair FIRST SECOND, or a .tsv/.jsonl file with both columns")
    if len(columns_wanted) == 1 and pairs is not None:
        raise DataError(f"{recorded['task'].get('name', 'this task')} labels single texts: drop the second texts")
    device = resolve_device(device)
    student = load_student(student_dir, device=device)
    label_names = recorded.get("task", {}).get("label_names") or [str(i) for i in range(student.num_labels)]
    columns = ("a", "b") if pairs is not None else ("a",)
    spec = TaskSpec(name="predict", text_columns=columns, label_column="label",
                    label_names=tuple(label_names) if student.num_labels > 1 else (), metric="accuracy"
                    if student.num_labels > 1 else "pearson_spearman", source="file")
    split = {"a": list(texts), "label": [0] * len(texts)} | ({"b": list(pairs)} if pairs is not None else {})
    tokens = tokenize(load_tokenizer(student_dir), split, spec, max_length or recorded.get("max_length", 128))
    logits = _logits(student, tokens, batch_size, device)
    inputs = [{"text": t} | ({"pair": b} if pairs is not None else {}) for t, b in zip(texts, pairs or texts)]
    if student.num_labels == 1:
        return [row | {"score": float(s)} for row, s in zip(inputs, logits[:, 0])]
    probabilities = torch.from_numpy(logits).softmax(-1).numpy()
    return [row | {"label": label_names[int(p.argmax())], "probability": float(p.max())}
            for row, p in zip(inputs, probabilities)]


def predict_file(student_dir, path, *, encoding: str | None = None, batch_size: int = 128,
                 device: str = "auto") -> list[dict]:
    """Predictions for every row of a .csv/.tsv/.jsonl file holding the task's own text columns.

    A pair task's file holds both columns (e.g. RTE's sentence1 and sentence2); other columns are ignored.

    Raises:
        DataError: the file lacks a text column the student's task names, or a text is empty.
    """
    from ..data.tables import read_table

    task = student_task(student_dir).get("task") or {}
    wanted = task.get("text_columns") or ["text"]
    table = read_table(path, encoding=encoding)
    missing = [c for c in wanted if c not in table]
    if missing:
        raise DataError(f"{path} has no column {missing}; the student's task reads {wanted}: name the columns so")
    texts = [str(v) for v in table[wanted[0]]]
    pairs = [str(v) for v in table[wanted[1]]] if len(wanted) == 2 else None
    return predict_texts(student_dir, texts, pairs, batch_size=batch_size, device=device)
