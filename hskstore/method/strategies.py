"""The length and width strategies, each a small object in one registry: add a strategy here, nowhere else.

A length strategy says which tokens may be kept and how they rank. A width strategy says which
activations of a kept token vector are kept, and declares what the rest of the package asks of it:
whether the choice is per vector (a mask per kept vector in the store's `masks` array) or one static
mask for the whole store, whether a smaller width's choice always lies within a larger one's (so
`hskstore slice` and the sweep's cover stores may derive it), and how a per-vector choice re-ranks the
stored values for a smaller width. The store, selection, slicing and the sweep read these properties;
none of them tests a strategy's name. The CLI's choices and `Compression`'s validation read these
dicts. Shapes: B batch, T sequence, d hidden, k kept activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch is imported where it is used: `hskstore --help` reads this registry
    import torch

__all__ = ["LengthStrategy", "WidthStrategy", "LENGTH", "WIDTH", "length_choices", "width_choices", "top_magnitude",
           "magnitude_order", "top_k_by"]


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


def top_k_by(order: Callable[[torch.Tensor], torch.Tensor], vectors: torch.Tensor, k: int,
             value_dtype: str | None = None, value_bits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-vector top-k under a ranking: (..., d) -> values (..., k) in ascending dimension order, mask (..., d) bool.

    `order` ranks the values as the store keeps them (`value_dtype`, `value_bits` rounding), so ranking
    the stored values again (`WidthStrategy.rerank`) sees exactly what extraction saw. A quantized store
    (int8, int4) is ranked by the float16 values its codes are made from: ranking the codes themselves would
    tie most of a vector at int4 (15 levels), and a float16 store then requantizes to the same bytes.
    """
    import torch

    from .bits import round_mantissa

    stored = vectors if value_dtype is None else vectors.to(getattr(torch, value_dtype))
    if value_bits is not None:
        stored = round_mantissa(stored, value_bits)
    index = order(stored)[..., :k].sort(dim=-1).values  # (..., k)
    values = vectors.gather(-1, index)
    mask = torch.zeros(vectors.shape, dtype=torch.bool, device=vectors.device).scatter_(-1, index, True)
    return values, mask


def top_magnitude(vectors: torch.Tensor, k: int, value_dtype: str | None = None,
                  value_bits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-vector top-k by |h| (`mag`), ties to the lower dimension: see `top_k_by`."""
    return top_k_by(magnitude_order, vectors, k, value_dtype, value_bits)


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
    """Which activations of a kept vector are stored, and what that implies for the store.

    Exactly one of `order` (per vector: the store keeps a (d,) mask per kept vector) and `static` (one
    (d,) mask for the whole store, its root `static_mask` array) is given.
    """

    name: str
    per_vector: bool        # a (d,) mask per kept vector is stored (the split array `masks`)
    nests: bool             # a smaller k keeps a subset of a larger k's activations: slice and sweep covers may derive it
    static: Callable[[int, int, int], torch.Tensor] | None = None   # (d, k, seed) -> (d,) bool, shared by all vectors
    order: Callable[[torch.Tensor], torch.Tensor] | None = None     # per vector: stored values (..., m) -> indices, best first
    description: str = ""

    def __post_init__(self):
        if self.per_vector != (self.order is not None) or self.per_vector == (self.static is not None):
            raise ValueError(f"width strategy {self.name!r}: a per-vector strategy gives `order`, a static one "
                             f"`static` (exactly one), got per_vector={self.per_vector}")

    def choose(self, vectors: torch.Tensor, k: int, value_dtype: str | None = None,
               value_bits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per vector: (..., d) -> values (..., k) in ascending dimension order, mask (..., d) bool."""
        if self.order is None:
            raise ValueError(f"width strategy {self.name!r} keeps one static mask, not a mask per vector")
        return top_k_by(self.order, vectors, k, value_dtype, value_bits)

    def rerank(self, stored: torch.Tensor, k: int) -> torch.Tensor:
        """Which of a vector's stored values (..., m) a smaller width k keeps: (..., k) indices, ascending.

        What extraction with k would have kept (`hskstore slice`) when m = d, or when the strategy nests.
        """
        if self.order is None:
            raise ValueError(f"width strategy {self.name!r} cannot re-rank its stored values for a smaller width")
        return self.order(stored)[..., :k].sort(dim=-1).values

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
    WidthStrategy("mag", per_vector=True, nests=True, order=magnitude_order,
                  description="the k largest |h| of each vector (the paper's best)"),
    WidthStrategy("uniform", per_vector=False, nests=False, static=_uniform_mask,
                  description="dimensions round(i*d/k)"),
    # One seed's rand masks are prefixes of one permutation of the d dimensions.
    WidthStrategy("rand", per_vector=False, nests=True, static=_rand_mask,
                  description="k seeded random dimensions"),
)}


def length_choices() -> list[str]:
    """Length strategies chosen by name (`all` comes with N^L = all)."""
    return [name for name, s in LENGTH.items() if not s.every_token]


def width_choices() -> list[str]:
    return list(WIDTH)
