"""A store split as a plain `torch.utils.data.Dataset`, for distilling in your own training loop.

`hskstore train` is one loop over a store; a user with a loop of their own (plain PyTorch, a
`transformers.Trainer` subclass) needs the same targets without the trainer. `HskDataset` gives each
example's tokens, label, teacher logits and stored HSK (positions, kept values, kept dimensions);
`collate_hsk` batches them; `HskDataset.hsk_loss` and `prediction_loss` are the losses `hskstore train`
minimises, computed from the kept entries alone (method/sparse_loss.py), so no dense target is built.
docs/own-loop.md shows both loops; tests/store/test_dataset.py runs them.

The split is read whole into memory when the dataset is made: the store holds the compressed fraction
(under 1 KB an example at (1, 9, 0.1)), and a chunked store read row by row is slow.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..method.losses import prediction_loss
from ..method.sparse_loss import kept_indices, sparse_hsk_loss
from ..method.quantize import dequantize
from . import open_store
from .format import value_format_of

__all__ = ["HskDataset", "collate_hsk", "prediction_loss"]


class HskDataset(Dataset):
    """Examples of one split of a store; item i is a dict of numpy arrays (use `collate_hsk` to batch).

    Attributes:
        hidden_size: d, the teacher's width.
        student_layers: which of a student's hidden states (0 = embeddings) the stored layers pair with,
            for a student of the depth the store was extracted for.
        static_indices: (k,) kept dimensions shared by every vector (static width strategies), else None.
        task: the store's task record (name, label names, metric).
    """

    def __init__(self, store, split: str = "train", *, storage_options: dict | None = None):
        with open_store(store, storage_options=storage_options) as opened:
            reader = opened.split(split)
            self.arrays = reader.read_rows(0, reader.num_examples)
            resolved = opened.resolved
            self.value_format = value_format_of(opened.compression, resolved)
            static = opened.static_mask()
            self.task = opened.task
        self.hidden_size = resolved.hidden_size
        self.student_layers = list(resolved.student_layer_ids)
        self.static_indices = None if static is None else torch.from_numpy(np.flatnonzero(static))
        self.hsk_variant = "masked-zero"

    def __len__(self) -> int:
        return len(self.arrays["labels"])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {name: array[index] for name, array in self.arrays.items()}

    def hsk_loss(self, student_hidden_states, batch: dict, projection: torch.nn.Module,
                 variant: str = "masked-zero") -> torch.Tensor:
        """The HSK stage's loss for a batch from `collate_hsk`.

        Args:
            student_hidden_states: the student's L'+1 hidden states (B, T, d_S), embeddings first.
            projection: P, d_S -> d (an nn.Linear trained with the student; identity when d_S = d).
        """
        hidden = [student_hidden_states[i] for i in self.student_layers]
        kept = batch.get("kept", self.static_indices)
        if kept is not None:
            kept = kept.to(batch["values"].device)
        return sparse_hsk_loss(hidden, batch["positions"], self.values(batch), kept, projection, self.hidden_size,
                               variant)

    def values(self, batch: dict) -> torch.Tensor:
        """The batch's kept values as float32 (B, D, n, k), dequantized where the batch is (int8/int4 stores)."""
        if "value_scales" not in batch:
            return batch["values"]
        return dequantize(batch["values"], batch["value_scales"], self.value_format)


def collate_hsk(rows: list[dict[str, np.ndarray]], hidden_size: int | None = None) -> dict[str, torch.Tensor]:
    """Batch `HskDataset` items: tokens trimmed to the longest, masks unpacked to kept dimensions.

    Returns:
        input_ids, attention_mask, token_type_ids (B, T') int64; labels (B,); teacher_logits (B, C) float32;
        and when the store holds HSK: positions (B, D, n) int64, values (B, D, n, k) float32 and, for
        per-vector masks, kept (B, D, n, k) int64. A quantized store's values stay its int8 (or packed int4)
        codes, with value_scales (B, D, n, 1) float16: `HskDataset.values(batch)` (and `hsk_loss`) dequantize
        them on the batch's device.
    """
    lengths = np.array([row["lengths"] for row in rows], dtype=np.int64)
    width = int(lengths.max())
    ids = np.stack([row["input_ids"][:width] for row in rows]).astype(np.int64)
    batch = {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy((np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)),
        "token_type_ids": torch.from_numpy(np.stack([row["token_type_ids"][:width] for row in rows]).astype(np.int64)),
        "labels": torch.from_numpy(np.stack([row["labels"] for row in rows])),
    }
    if "logits" in rows[0]:
        batch["teacher_logits"] = torch.from_numpy(np.stack([row["logits"] for row in rows]).astype(np.float32))
    if "values" in rows[0]:
        batch["positions"] = torch.from_numpy(np.stack([row["positions"] for row in rows]).astype(np.int64))
        quantized = "value_scales" in rows[0]   # int8/int4 codes stay codes: `HskDataset.values` decodes them
        values = np.stack([row["values"] for row in rows])
        batch["values"] = torch.from_numpy(values if quantized else values.astype(np.float32))
        if quantized:
            batch["value_scales"] = torch.from_numpy(np.stack([row["value_scales"] for row in rows]))
        if "masks" in rows[0]:
            packed = np.stack([row["masks"] for row in rows])
            d = hidden_size or packed.shape[-1] * 8
            mask = np.unpackbits(packed, axis=-1, count=d, bitorder="little").astype(bool)
            # k: the set bits of a kept vector (int4 stores pack two values a byte, so not values.shape[-1])
            k = int(mask.sum(-1).max()) if quantized else values.shape[-1]
            batch["kept"] = kept_indices(torch.from_numpy(mask), k)
    return batch
