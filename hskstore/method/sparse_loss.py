"""HSK losses from the kept entries alone: no dense (B, D, n, d) target tensor is ever built.

A store keeps k of d activations per selected token vector. The masked-zero loss compares the student's
projected vector s with the teacher's vector t masked to zero outside the kept set M:

    ||s - M*t||^2 = ||s||^2 + sum_{i in M} t_i (t_i - 2 s_i)

so it needs s (dense, the student's own) and, at the k kept dimensions only, t and s gathered there.
The `kept` variant is the MSE over kept entries: sum_{i in M} (s_i - t_i)^2. Both equal `losses.hsk_loss`
on densified targets within float32 rounding (tests/method/test_sparse_loss.py, gradients included).

B batch, T tokens, d_S student width, d teacher width, D stored layers, n token slots, k kept per vector.
"""

from __future__ import annotations

import torch

from .select import gather_tokens

__all__ = ["kept_indices", "sparse_hsk_loss"]


def kept_indices(mask: torch.Tensor, k: int) -> torch.Tensor:
    """The k kept dimensions of each vector, ascending (the order stored values follow).

    Args:
        mask: (..., d) bool, exactly k set per non-empty vector; an empty slot's vector may be all False.
    Returns:
        (..., k) int64; an empty slot gets 0..k-1 (its values are zero and its position -1, so it adds nothing).
    """
    # A stable descending sort of the 0/1 mask puts the kept dimensions first, in ascending order.
    return mask.to(torch.int8).argsort(dim=-1, descending=True, stable=True)[..., :k]


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
            at_kept = student.gather(-1, indices[:, layer])               # (B, n, k)
        if variant == "kept" and indices is not None:
            per_vector = ((at_kept - target) ** 2).sum(-1)                # (B, n)
            denominator = (valid.sum() * k).clamp(min=1)
        else:
            per_vector = (student * student).sum(-1) + (target * (target - 2 * at_kept)).sum(-1)
            denominator = (valid.sum() * hidden_size).clamp(min=1)
        total = total + (per_vector * valid).sum() / denominator
    return total
