"""Model cards: the README.md that says what a teacher, student or export directory holds and how it was made.

The Hugging Face Hub shows a directory's README.md as its model card and reads the YAML block at its top;
a card here names the task, the metrics with the split they were measured on, the base model, for
students the store's compression and A^HSK, and the command that made the directory.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

__all__ = ["CARD_FILE", "model_card", "write_model_card", "invocation"]

CARD_FILE = "README.md"


def invocation() -> str | None:
    """The `hskstore ...` command line being run, or None when called from Python."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if program in ("hskstore", "__main__.py", "-m"):
        return shlex.join(["hskstore", *sys.argv[1:]])
    return None


def _metric_rows(metrics: dict | None) -> list[str]:
    rows = []
    for name, value in (metrics or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append(f"| {name} | {value:.4f} |")
    return rows


def model_card(*, title: str, role: str, task: dict | None = None, metrics: dict | None = None,
               split: str | None = None, base_model: str | None = None, compression: dict | None = None,
               amount_hsk: float | None = None, command: str | None = None, notes: list[str] | None = None) -> str:
    """The card's text.

    Args:
        title: the heading, e.g. "hskstore student (ROSITA, 3 layers)".
        role: teacher | student | export (a tag on the Hub).
        task: the task record (name, label_names, metric, source) the model was made for.
        metrics: {metric name: value} measured on `split`.
        base_model: the model it was fine-tuned or distilled from (a hub id or a path).
        compression: the store's compression triple and options (students).
        amount_hsk: A^HSK of that store (`ResolvedCompression.amount()`): token vectors per example, the unit
            of docs/method.md and `hskstore info`, not a percentage.
    """
    task = task or {}
    front = ["---", "library_name: transformers", "pipeline_tag: text-classification",
             f"tags: [hskstore, knowledge-distillation, {role}]"]
    if base_model:
        front.append(f"base_model: {json.dumps(base_model)}")
    front.append("---")
    lines = [*front, "", f"# {title}", ""]
    about = [f"- **Task:** {task.get('name', 'unknown')}"
             + (f" (labels: {', '.join(map(str, task['label_names']))})" if task.get("label_names") else "")
             + (f", from {task['source']}" if task.get("source") else "")]
    if base_model:
        about.append(f"- **Base model:** `{base_model}`")
    if compression:
        triple = ", ".join(str(compression.get(k) if compression.get(k) is not None else "all")
                           for k in ("depth", "length", "width"))
        options = ", ".join(f"{k}={v}" for k, v in compression.items()
                            if k not in ("depth", "length", "width") and v is not None)
        about.append(f"- **HSK store:** (N^D, N^L, N^W) = ({triple}); {options}")
    if amount_hsk is not None:
        about.append(f"- **A^HSK:** {amount_hsk:.3g} token vectors per example (N^D · N^L · N^W / d, in full "
                     "token vectors of one layer, as `hskstore info` counts it)")
    lines += about + [""]
    rows = _metric_rows(metrics)
    if rows:
        lines += [f"## Metrics ({split or 'validation'} split)", "", "| metric | value |", "|---|---|", *rows, ""]
    for note in notes or []:
        lines += [note, ""]
    if command:
        lines += ["## How it was made", "", "```bash", command, "```", ""]
    lines += ["Made with hskstore: offline knowledge distillation of BERT models from a "
              "compressed store of the teacher's hidden-state knowledge.", ""]
    return "\n".join(lines)


def write_model_card(directory, **fields) -> Path:
    """Write `model_card(**fields)` to directory/README.md and return its path."""
    path = Path(directory) / CARD_FILE
    path.write_text(model_card(**fields))
    return path
