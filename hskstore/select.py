"""Pure tensor functions that pick the stored fraction of HSK: tokens (length), activations (width).

Shapes: B batch, T sequence, d hidden, D = N^D stored layers, n = N^L token slots, k = N^W activations.
Empty token slots carry position -1, zero values and an all-zero mask.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np
import torch

from .config import Compression, ResolvedCompression
# The bit layout and mantissa rounding are part of the store format; re-exported here for selection code.
from .store.format import pack_bits, round_mantissa, unpack_bits, unpack_bits_numpy  # noqa: F401

__all__ = [
    "Selection",
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
    "full_width",
    "round_mantissa",
    "select_hsk",
]


class Selection(NamedTuple):
    positions: torch.Tensor           # (B, D, n) int64, -1 for an empty slot
    values: torch.Tensor              # (B, D, n, k) kept activations in ascending dimension order
    mask: torch.Tensor | None         # (B, D, n, d) bool per-vector mask (`mag`); None when static or k = d


def eligible_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, sep_id: int, strategy: str) -> torch.Tensor:
    """(B, T) bool: tokens a strategy may choose. [PAD] never; [SEP] only under `att`, `left` and `all`."""
    eligible = attention_mask.bool()
    if strategy == "att-nosep":
        eligible = eligible & (input_ids != sep_id)
    return eligible


def rank_tokens(scores: torch.Tensor | None, eligible: torch.Tensor, n: int, strategy: str) -> torch.Tensor:
    """Positions of the n best eligible tokens, best first, -1 where fewer than n are eligible.

    Args:
        scores: (B, T) [CLS]-row attention (ignored by `left` and `all`).
        eligible: (B, T) bool.
    Returns:
        (B, n) int64. Descending score order, so a smaller N^L is a prefix of a larger one.
    """
    batch, length = eligible.shape
    if strategy in ("left", "all"):
        # Earlier tokens first: a decreasing score over positions.
        scores = -torch.arange(length, device=eligible.device, dtype=torch.float32).expand(batch, length)
    ranked = scores.float().masked_fill(~eligible, float("-inf"))
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


def magnitude_order(stored: torch.Tensor) -> torch.Tensor:
    """(..., m) -> (..., m) indices by descending |value|, ties to the lower index (a stable sort).

    Ranking the values as they are stored, with a fixed tie rule, makes a smaller k exactly the top of a
    larger one: `hskstore slice` re-ranks stored float16 values and gets what extraction would have kept.
    """
    return stored.abs().float().sort(dim=-1, descending=True, stable=True).indices


def top_magnitude(vectors: torch.Tensor, k: int, value_dtype: str | None = None,
                  value_bits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-vector top-k by |h|: (..., d) -> values (..., k) in ascending dimension order, mask (..., d) bool.

    Ranked by the magnitude of the value as the store keeps it (`value_dtype`, `value_bits` rounding),
    ties to the lower dimension.
    """
    stored = vectors if value_dtype is None else vectors.to(getattr(torch, value_dtype))
    if value_bits is not None:
        stored = round_mantissa(stored, value_bits)
    index = magnitude_order(stored)[..., :k].sort(dim=-1).values  # (..., k)
    values = vectors.gather(-1, index)
    mask = torch.zeros(vectors.shape, dtype=torch.bool, device=vectors.device).scatter_(-1, index, True)
    return values, mask


def static_mask(hidden_size: int, k: int, strategy: str, seed: int = 0) -> torch.Tensor:
    """(d,) bool mask shared by every vector: `uniform` keeps round(i*d/k), `rand` a seeded random k."""
    mask = torch.zeros(hidden_size, dtype=torch.bool)
    if strategy == "uniform":
        mask[[round(i * hidden_size / k) for i in range(k)]] = True
    elif strategy == "rand":
        generator = torch.Generator().manual_seed(seed)
        mask[torch.randperm(hidden_size, generator=generator)[:k]] = True
    else:
        raise ValueError(f"no static mask for width strategy {strategy!r}")
    return mask


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


def full_width(values: torch.Tensor, mask: torch.Tensor | None = None,
               fixed_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher targets at full width d (zeros outside the kept entries) and the mask that made them.

    Args:
        values: (..., k) kept values; (..., d) when nothing was masked.
        mask: (..., d) per-vector mask (`mag`), or None.
        fixed_mask: (d,) static mask (`uniform`/`rand`), or None.
    Returns:
        (targets (..., d), mask (..., d) | (d,) | None)
    """
    if mask is not None:
        return densify(values, mask), mask
    if fixed_mask is not None:
        targets = values.new_zeros(*values.shape[:-1], fixed_mask.shape[0])
        targets.index_copy_(values.dim() - 1, mask_index(fixed_mask, values.device), values)
        return targets, fixed_mask
    return values, None


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
        fixed_mask: (d,) bool static mask for `uniform`/`rand` width strategies.
    Returns:
        Selection with D = N^D layers in the store's order.
    """
    eligible = eligible_tokens(input_ids, attention_mask, sep_id, compression.length_strategy)
    positions, values, masks = [], [], []
    for teacher_layer, score_layer in zip(resolved.teacher_layer_ids, resolved.score_layer_ids):
        pos = rank_tokens(cls_scores.get(score_layer), eligible, resolved.length, compression.length_strategy)
        tokens = gather_tokens(hidden_states[teacher_layer], pos)          # (B, n, d)
        positions.append(pos)
        if not resolved.has_mask:
            values.append(tokens)
        elif compression.width_strategy == "mag":
            kept, mask = top_magnitude(tokens, resolved.width, compression.value_dtype, compression.value_bits)
            empty = (pos < 0).unsqueeze(-1)
            values.append(kept)
            masks.append(mask & ~empty)
        else:
            values.append(tokens.index_select(-1, mask_index(fixed_mask, tokens.device)))
    return Selection(
        positions=torch.stack(positions, 1),
        values=torch.stack(values, 1),
        mask=torch.stack(masks, 1) if masks else None,
    )
