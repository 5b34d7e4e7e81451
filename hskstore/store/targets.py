"""Where a training batch's teacher side comes from: read from the store (offline) or computed in the loop (online).

Both are `Targets`: they name the store arrays a stage reads, move a numpy batch to the device (in the
prefetch thread), and complete it on the device with the teacher's logits and HSK: kept values and their
dimensions, never a full-width target (in the training loop). Offline, the store's values and masks are
decoded while the batch moves and nothing is left to do; online, the teacher runs on the tokens and
`method.select.Selector` recomputes the same selection extraction made: the speed baseline and the check
that offline is the same distillation.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

import numpy as np
import torch

from ..errors import StoreError
from ..method.select import Selector, mask_index
from ..method.sparse_loss import kept_indices
from ..runtime.device import inference_precision_for
from .format import value_format_of
from .stream import HSK_ARRAYS, TOKEN_ARRAYS, DeviceBatch, to_device

__all__ = ["Targets", "OfflineTargets", "OnlineTargets", "targets_for"]


class Targets(Protocol):
    mode: str  # "offline" | "online", as metrics.json records it

    def arrays(self, stage: str | None) -> tuple[str, ...]:
        """The store arrays a batch of `stage` reads ("hsk", "pred"; None: tokens and labels, for evaluation)."""

    def to_device(self, batch: dict[str, np.ndarray]) -> DeviceBatch:
        """A numpy batch on the device; runs in the prefetch thread."""

    def __call__(self, batch: DeviceBatch) -> DeviceBatch:
        """The batch with its teacher logits and HSK targets; runs in the training loop."""


class OfflineTargets:
    """The store's own targets: read with the tokens, masks turned into kept dimensions as the batch moves."""

    mode = "offline"

    def __init__(self, store, device: torch.device):
        self.device = device
        self.hidden_size = store.resolved.hidden_size
        mask = store.static_mask()
        # A static mask's kept dimensions, made once on the device for every batch.
        self.static_kept = None if mask is None else torch.from_numpy(np.flatnonzero(mask)).to(device)
        self.value_format = value_format_of(store.compression, store.resolved)   # quantized values decode on device

    def arrays(self, stage: str | None) -> tuple[str, ...]:
        return TOKEN_ARRAYS + {"hsk": HSK_ARRAYS, "pred": ("logits",)}.get(stage, ())

    def to_device(self, batch: dict[str, np.ndarray]) -> DeviceBatch:
        return to_device(batch, self.device, self.hidden_size, self.static_kept, self.value_format)

    def __call__(self, batch: DeviceBatch) -> DeviceBatch:
        return batch


class OnlineTargets:
    """The store's teacher in the loop: tokens and labels from the store, logits and HSK from the teacher."""

    mode = "online"

    def __init__(self, teacher, selector: Selector, device: torch.device, compression=None):
        self.teacher, self.selector, self.device = teacher, selector, device
        self.compression = compression   # the store's: values are encoded and decoded as the store holds them
        fixed = selector.fixed_mask
        # A static mask's kept dimensions, copied to the device once (the selector's own cache).
        self.static_kept = None if fixed is None else mask_index(fixed, device)

    @classmethod
    def load(cls, path: str, store, device: torch.device) -> "OnlineTargets":
        """Load the teacher at `path`, refused unless it is the one `store` was extracted from.

        Raises:
            StoreError: its weights or tokenizer differ from the store's fingerprint, or its shape from the
                store's teacher record.
        """
        from ..models.teacher import load_teacher, load_tokenizer, teacher_fingerprint

        recorded = store.attrs.get("teacher_fingerprint")  # stores from before fingerprints have none
        if recorded is not None and teacher_fingerprint(path) != recorded:
            raise StoreError(f"online teacher {path} is not the store's teacher: the SHA-256 of its weights or "
                             f"tokenizer differs from the fingerprint recorded in {store.location}; pass the "
                             "teacher the store was extracted from")
        model, identity = load_teacher(path, device=device)
        stored = store.teacher
        same = (identity.num_layers, identity.hidden_size, identity.vocab_size, identity.num_labels) == (
            stored["num_layers"], stored["hidden_size"], stored["vocab_size"], stored["num_labels"])
        if not same:
            raise StoreError(f"online teacher {path} ({identity.num_layers} layers, d={identity.hidden_size}, "
                             f"{identity.num_labels} labels) is not the store's teacher ({stored['num_layers']} "
                             f"layers, d={stored['hidden_size']}, {stored['num_labels']} labels): pass the teacher "
                             "the store was extracted from")
        selector = Selector(store.compression, store.resolved, load_tokenizer(path).sep_token_id,
                            model.bert.encoder.layer, identity.num_heads)
        return cls(model, selector, device, store.compression)

    def arrays(self, stage: str | None) -> tuple[str, ...]:
        return TOKEN_ARRAYS

    def to_device(self, batch: dict[str, np.ndarray]) -> DeviceBatch:
        return to_device({name: batch[name] for name in TOKEN_ARRAYS}, self.device)

    @torch.no_grad()
    def __call__(self, batch: DeviceBatch) -> DeviceBatch:
        # The teacher runs exactly as extraction runs it: float16 autocast on CUDA, float32 on the CPU.
        with inference_precision_for(self.device).autocast(self.device):
            out, selection = self.selector.run(self.teacher, batch.input_ids, batch.attention_mask,
                                               batch.token_type_ids)
        values = selection.values.float() if self.compression is None else self.compression.as_stored(selection.values)
        if selection.mask is not None:
            kept = kept_indices(selection.mask, values.shape[-1])
        else:
            kept = self.static_kept
        return replace(batch, logits=out.logits.float(), positions=selection.positions, values=values, kept=kept)


def targets_for(store, teacher: str | None, device: torch.device) -> Targets:
    """Online targets from `teacher` when one is given, else the store's own."""
    return OnlineTargets.load(teacher, store, device) if teacher else OfflineTargets(store, device)
