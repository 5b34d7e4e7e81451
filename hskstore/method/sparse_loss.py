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

import functools

import numpy as np
import torch

from .bits import set_entries
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


def kept_indices_packed(packed: np.ndarray, k: int, hidden_size: int) -> np.ndarray:
    """`kept_indices` straight from the stored bitpacked masks, on the host: no sort.

    The bits are unpacked and their flat indices found in one pass of numpy's branch-free `nonzero`; they
    come in row-major order, so each run of k is one vector's kept dimensions, ascending. Timed
    single-threaded per CPU-second (timeit) at d = 768, k = 77, batches of 32 x 9 vectors, this was the
    fastest of the forms tried in this session: ~1.15x a per-byte table with one `np.repeat` of a per-byte
    key (the work per byte and per kept entry instead of per bit), ~2.5x plain `np.flatnonzero` on the
    unpacked bytes, ~15x unpacking in torch and a stable argsort (`kept_indices`). `benchmarks/reader.py`
    times the last three; searching only the non-zero bytes' bits (57% of them here) was 2x slower for the
    index arithmetic it adds. Around the search are a few whole-array numpy calls: emptiness read 8 bytes
    at a time, one contiguous subtraction of cached offsets, and the count check on each vector's first
    and last entry only (`benchmarks/reader_parts.py` times them against the previous checks).

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
    rows = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1, width)
    vectors = len(rows)
    # Emptiness 8 bytes at a time where the rows split into words (d a multiple of 64): 2.5x a byte-wise any.
    empty = ~(rows.view(np.uint64) if width % 8 == 0 else rows).any(-1)
    # Empty slots are filled before the search, not patched after it: left empty they would take the
    # density under numpy's 10% switch below (a (1, 9, 0.1) mask at d = 768 is 10.03% set).
    if empty.any():                                # an empty slot takes dimensions 0..k-1
        rows = rows.copy()
        rows[empty] = _first_k_packed(k, width)
    if width * 8 == hidden_size:
        # The bytes unpack as one run of bits; numpy's nonzero takes its branch-free loop only above 10%
        # density, so set bits are appended past the end when the masks are sparser (`bits.set_entries`
        # does the same by copying the unpacked bits; appending bytes here is 8x less to copy).
        n, count = vectors * hidden_size, vectors * k
        tail = 0 if count * 10 > n else ((n - 10 * count) // 9 + 8) // 8
        source = rows.reshape(-1) if not tail else np.concatenate((rows.reshape(-1), np.full(tail, 255, np.uint8)))
        found = np.flatnonzero(np.unpackbits(source, bitorder="little").view(bool))
        flat = found[:found.size - 8 * tail]       # row-major: vector by vector, ascending within each
    else:
        bits = np.unpackbits(rows, axis=-1, count=hidden_size, bitorder="little").view(bool)
        flat = set_entries(bits.reshape(-1))
    if flat.size == vectors * k:
        kept = flat.reshape(vectors, k)            # flat is this call's own array: changed in place
        np.subtract(flat, _row_offsets(vectors, k, hidden_size), out=flat)
        # Sorted entries, k a row: if each row's first and last lie in its own vector, every vector holds k.
        if not vectors or (kept[:, 0].min() >= 0 and kept[:, k - 1].max() < hidden_size):
            return kept.reshape(*packed.shape[:-1], k)
    from ..errors import StoreError

    counts = np.unpackbits(rows, axis=-1, count=hidden_size, bitorder="little").sum(-1)
    bad = int(np.flatnonzero(counts != k)[0])
    raise StoreError(f"store masks hold {int(counts[bad])} set bits in a vector that stores {k} values: "
                     "the store is corrupt; re-extract it.")


@functools.lru_cache(maxsize=4)    # a batch's shape and the last batch's: as large as one batch's indices
def _row_offsets(vectors: int, k: int, hidden_size: int) -> np.ndarray:
    """r * d repeated k times for each vector r: subtracted from the flat indices in one contiguous pass."""
    offsets = np.repeat(np.arange(vectors, dtype=np.int64) * hidden_size, k)
    offsets.flags.writeable = False
    return offsets


@functools.lru_cache(maxsize=16)
def _first_k_packed(k: int, width: int) -> np.ndarray:
    """The packed bytes of dimensions 0..k-1: what an empty slot's mask becomes."""
    first = np.packbits(np.arange(width * 8) < k, bitorder="little")
    first.flags.writeable = False
    return first


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
