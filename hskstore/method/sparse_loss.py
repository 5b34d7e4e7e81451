"""HSK losses from the kept entries alone: no dense (B, D, n, d) target tensor is ever built.

A store keeps k of d activations per selected token vector. The masked-zero loss compares the student's
projected vector s with the teacher's vector t masked to zero outside the kept set M:

    ||s - M*t||^2 = sum_{i not in M} s_i^2 + sum_{i in M} (s_i - t_i)^2

so it needs s (full width, the student's own) and, at the k kept dimensions only, t. The residual is s
with its kept entries replaced by s_i - t_i (one scatter of k values into the student's vector): the
same subtraction, entry for entry, as the dense form, with no cancellation between large terms. The
`kept` variant is the MSE over kept entries: sum_{i in M} (s_i - t_i)^2. Both equal `losses.hsk_loss`
(the dense reference) on densified targets within float32 rounding (tests/method/test_sparse_loss.py,
gradients included); `hskstore train` uses only this form.

The kept dimensions come from the stored masks: `kept_indices_packed` reads them straight from the
bitpacked bytes on the host (the CPU reader), `kept_indices` from a bool mask where one exists (on the
device: CUDA batches, online selection).

B batch, T tokens, d_S student width, d teacher width, D stored layers, n token slots, k kept per vector.
"""

from __future__ import annotations

import numpy as np
import torch

from .select import gather_tokens

__all__ = ["kept_indices", "kept_indices_packed", "sparse_hsk_loss"]


def kept_indices(mask: torch.Tensor, k: int) -> torch.Tensor:
    """The k kept dimensions of each vector, ascending (the order stored values follow).

    Args:
        mask: (..., d) bool, exactly k set per non-empty vector; an empty slot's vector may be all False.
    Returns:
        (..., k) int64; an empty slot gets 0..k-1 (its values are zero and its position -1, so it adds nothing).
    """
    # A stable descending sort of the 0/1 mask puts the kept dimensions first, in ascending order.
    return mask.to(torch.int8).argsort(dim=-1, descending=True, stable=True)[..., :k]


def _bit_tables() -> tuple[np.ndarray, np.ndarray]:
    """(256,) uint8 set bits of each byte value, and (256 * 8,) int64: entry 8b + r is the position of byte
    b's r-th set bit (little bit order, the store's)."""
    popcount = np.array([bin(b).count("1") for b in range(256)], dtype=np.uint8)
    select = np.zeros((256, 8), dtype=np.int64)
    for b in range(256):
        bits = [j for j in range(8) if b >> j & 1]
        select[b, :len(bits)] = bits
    return popcount, select.reshape(-1)


_POPCOUNT, _SELECT = _bit_tables()


def _popcount(packed: np.ndarray) -> np.ndarray:
    count = getattr(np, "bitwise_count", None)            # numpy >= 2.0; a table lookup before
    return count(packed) if count is not None else _POPCOUNT.take(packed)


_OFFSET = 1 << 39                     # keeps a key's low part (value * 8 - start + _OFFSET) non-negative
_LOW = (1 << 40) - 1
_COUNTER = [np.zeros(0, dtype=np.int64)]   # 0, 1, 2, ... minus _OFFSET, grown as batches need (one list slot:
_PLACES: dict[int, np.ndarray] = {}        # replaced whole, so the prefetch and main threads may share it)


def _counter(n: int) -> np.ndarray:
    counter = _COUNTER[0]
    if len(counter) < n:
        counter = _COUNTER[0] = np.arange(max(n, 2 * len(counter)), dtype=np.int64) - _OFFSET
    return counter[:n]


def _places(width: int) -> np.ndarray:
    places = _PLACES.get(width)
    if places is None:
        places = _PLACES[width] = (np.arange(width, dtype=np.int64) * 8) << 40
    return places


