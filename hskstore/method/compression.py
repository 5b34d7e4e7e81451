"""The compression triple (N^D, N^L, N^W) and how it resolves against a teacher (docs/method.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..errors import ConfigError
from ..options import option
from .quantize import QUANTIZED_FORMATS, VALUE_FORMATS
from .strategies import LENGTH, WIDTH, WidthStrategy, length_choices, width_choices

__all__ = [
    "Compression",
    "ResolvedCompression",
    "layer_mapping",
    "strict_from_dict",
    "default_l_top",
    "SCORE_KINDS",
    "SCORE_LAYERS",
    "parse_count",
    "parse_width",
    "VALUE_FORMATS",
]

SCORE_KINDS = ("logits", "softmax")      # pre-softmax q.k/sqrt(h) (code, the default) or post-softmax (paper text)
SCORE_LAYERS = ("uniform", "same")       # score from layer g(l, L) ("Att (L_top=L)"), or the stored layer g(l, L_top)
VALUE_DTYPES = ("float16", "float32")


def strict_from_dict(cls, data: dict, what: str):
    """Build a config dataclass from a dict, naming unknown keys instead of a TypeError from __init__."""
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown {what} keys {sorted(unknown)}; known: {sorted(known)}")
    return cls(**data)


def parse_count(text: str) -> int | None:
    """N^D or N^L as the command line writes it: a whole count, or 'all' (None)."""
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected a whole number or 'all', got {text!r}") from None


def parse_width(text: str) -> float | int | None:
    """N^W as the command line writes it: 'all', a fraction with a decimal point (0.1, 1.0) or a whole count (38, 1)."""
    if text == "all":
        return None
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        raise ValueError(f"expected a count (38), a fraction of d (0.1) or 'all', got {text!r}") from None


def layer_mapping(student_layers: int, l_top: int) -> list[int]:
    """g(l, L_top) = round(l * L_top / L') for l = 0..L', Python's round (half to even)."""
    return [round(i * l_top / student_layers) for i in range(student_layers + 1)]


def default_l_top(teacher_layers: int) -> int:
    """10 for a 12-layer teacher, round(10 * L / 12) in general."""
    return round(10 * teacher_layers / 12)


@dataclass(frozen=True)
class Compression:
    """What a store keeps. `None` means "all" along that dimension (full HSK)."""

    depth: int | None = option(1, "N^D: top student layers kept, or 'all'.", parse=parse_count)  # None: all L'+1
    length: int | None = option(9, "N^L: tokens kept per layer, or 'all'.", parse=parse_count)  # None: strategy `all`
    width: float | int | None = option(            # a count, or a fraction of d when < 1 (None or 1.0: all d)
        0.1, "N^W: activations kept, a count or fraction of d, or 'all'.", parse=parse_width)
    student_layers: int = option(3, "L': student depth the layer mapping is for.")
    l_top: int | None = option(None, "Teacher layer for the student's top layer.", default_text="round(10L/12)")
    length_strategy: str = option("att-nosep", "How the N^L tokens are ranked (docs/method.md).",
                                  choices=length_choices)
    score_layer: str = option("uniform", "Rank tokens with the attention of layer g(l, L) (uniform) or of the "
                              "stored layer (same).", choices=SCORE_LAYERS)
    score_kind: str = option("logits", "Average pre-softmax scores (released code; ahead over 3 seeds, "
                             "docs/results.md) or post-softmax attention (the paper's text).", choices=SCORE_KINDS)
    width_strategy: str = option("mag", "How the N^W activations are chosen (docs/method.md).",
                                 choices=width_choices)
    width_seed: int = option(0, "Seed of the static `rand` width mask.")
    value_dtype: str = option("float16", "dtype of the stored activations.", choices=VALUE_DTYPES)
    value_bits: int | None = option(None, "Lossy: keep this many of float16's 10 mantissa bits (7: ~0.4% error, "
                                    "smaller store).", default_text="exact")
    value_format: str = option("float16", "How stored activations are encoded: float16; int8/int4 with one float16 "
                               "scale per vector (symmetric absmax); int4-log, sign and a log-spaced magnitude "
                               "between each vector's smallest and largest (docs/store-format.md).", choices=VALUE_FORMATS)

    def __post_init__(self):
        problems = []
        if self.student_layers < 1:
            problems.append(f"student_layers (L') must be >= 1, got {self.student_layers}")
        if self.depth is not None and not 1 <= self.depth <= self.student_layers + 1:
            problems.append(
                f"depth N^D must be in 1..L'+1 = 1..{self.student_layers + 1} for L'={self.student_layers}, "
                f"got {self.depth}: lower --depth or raise --student-layers"
            )
        if self.length is not None and self.length < 1:
            problems.append(f"length N^L must be >= 1, got {self.length}")
        if self.width is not None and not (self.width > 0):
            problems.append(f"width N^W must be a positive count or a fraction in (0, 1], got {self.width}")
        if isinstance(self.width, float) and self.width > 1 and not self.width.is_integer():
            problems.append(f"width N^W above 1 must be a whole count, got {self.width}")
        for name, value, allowed in (
            ("length_strategy", self.length_strategy, tuple(LENGTH)),
            ("score_layer", self.score_layer, SCORE_LAYERS),
            ("score_kind", self.score_kind, SCORE_KINDS),
            ("width_strategy", self.width_strategy, tuple(WIDTH)),
            ("value_dtype", self.value_dtype, VALUE_DTYPES),
            ("value_format", self.value_format, VALUE_FORMATS),
        ):
            if value not in allowed:
                problems.append(f"{name} must be one of {list(allowed)}, got {value!r}")
        if self.value_bits is not None and not (self.value_dtype == "float16" and 1 <= self.value_bits <= 9):
            problems.append(f"value_bits rounds float16 mantissas: expected 1..9 with value_dtype float16, "
                            f"got {self.value_bits} with {self.value_dtype}")
        if self.value_format in QUANTIZED_FORMATS and (self.value_dtype != "float16" or self.value_bits is not None):
            problems.append(f"value_format {self.value_format} quantizes the float16 values: it goes with value_dtype "
                            f"float16 and no value_bits, got value_dtype {self.value_dtype}, value_bits {self.value_bits}")
        every = [name for name, s in LENGTH.items() if s.every_token]
        if self.length_strategy in LENGTH and (self.length is None) != LENGTH[self.length_strategy].every_token:
            problems.append(f"length N^L = all goes with length_strategy {' or '.join(map(repr, every))} (and only then)")
        if problems:
            raise ConfigError(problems)

    @classmethod
    def full(cls, student_layers: int, l_top: int | None = None, value_dtype: str = "float16",
             value_format: str = "float16") -> "Compression":
        """Full HSK: every mapped layer, every token, every activation (the uncompressed baseline)."""
        return cls(depth=None, length=None, width=None, student_layers=student_layers, l_top=l_top,
                   length_strategy="all", value_dtype=value_dtype, value_format=value_format)

    def encode_values(self, values) -> dict:
        """Selected teacher values as extraction stores them: {"values": ...} and, quantized, "value_scales".

        Cast to the value dtype, mantissa-rounded (`value_bits`), then int8/int4 codes with one float16 scale
        per vector (method/quantize.py).
        """
        import torch

        from .bits import round_mantissa
        from .quantize import quantize

        stored = values.to(getattr(torch, self.value_dtype))
        if self.value_bits is not None:
            stored = round_mantissa(stored, self.value_bits)
        if not self.quantized:
            return {"values": stored}
        codes, scales = quantize(stored, self.value_format)
        return {"values": codes, "value_scales": scales}

    def as_stored(self, values):
        """Teacher values as a store of this compression hands them to the trainer, float32: encoded as
        extraction writes them and decoded as the reader does, so online training distils from exactly these."""
        from .quantize import ValueFormat, dequantize

        encoded = self.encode_values(values)
        if not self.quantized:
            return encoded["values"].float()
        return dequantize(encoded["values"], encoded["value_scales"],
                          ValueFormat(self.value_format, values.shape[-1], None))

    def to_dict(self) -> dict:
        """The fields as a store records them; `value_format` only when quantized, so a float16 store's
        attributes are what they were before the option existed (and older readers still open it)."""
        data = asdict(self)
        if data["value_format"] == "float16":
            del data["value_format"]
        return data

    @property
    def quantized(self) -> bool:
        return self.value_format in QUANTIZED_FORMATS

    @classmethod
    def from_dict(cls, data: dict) -> "Compression":
        return strict_from_dict(cls, data, "compression")

    @property
    def width_rule(self) -> WidthStrategy:
        """The registered width strategy: per-vector or static masks, whether they nest, how to re-rank."""
        return WIDTH[self.width_strategy]

    def per_vector_masks(self, resolved: "ResolvedCompression") -> bool:
        """Whether the store keeps a (d,) mask per kept vector (the `masks` array): k < d, per-vector strategy."""
        return resolved.has_mask and self.width_rule.per_vector

    def static_mask(self, resolved: "ResolvedCompression"):
        """(d,) bool torch mask shared by every kept vector (the root `static_mask` array), or None."""
        if not resolved.has_mask or self.width_rule.per_vector:
            return None
        return self.width_rule.static_mask(resolved.hidden_size, resolved.width, self.width_seed)

    def resolve(self, teacher_layers: int, hidden_size: int, max_length: int) -> "ResolvedCompression":
        """Check the triple against a teacher and a max length; return concrete layer ids and counts."""
        problems = []
        l_top = default_l_top(teacher_layers) if self.l_top is None else self.l_top
        if not 1 <= l_top <= teacher_layers:
            problems.append(f"l_top must be in 1..{teacher_layers} (the teacher's layers), got {l_top}")
        depth = self.student_layers + 1 if self.depth is None else self.depth
        length = max_length if self.length is None else self.length
        if length > max_length:
            problems.append(
                f"length N^L={length} is larger than the max sequence length {max_length}: "
                f"lower --length or raise --max-length"
            )
        if self.width is None:
            width = hidden_size
        elif isinstance(self.width, float) and self.width <= 1:
            width = max(1, round(self.width * hidden_size))
        else:
            width = int(self.width)
        if width > hidden_size:
            problems.append(f"width N^W={width} is larger than the teacher's hidden size d={hidden_size}: "
                            f"lower --width (a count <= d or a fraction <= 1)")
        if problems:
            raise ConfigError(problems)
        student_ids = list(range(self.student_layers - depth + 1, self.student_layers + 1))
        stored = layer_mapping(self.student_layers, l_top)
        uniform = layer_mapping(self.student_layers, teacher_layers)
        teacher_ids = [stored[l] for l in student_ids]
        score_source = uniform if self.score_layer == "uniform" else stored
        # The attention that outputs H_k is encoder layer k-1; H_0 (embeddings) takes the first layer's.
        score_ids = [max(score_source[l], 1) - 1 for l in student_ids]
        return ResolvedCompression(
            l_top=l_top,
            depth=depth,
            length=length,
            width=width,
            hidden_size=hidden_size,
            max_length=max_length,
            student_layer_ids=student_ids,
            teacher_layer_ids=teacher_ids,
            score_layer_ids=score_ids,
        )


@dataclass(frozen=True)
class ResolvedCompression:
    l_top: int
    depth: int                    # N^D
    length: int                   # N^L
    width: int                    # N^W as a count
    hidden_size: int              # d
    max_length: int               # T
    student_layer_ids: list[int]  # l = L'-N^D+1 .. L'
    teacher_layer_ids: list[int]  # g(l, L_top) for those l: indices into hidden_states (0 = embeddings)
    score_layer_ids: list[int]    # encoder layer whose [CLS] attention ranks tokens, per stored layer

    @property
    def has_mask(self) -> bool:
        """Some activations are dropped (k < d): the store keeps a mask, per vector or static (the strategy says)."""
        return self.width < self.hidden_size

    @property
    def mask_bytes(self) -> int:
        return (self.hidden_size + 7) // 8

    def amount(self) -> float:
        """A^HSK = N^D * N^L * N^W / d, in units of full token vectors."""
        return self.depth * self.length * self.width / self.hidden_size

    def to_dict(self) -> dict:
        return asdict(self)
