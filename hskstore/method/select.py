"""Pure tensor functions that pick the stored fraction of HSK: tokens (length), activations (width).

Shapes: B batch, T sequence, d hidden, D = N^D stored layers, n = N^L token slots, k = N^W activations.
Empty token slots carry position -1, zero values and an all-zero mask.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np
import torch

from .compression import Compression, ResolvedCompression
# The bit layout and mantissa rounding are part of the store format; re-exported here for selection code.
from .bits import pack_bits, round_mantissa, set_entries, unpack_bits, unpack_bits_numpy  # noqa: F401
from .strategies import LENGTH, WIDTH, magnitude_order, top_magnitude  # noqa: F401

__all__ = [
    "Selection",
    "Selector",
    "eligible_tokens",
    "rank_tokens",
    "gather_tokens",
    "top_magnitude",
    "static_mask",
    "mask_index",
    "pack_bits",
    "unpack_bits",
    "unpack_bits_numpy",
    "densify",
    "densify_packed",
    "round_mantissa",
    "select_hsk",
]


class Selection(NamedTuple):
    positions: torch.Tensor           # (B, D, n) int64, -1 for an empty slot
    values: torch.Tensor              # (B, D, n, k) kept activations in ascending dimension order
    mask: torch.Tensor | None         # (B, D, n, d) bool per-vector mask; None when static or k = d


def eligible_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, sep_id: int, strategy: str) -> torch.Tensor:
    """(B, T) bool: tokens a strategy may choose. [PAD] never; [SEP] only under `att`, `left` and `all`."""
    return LENGTH[strategy].eligible(input_ids, attention_mask, sep_id)


def rank_tokens(scores: torch.Tensor | None, eligible: torch.Tensor, n: int, strategy: str) -> torch.Tensor:
    """Positions of the n best eligible tokens, best first, -1 where fewer than n are eligible.

    Args:
        scores: (B, T) [CLS]-row attention (ignored by `left` and `all`).
        eligible: (B, T) bool.
    Returns:
        (B, n) int64. Descending score order, so a smaller N^L is a prefix of a larger one.
    """
    length = eligible.shape[1]
    ranked = LENGTH[strategy].scores(scores, eligible).float().masked_fill(~eligible, float("-inf"))
    top, positions = ranked.topk(min(n, length), dim=-1, sorted=True)  # (B, min(n, T))
    positions = positions.masked_fill(top == float("-inf"), -1)
    if n > length:  # a batch trimmed to its longest sequence: the slots past it are empty
        positions = torch.nn.functional.pad(positions, (0, n - length), value=-1)
    return positions


def gather_tokens(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, d), positions (B, n) with -1 empty -> (B, n, d), zeros in empty slots."""
    index = positions.clamp(min=0).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    gathered = hidden.gather(1, index)
    return gathered.masked_fill((positions < 0).unsqueeze(-1), 0)


def static_mask(hidden_size: int, k: int, strategy: str, seed: int = 0) -> torch.Tensor:
    """(d,) bool mask shared by every vector, from a static width strategy (`uniform`: round(i*d/k), `rand`)."""
    if strategy not in WIDTH or WIDTH[strategy].static is None:
        raise ValueError(f"no static mask for width strategy {strategy!r}")
    return WIDTH[strategy].static_mask(hidden_size, k, seed)


# Static-mask indices per mask object and device: boolean-mask indexing (x[..., mask]) waits for the
# device to count the mask's set bits on every call; index_select with indices made once does not.
_MASK_INDEX: dict[int, tuple[weakref.ref, dict[str, torch.Tensor]]] = {}