def kept_indices_packed(packed: np.ndarray, k: int, hidden_size: int) -> np.ndarray:
    """`kept_indices` straight from the stored bitpacked masks, on the host, without unpacking them.

    The work is per mask byte and per kept entry, not per mask bit. Each byte's set bits are counted and
    their running sum says where its entries go; one `np.repeat` hands every entry its byte's key
    (first dimension 8 * byte, value * 8 - output start); the entry's rank r within its byte is then its
    output index minus the start, and a 2,048-entry table gives the dimension of byte b's r-th set bit.
    Single-threaded timeit at d = 768, k = 77, batches of 32 x 9 vectors, this was the fastest of the
    forms tried: ~3.5x `np.unpackbits` + `np.flatnonzero`, ~5x a padded 8-per-byte table with a boolean
    compaction, ~12x unpacking in torch and a stable argsort (`kept_indices`).

    Args:
        packed: (..., ceil(d/8)) uint8 masks, little bit order; k bits set per non-empty vector, none in an
            empty slot.
    Returns:
        (..., k) int64 kept dimensions, ascending; an empty slot gets 0..k-1 (its values are zero and its
        position -1, so it adds nothing).
    Raises:
        StoreError: a vector has neither k nor 0 bits set (the masks disagree with the stored values).
    """
    width = packed.shape[-1]
    if width * 8 >= 1 << 16 or k == 0:
        raise ValueError(f"kept_indices_packed: k={k} of {width * 8} dimensions is outside 1..65535")
    rows = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1, width)
    counts = _popcount(rows)                                               # (V, bytes) uint8
    starts = np.empty(rows.shape, dtype=np.int64)                          # each byte's first output entry
    flat_starts = starts.reshape(-1)
    flat_starts[0] = 0
    np.cumsum(counts.reshape(-1)[:-1], out=flat_starts[1:])
    ends = np.append(starts[:, 0], flat_starts[-1] + int(counts[-1, -1]))
    per_vector = np.diff(ends)
    empty = per_vector == 0
    if not np.all((per_vector == k) | empty):
        from ..errors import StoreError

        bad = int(np.flatnonzero((per_vector != k) & ~empty)[0])
        raise StoreError(f"store masks hold {int(per_vector[bad])} set bits in a vector that stores {k} values: "
                         "the store is corrupt; re-extract it.")
    if empty.any():   # an empty slot takes dimensions 0..k-1: k more entries, every later start moves by k
        filler = np.packbits(np.arange(width * 8) < k, bitorder="little")
        rows = rows.copy()
        rows[empty] = filler
        counts = _popcount(rows)
        starts += (k * (np.cumsum(empty) - empty))[:, None]
        starts[empty] += np.cumsum(_popcount(filler), dtype=np.int64) - _popcount(filler)
    key = rows.astype(np.int64)        # place << 40 | (value * 8 - start + _OFFSET), built in place
    key <<= 3
    key -= starts
    key += _OFFSET
    key |= _places(width)
    expanded = np.repeat(key.reshape(-1), counts.reshape(-1))
    index = expanded & _LOW
    index += _counter(expanded.size)                                       # value * 8 + rank
    positions = _SELECT.take(index)
    expanded >>= 40
    positions += expanded
    return positions.reshape(*packed.shape[:-1], k)


def sparse_hsk_loss(student_hidden: list[torch.Tensor], positions: torch.Tensor, values: torch.Tensor,
                    indices: torch.Tensor | None, projection: torch.nn.Module, hidden_size: int,
                    variant: str = "masked-zero") -> torch.Tensor:
    """HSK loss summed over distilled layer pairs, from kept values and their indices.

    Args:
        student_hidden: D tensors (B, T, d_S), the student's layers paired in order with the stored ones.
        positions: (B, D, n) token positions, -1 for an empty slot (excluded).
        values: (B, D, n, k) the teacher's kept values (k = d when nothing was dropped).
        indices: (B, D, n, k) kept dimensions per vector, (k,) one static set for all, or None for all d.
        projection: P, d_S -> d.
        hidden_size: d, the teacher's width (the masked-zero loss averages over all d entries).
        variant: masked-zero | kept, as in `losses.hsk_loss`.
    Returns:
        scalar loss.
    """
    if variant not in ("masked-zero", "kept"):
        raise ValueError(f"unknown HSK loss {variant!r}; expected one of ('masked-zero', 'kept')")
    total = values.new_zeros((), dtype=torch.float32)
    k = values.shape[-1]
    for layer, hidden in enumerate(student_hidden):
        pos = positions[:, layer]                                          # (B, n)
        valid = (pos >= 0).to(torch.float32)                               # (B, n)
        student = projection(gather_tokens(hidden, pos)).float()          # (B, n, d)
        target = values[:, layer].float()                                  # (B, n, k)
        if indices is None:
            at_kept = student
        elif indices.dim() == 1:
            at_kept = student.index_select(-1, indices)                    # (B, n, k)
        else:
            index = indices[:, layer]                                      # (B, n, k)
            at_kept = student.gather(-1, index)
        kept_error = at_kept - target                                      # (B, n, k)
        if variant == "kept" and indices is not None:
            per_vector = (kept_error * kept_error).sum(-1)                 # (B, n)
            denominator = (valid.sum() * k).clamp(min=1)
        else:
            # s with s_i - t_i at the kept entries: the dropped entries' targets are zero.
            if indices is None:
                residual = kept_error
            elif indices.dim() == 1:
                residual = student.index_copy(-1, indices, kept_error)
            else:
                residual = student.scatter(-1, index, kept_error)
            per_vector = (residual * residual).sum(-1)                     # (B, n)
            denominator = (valid.sum() * hidden_size).clamp(min=1)
        total = total + (per_vector * valid).sum() / denominator
    return total
