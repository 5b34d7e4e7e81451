"""The ROSITA-style student: a post-LN BERT encoder whose head count, FFN width and embedding rank are free.

transformers 5 no longer prunes heads, and a stock BertConfig ties the attention width to the hidden size
(num_heads * head_size == hidden_size), so a student with 6 of 12 heads of size 32 in a 384-wide model
needs its own module. Parameter names follow BERT's where they can, so the surgery at the end of this file
(`rosita_weights`: teacher tensors cut to the kept heads, neurons and embedding rank) reads as a table from
teacher keys to student keys. With nothing pruned it computes exactly what BertForSequenceClassification
computes. Scoring heads and neurons and the `build_rosita` builder live in `student.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["StudentOutput", "RositaConfig", "RositaStudent", "ACTIVATIONS", "check_rosita_request", "rosita_weights"]


class StudentOutput(NamedTuple):
    """What every student returns; the trainer depends on nothing else."""

    hidden_states: tuple[torch.Tensor, ...]   # L'+1 tensors (B, T, d_S); index 0 = embedding output
    logits: torch.Tensor                      # (B, C)


# BERT's "gelu" is the exact erf form; "gelu_new" is the tanh approximation.
ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class RositaConfig:
    """Shape of a ROSITA-style student. Head size stays the teacher's, so the head count is free."""

    vocab_size: int
    hidden_size: int                      # d (= the teacher's; ROSITA prunes width inside layers only)
    num_layers: int                       # L'
    num_heads: int                        # heads kept per layer
    head_size: int                        # the teacher's d / H
    intermediate_size: int                # FFN neurons kept per layer
    num_labels: int
    embedding_rank: int | None = None     # r of the word-embedding factorisation; None: a plain (vocab x d) table
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    dropout: float = 0.1                  # hidden, attention and classifier dropout alike
    pad_token_id: int = 0

    def __post_init__(self):
        problems = []
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "head_size", "intermediate_size",
                     "num_labels", "max_position_embeddings", "type_vocab_size"):
            if not _positive_int(getattr(self, name)):
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        rank = self.embedding_rank
        if rank is not None and not _positive_int(rank):
            problems.append(f"embedding_rank must be a positive integer or None (no factorisation), got {rank!r}")
        elif rank is not None and _positive_int(self.vocab_size) and _positive_int(self.hidden_size) \
                and rank > min(self.vocab_size, self.hidden_size):
            problems.append(
                f"embedding_rank must be at most min(vocab_size, hidden_size) = "
                f"{min(self.vocab_size, self.hidden_size)}, got {rank}; use None for no factorisation"
            )
        if self.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act must be one of {sorted(ACTIVATIONS)}, got {self.hidden_act!r}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not self.layer_norm_eps > 0:
            problems.append(f"layer_norm_eps must be positive, got {self.layer_norm_eps!r}")
        if problems:
            raise ConfigError(problems)

    @property
    def attention_size(self) -> int:
        """Inner width of attention: num_heads * head_size (need not equal hidden_size)."""
        return self.num_heads * self.head_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RositaConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown RositaConfig fields {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)


class RositaEmbeddings(nn.Module):
    """Word (optionally (vocab x r) then bias-free r -> d), position and token-type embeddings, LayerNorm."""

    def __init__(self, config: RositaConfig):
        super().__init__()
        width = config.embedding_rank or config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, width, padding_idx=config.pad_token_id)
        self.word_projection = (
            nn.Linear(config.embedding_rank, config.hidden_size, bias=False) if config.embedding_rank else None
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """Args: input_ids, token_type_ids (B, T). Returns (B, T, d)."""
        words = self.word_embeddings(input_ids)                      # (B, T, r or d)
        if self.word_projection is not None:
            words = self.word_projection(words)                      # (B, T, d)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        # Same summation order as BertEmbeddings, so float rounding matches the teacher.
        x = words + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)[None]
        return self.dropout(self.LayerNorm(x))


