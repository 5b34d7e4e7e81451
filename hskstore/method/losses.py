"""Distillation losses (docs/method.md). Pure functions with shapes in the docstrings.

`hsk_loss` is the HSK loss written on full-width targets, the reference; training computes it from the
kept entries (`method.sparse_loss`).

B batch, T tokens, d_S student width, d teacher width, D stored layers, n token slots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: `hskstore train --help` reads HSK_LOSSES
    import torch

__all__ = ["HSK_LOSSES", "hsk_loss", "soft_cross_entropy", "prediction_loss"]

HSK_LOSSES = ("masked-zero", "kept")


def hsk_loss(student_hidden: list[torch.Tensor], positions: torch.Tensor, targets: torch.Tensor,
             mask: torch.Tensor | None, projection: torch.nn.Module, variant: str = "masked-zero") -> torch.Tensor:
    """HSK loss summed over distilled layer pairs, from dense full-width targets: the reference definition.

    `hskstore train` and `HskDataset.hsk_loss` compute the same loss from the kept entries alone
    (`method.sparse_loss.sparse_hsk_loss`); this dense form is what the tests hold that one to.

    Args:
        student_hidden: D tensors (B, T, d_S), the student's layers paired in order with the stored ones.
        positions: (B, D, n) token positions, -1 for an empty slot (excluded).
        targets: (B, D, n, d) teacher vectors with zeros outside the kept entries (M * H^T).
        mask: (B, D, n, d) or (d,) bool kept entries; None when every entry is kept.
        projection: P, d_S -> d (identity when d_S = d), shared by all layers.
        variant: `masked-zero` — MSE over every entry of each selected vector, masked teacher entries
            being targets of zero (the released code's form); `kept` — MSE over kept entries only.
    Returns:
        scalar loss.
    """
    from .select import gather_tokens

    total = targets.new_zeros(())
    d = targets.shape[-1]
    for layer, hidden in enumerate(student_hidden):
        pos = positions[:, layer]                                      # (B, n)
        valid = (pos >= 0).to(targets.dtype)                           # (B, n)
        student = projection(gather_tokens(hidden, pos)).float()       # (B, n, d)
        error = (student - targets[:, layer]) ** 2                     # (B, n, d)
        if variant == "kept" and mask is not None:
            layer_mask = mask if mask.dim() == 1 else mask[:, layer]
            kept = layer_mask.to(targets.dtype).expand_as(error)
            denominator = (kept * valid.unsqueeze(-1)).sum().clamp(min=1)
            total = total + (error * kept * valid.unsqueeze(-1)).sum() / denominator
        elif variant in HSK_LOSSES:
            denominator = (valid.sum() * d).clamp(min=1)
            total = total + (error * valid.unsqueeze(-1)).sum() / denominator
        else:
            raise ValueError(f"unknown HSK loss {variant!r}; expected one of {HSK_LOSSES}")
    return total


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """-(softmax(t/T) * log_softmax(s/T)).sum(-1).mean(); logits (B, C)."""
    import torch.nn.functional as F

    targets = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return -(targets * F.log_softmax(student_logits.float() / temperature, dim=-1)).sum(-1).mean()


def prediction_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """Soft cross-entropy to the teacher's logits; regression (C = 1) uses MSE to the gold label."""
    import torch.nn.functional as F

    if student_logits.shape[-1] == 1:
        return F.mse_loss(student_logits.float().squeeze(-1), labels.float())
    return soft_cross_entropy(student_logits, teacher_logits, temperature)