def mask_index(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(k,) int64 indices of a (d,) static mask's set bits on `device`, computed once per mask and device."""
    entry = _MASK_INDEX.get(id(mask))
    if entry is None or entry[0]() is not mask:  # keyed by identity: tensors compare elementwise
        entry = _MASK_INDEX[id(mask)] = (weakref.ref(mask), {})
        weakref.finalize(mask, _MASK_INDEX.pop, id(mask), None)
    per_device = entry[1]
    key = str(device)
    if key not in per_device:
        per_device[key] = mask.detach().cpu().nonzero().squeeze(1).to(device)
    return per_device[key]


def densify(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scatter kept values back to full width: values (..., k), mask (..., d) -> (..., d), zeros elsewhere.

    Relies on exactly k set bits per non-empty vector and values in ascending dimension order; empty
    slots (all-zero mask, zero values) come out as zeros.
    """
    k = values.shape[-1]
    # A stable descending sort of the 0/1 mask puts the kept dimensions first, in ascending order.
    index = mask.to(torch.int8).argsort(dim=-1, descending=True, stable=True)[..., :k]
    out = torch.zeros(*mask.shape, dtype=values.dtype, device=values.device)
    return out.scatter_(-1, index, values)


def densify_packed(values: np.ndarray, packed: np.ndarray, hidden_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`densify` in numpy, straight from the stored bytes: dense targets for checks and benchmarks.

    Training never builds these: the HSK loss reads the kept entries (`sparse_loss`). The reader made
    them this way before (`benchmarks/reader.py` still times it as the reference): the flat indices of
    the set bits (`set_entries`), then one scatter of only the k kept values. The flat indices come in
    row-major order, which is ascending dimension order within each vector, the order the kept values
    are stored in: the same result as `densify`, bit for bit.

    Args:
        values: (..., k) kept values of the store (float16); empty slots hold zeros.
        packed: (..., ceil(d/8)) uint8 bitpacked masks, all zero for an empty slot.
    Returns:
        (targets (..., d) float32, mask (..., d) bool)
    Raises:
        StoreError: the masks' set bits do not match the stored values (k per non-empty vector).
    """
    mask = np.unpackbits(packed, axis=-1, count=hidden_size, bitorder="little").view(bool)  # (..., d)
    index = set_entries(mask.reshape(-1))                                # kept entries, row-major
    nonempty = packed.any(-1)
    kept = values if nonempty.all() else values[nonempty]                 # (vectors, k), empty slots dropped
    if index.size != kept.size:
        from ..errors import StoreError

        raise StoreError(f"store masks hold {index.size} set bits for {kept.size} stored values: the store "
                         "is corrupt; re-extract it.")
    targets = np.zeros(mask.shape, dtype=np.float32)
    # float16 -> float32 once, by torch: numpy's cast is slower.
    targets.reshape(-1)[index] = torch.from_numpy(np.ascontiguousarray(kept)).reshape(-1).float().numpy()
    return targets, mask


def select_hsk(
    hidden_states: tuple[torch.Tensor, ...],
    cls_scores: dict[int, torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    compression: Compression,
    resolved: ResolvedCompression,
    sep_id: int,
    fixed_mask: torch.Tensor | None = None,
) -> Selection:
    """Select the stored HSK of one batch, exactly as docs/method.md defines it.

    Args:
        hidden_states: the teacher's L+1 tensors (B, T, d).
        cls_scores: {encoder layer: (B, T)} from CLSAttentionRecorder (unused by `left`/`all`).
        fixed_mask: (d,) bool static mask of a static width strategy (`Compression.static_mask`).
    Returns:
        Selection with D = N^D layers in the store's order.
    """
    eligible = eligible_tokens(input_ids, attention_mask, sep_id, compression.length_strategy)
    per_vector = compression.per_vector_masks(resolved)
    positions, values, masks = [], [], []
    for teacher_layer, score_layer in zip(resolved.teacher_layer_ids, resolved.score_layer_ids):
        pos = rank_tokens(cls_scores.get(score_layer), eligible, resolved.length, compression.length_strategy)
        tokens = gather_tokens(hidden_states[teacher_layer], pos)          # (B, n, d)
        positions.append(pos)
        if per_vector:
            kept, mask = compression.width_rule.choose(tokens, resolved.width, compression.value_dtype,
                                                       compression.value_bits)
            empty = (pos < 0).unsqueeze(-1)
            values.append(kept)
            masks.append(mask & ~empty)
        elif resolved.has_mask:
            values.append(tokens.index_select(-1, mask_index(fixed_mask, tokens.device)))
        else:
            values.append(tokens)
    return Selection(
        positions=torch.stack(positions, 1),
        values=torch.stack(values, 1),
        mask=torch.stack(masks, 1) if masks else None,
    )


class Selector:
    """The teacher's forward pass turned into a Selection: the one set-up extraction and online training share.

    It holds what a store's compression implies for the teacher run: whether the [CLS]-row recorder
    must run (from the length strategy) and the static width mask, if any (from the width strategy).

    Args:
        encoder_layers: the teacher's `bert.encoder.layer` (hooked only when scores are needed).
        num_heads: the teacher's attention heads.
    """

    def __init__(self, compression: Compression, resolved: ResolvedCompression, sep_id: int, encoder_layers,
                 num_heads: int):
        self.compression, self.resolved, self.sep_id = compression, resolved, sep_id
        self.length = LENGTH[compression.length_strategy]
        self.width = compression.width_rule
        self._layers, self._num_heads = encoder_layers, num_heads
        self.fixed_mask = compression.static_mask(resolved)      # (d,) bool, static width strategies only

    def recording(self):
        """A context manager yielding the [CLS]-row recorder, or None when the strategy needs no scores."""
        from contextlib import nullcontext

        from ..models.teacher import CLSAttentionRecorder

        if not self.length.needs_scores:
            return nullcontext()
        return CLSAttentionRecorder(self._layers, self.resolved.score_layer_ids, self._num_heads,
                                    self.compression.score_kind)

    def run(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor):
        """Run the teacher on a batch (B, T) and select its HSK; the caller sets no_grad and autocast.

        Returns:
            (the model's output (logits; no hidden states), Selection)
        """
        from ..models.teacher import HiddenStateRecorder

        # Hooks keep only the D stored layers' hidden states, not all L+1 (output_hidden_states).
        with self.recording() as recorder, HiddenStateRecorder(model.bert, self.resolved.teacher_layer_ids) as hidden:
            out = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            scores = recorder.scores(attention_mask) if recorder else {}
            selection = select_hsk(hidden.states, scores, input_ids, attention_mask, self.compression,
                                   self.resolved, self.sep_id, self.fixed_mask)
        return out, selection