class RositaAttention(nn.Module):
    """Self-attention with num_heads * head_size inner width, then BERT's dense + residual + LayerNorm."""

    def __init__(self, config: RositaConfig):
        super().__init__()
        d, inner = config.hidden_size, config.attention_size
        self.num_heads, self.head_size = config.num_heads, config.head_size
        self.query = nn.Linear(d, inner)
        self.key = nn.Linear(d, inner)
        self.value = nn.Linear(d, inner)
        self.output = nn.Linear(inner, d)
        self.LayerNorm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout_p = config.dropout
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Args: x (B, T, d); mask (B, 1, 1, T) additive, or None. Returns (B, T, d)."""
        batch, length, _ = x.shape

        def heads(t):                                                 # (B, T, H*h) -> (B, H, T, h)
            return t.view(batch, length, self.num_heads, self.head_size).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x)),
            attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0,
        )                                                             # (B, H, T, h)
        context = context.transpose(1, 2).reshape(batch, length, -1)  # (B, T, H*h)
        return self.LayerNorm(self.dropout(self.output(context)) + x)


class RositaFeedForward(nn.Module):
    """d -> intermediate -> d, residual, LayerNorm."""

    def __init__(self, config: RositaConfig):
        super().__init__()
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.output(self.act(self.intermediate(x)))) + x)


class RositaLayer(nn.Module):
    def __init__(self, config: RositaConfig):
        super().__init__()
        self.attention = RositaAttention(config)
        self.ffn = RositaFeedForward(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.ffn(self.attention(x, mask))


class RositaStudent(nn.Module):
    """BERT-like post-LN encoder with a BERT pooler and classifier; forward returns StudentOutput."""

    kind = "rosita"

    def __init__(self, config: RositaConfig):
        super().__init__()
        self.config = config
        self.embeddings = RositaEmbeddings(config)
        self.layers = nn.ModuleList(RositaLayer(config) for _ in range(config.num_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # BERT's initialisation (std 0.02), for students that are not built from a teacher.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    num_layers = property(lambda self: self.config.num_layers)
    hidden_size = property(lambda self: self.config.hidden_size)
    vocab_size = property(lambda self: self.config.vocab_size)
    num_labels = property(lambda self: self.config.num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> StudentOutput:
        """Args: input_ids, attention_mask (1 = real token), token_type_ids: (B, T).

        Returns: StudentOutput with L'+1 hidden states (B, T, d) and logits (B, C).
        """
        x = self.embeddings(input_ids, token_type_ids)               # (B, T, d)
        mask = None
        if attention_mask is not None:
            # Additive rather than boolean: an all-padding row then gets uniform attention, not NaN.
            keep = attention_mask[:, None, None, :].to(x.dtype)      # (B, 1, 1, T)
            mask = (1.0 - keep) * torch.finfo(x.dtype).min
        hidden = [x]
        for layer in self.layers:
            x = layer(x, mask)
            hidden.append(x)
        pooled = torch.tanh(self.pooler(x[:, 0]))                    # (B, d)
        logits = self.classifier(self.dropout(pooled))               # (B, C)
        return StudentOutput(tuple(hidden), logits)


# ------------------------------------------------------------------------------- surgery from a teacher

def check_rosita_request(path, config: dict, num_layers, num_heads, intermediate_size, embedding_rank) -> None:
    """Raise one ConfigError listing every requested size outside the teacher's (its config.json dict)."""
    limits = {
        "num_layers": (num_layers, config["num_hidden_layers"], "teacher layers"),
        "num_heads": (num_heads, config["num_attention_heads"], "teacher heads per layer"),
        "intermediate_size": (intermediate_size, config["intermediate_size"], "teacher FFN neurons"),
        "embedding_rank": (embedding_rank, min(config["vocab_size"], config["hidden_size"]),
                           "min(vocab, hidden) of the teacher"),
    }
    problems = []
    for name, (value, limit, what) in limits.items():
        if value is None and name != "num_layers":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
            problems.append(f"{name} must be an integer in 1..{limit} ({what} of {path}), got {value!r}")
    if config["hidden_size"] % config["num_attention_heads"]:
        problems.append(f"teacher hidden_size {config['hidden_size']} is not a multiple of its "
                        f"{config['num_attention_heads']} heads; hskstore needs equal head sizes")
    if problems:
        raise ConfigError(problems)


