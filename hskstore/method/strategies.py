"""The length and width strategies, each a small object in one registry: add a strategy here, nowhere else.

A length strategy says which tokens may be kept and how they rank; a width strategy says which
activations of a kept token vector are kept and whether that choice is stored per vector (a mask in
the store) or fixed for the whole store (one static mask). The CLI's choices and `Compression`'s
validation read these dicts; `select.py` and `Selector` call the functions. Shapes: B batch, T
sequence, d hidden, k kept activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch is imported where it is used: `hskstore --help` reads this registry
    import torch

__all__ = ["LengthStrategy", "WidthStrategy", "LENGTH", "WIDTH", "length_choices", "width_choices", "top_magnitude", "magnitude_order"]


@dataclass(frozen=True)
class LengthStrategy:
    name: str
    needs_scores: bool          # ranks by the teacher's [CLS] attention row: the recorder must run
    keeps_sep: bool             # [SEP] may be chosen ([PAD] never is)
    every_token: bool = False   # keeps all T tokens: chosen by N^L = all, not by name
    description: str = ""

    def eligible(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, sep_id: int) -> torch.Tensor:
        """(B, T) bool: tokens this strategy may choose."""
        eligible = attention_mask.bool()
        return eligible if self.keeps_sep else eligible & (input_ids != sep_id)

    def scores(self, cls_scores: torch.Tensor | None, eligible: torch.Tensor) -> torch.Tensor:
        """(B, T) ranking scores, higher first: the [CLS] row, or a decreasing score over positions."""
        import torch

        if self.needs_scores:
            return cls_scores
        batch, length = eligible.shape
        return -torch.arange(length, device=eligible.device, dtype=torch.float32).expand(batch, length)


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
    import torch

    from .bits import round_mantissa

    stored = vectors if value_dtype is None else vectors.to(getattr(torch, value_dtype))
    if value_bits is not None:
        stored = round_mantissa(stored, value_bits)
    index = magnitude_order(stored)[..., :k].sort(dim=-1).values  # (..., k)
    values = vectors.gather(-1, index)
    mask = torch.zeros(vectors.shape, dtype=torch.bool, device=vectors.device).scatter_(-1, index, True)
    return values, mask


def _uniform_mask(hidden_size: int, k: int, seed: int) -> torch.Tensor:
    import torch

    mask = torch.zeros(hidden_size, dtype=torch.bool)
    mask[[round(i * hidden_size / k) for i in range(k)]] = True
    return mask


def _rand_mask(hidden_size: int, k: int, seed: int) -> torch.Tensor:
    import torch

    mask = torch.zeros(hidden_size, dtype=torch.bool)
    mask[torch.randperm(hidden_size, generator=torch.Generator().manual_seed(seed))[:k]] = True
    return mask


@dataclass(frozen=True)
class WidthStrategy:
    name: str
    per_vector: bool                                               # a (d,) mask per kept vector is stored
    static: Callable[[int, int, int], torch.Tensor] | None = None  # (d, k, seed) -> (d,) bool, shared by all
    choose: Callable[[torch.Tensor, int], tuple] | None = None     # per vector: (..., d), k -> values, mask
    description: str = ""

    def static_mask(self, hidden_size: int, k: int, seed: int = 0) -> torch.Tensor:
        """(d,) bool mask shared by every vector of the store."""
        if self.static is None:
            raise ValueError(f"width strategy {self.name!r} keeps a mask per vector, not a static one")
        return self.static(hidden_size, k, seed)


LENGTH: dict[str, LengthStrategy] = {s.name: s for s in (
    LengthStrategy("att-nosep", needs_scores=True, keeps_sep=False,
                   description="highest [CLS] attention, [SEP] excluded (the paper's best)"),
    LengthStrategy("att", needs_scores=True, keeps_sep=True, description="highest [CLS] attention"),
    LengthStrategy("left", needs_scores=False, keeps_sep=True, description="the leftmost tokens"),
    LengthStrategy("all", needs_scores=False, keeps_sep=True, every_token=True,
                   description="every token (N^L = all)"),
)}

WIDTH: dict[str, WidthStrategy] = {s.name: s for s in (
    WidthStrategy("mag", per_vector=True, choose=top_magnitude, description="the k largest |h| of each vector (the paper's best)"),
    WidthStrategy("uniform", per_vector=False, static=_uniform_mask, description="dimensions round(i*d/k)"),
    WidthStrategy("rand", per_vector=False, static=_rand_mask, description="k seeded random dimensions"),
)}


def length_choices() -> list[str]:
    """Length strategies chosen by name (`all` comes with N^L = all)."""
    return [name for name, s in LENGTH.items() if not s.every_token]


def width_choices() -> list[str]:
    return list(WIDTH)