def _eigh_single_thread(matrix: torch.Tensor):
    # A small (d x d) eigh is 50x slower with several OpenMP threads than with one on a busy CPU
    # (measured: 0.03 s vs 1.7-5 s for d = 384 on 2 cores), so run it alone and restore the setting.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(matrix)
    finally:
        torch.set_num_threads(threads)


def rosita_weights(teacher, config: RositaConfig, heads: list, neurons: list, rank: int | None) -> dict:
    """Student key -> tensor cut from the teacher: head slices, neuron rows/columns, the SVD factors.

    Args:
        teacher: BertForSequenceClassification with at least config.num_layers layers.
        heads: per kept layer, the kept head indices (k,), ascending.
        neurons: per kept layer, the kept FFN neuron indices (F',), ascending.
        rank: embedding rank r, or None to copy the (V, d) word table as is.
    Returns:
        {student key: tensor}, to be copied in key by key with shapes checked.
    """
    t = {k: v.detach() for k, v in teacher.state_dict().items()}
    h = config.head_size
    out = {}
    emb = "bert.embeddings."
    word = t[emb + "word_embeddings.weight"]                                   # (V, d)
    if rank is None:
        out["embeddings.word_embeddings.weight"] = word
    else:
        # Truncated SVD E ~ (U_r S_r) V_r^T, the best rank-r approximation. V and S^2 come from the
        # eigendecomposition of the small Gram matrix E^T E (d x d) in float64, and U_r S_r = E V_r:
        # the same factors as a full SVD of the (V x d) table, in 0.2 s instead of 5-7 s for 30k x 384.
        # On the CPU whatever the teacher's device: Apple's mps has no float64.
        e = word.to("cpu", torch.float64)                                     # (V, d)
        _, vectors = _eigh_single_thread(e.T @ e)                             # ascending eigenvalues
        v_r = vectors[:, -rank:].flip(-1)                                     # (d, r), largest first
        out["embeddings.word_embeddings.weight"] = (e @ v_r).to(word.device, word.dtype)   # (V, r) = U_r S_r
        out["embeddings.word_projection.weight"] = v_r.contiguous().to(word.device, word.dtype)  # (d, r) = V_r
    for name in ("position_embeddings.weight", "token_type_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias"):
        out["embeddings." + name] = t[emb + name]
    for i in range(config.num_layers):
        src, dst = f"bert.encoder.layer.{i}.", f"layers.{i}."
        cols = torch.cat([torch.arange(j * h, (j + 1) * h) for j in heads[i].tolist()])  # kept head dims
        keep = neurons[i]
        for name in ("query", "key", "value"):
            out[f"{dst}attention.{name}.weight"] = t[f"{src}attention.self.{name}.weight"][cols]
            out[f"{dst}attention.{name}.bias"] = t[f"{src}attention.self.{name}.bias"][cols]
        out[f"{dst}attention.output.weight"] = t[f"{src}attention.output.dense.weight"][:, cols]
        out[f"{dst}attention.output.bias"] = t[f"{src}attention.output.dense.bias"]
        out[f"{dst}ffn.intermediate.weight"] = t[f"{src}intermediate.dense.weight"][keep]
        out[f"{dst}ffn.intermediate.bias"] = t[f"{src}intermediate.dense.bias"][keep]
        out[f"{dst}ffn.output.weight"] = t[f"{src}output.dense.weight"][:, keep]
        out[f"{dst}ffn.output.bias"] = t[f"{src}output.dense.bias"]
        for part, src_norm in (("attention", "attention.output"), ("ffn", "output")):
            for p in ("weight", "bias"):
                out[f"{dst}{part}.LayerNorm.{p}"] = t[f"{src}{src_norm}.LayerNorm.{p}"]
    for p in ("weight", "bias"):
        out[f"pooler.{p}"] = t[f"bert.pooler.dense.{p}"]
        out[f"classifier.{p}"] = t[f"classifier.{p}"]
    return out
