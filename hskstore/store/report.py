"""What a store holds and what it costs: the numbers behind `hskstore info`."""

from __future__ import annotations

import numpy as np

from . import open_store
from .format import raw_hsk_bytes, value_format_of

__all__ = ["store_info", "format_info", "COMPONENTS"]

# Components as the paper's Table 3 counts them, plus what a teacher-free trainer needs besides HSK.
COMPONENTS = {
    "values": ("values",),
    "scales": ("value_scales",),          # quantized stores: float16 scales per kept vector
    "masks": ("masks", "static_mask"),
    "positions": ("positions",),
    "tokens": ("input_ids", "token_type_ids", "lengths"),
    "logits": ("logits",),
    "labels": ("labels",),
}


def store_info(location, allow_incomplete: bool = False, storage_options: dict | None = None) -> dict:
    """Config, counts, A^HSK, and bytes on disk per component of a store (all splits together)."""
    with open_store(location, allow_incomplete=allow_incomplete, storage_options=storage_options) as store:
        store.check_records()   # a listing and the metadata, no chunk decoded: damage points to verify
        return _describe(store)


def _describe(store) -> dict:
    resolved, compression = store.resolved, store.compression
    on_disk = store.nbytes()
    per_array: dict[str, int] = {"static_mask": on_disk["static_mask"]}
    for key, size in on_disk.items():
        if "/" in key:
            name = key.split("/", 1)[1]
            per_array[name] = per_array.get(name, 0) + size
    components = {c: sum(per_array.get(a, 0) for a in arrays) for c, arrays in COMPONENTS.items()}
    examples = {s: store.split(s).num_examples for s in store.splits}
    total_examples = sum(examples.values())
    # Real tokens, needed for the size of the full HSK of the same data (written chunks only: an
    # unwritten chunk of an incomplete store would read as zero-length examples).
    tokens, counted = 0, 0
    for split in store.splits:
        reader = store.split(split)
        for k in sorted(store.chunks_done(split)):
            lengths = reader.read_chunk(k, ["lengths"])["lengths"].astype(np.int64)
            tokens, counted = tokens + int(lengths.sum()), counted + len(lengths)
    student_layers = compression.student_layers
    d = resolved.hidden_size
    full_units_per_example = (student_layers + 1) * tokens / max(counted, 1)
    # A^HSK = N^D * N^L * N^W / d; with every token kept (`all`), N^L is the real tokens, not the padding.
    length = tokens / max(counted, 1) if compression.length_strategy == "all" else resolved.length
    amount = resolved.depth * length * resolved.width / d
    raw_bytes = raw_hsk_bytes(resolved, compression, total_examples)
    # float16, every mapped layer, every real token (extrapolated to unwritten chunks of a partial store)
    full_hsk_bytes = (student_layers + 1) * tokens * total_examples / max(counted, 1) * d * 2
    hsk_bytes = components["values"] + components["scales"] + components["masks"] + components["positions"]
    value_format = value_format_of(compression, resolved)
    total_bytes = on_disk["total"]
    return {
        "path": store.location,
        "backend": store.backend,
        "uuid": store.uuid,
        "complete": store.complete,
        "format_version": store.attrs["format_version"],
        "created_by": store.attrs.get("created_by"),
        "teacher": store.teacher,
        "task": store.task["name"],
        "compression": compression.to_dict(),
        # float16 (with value_bits when rounded), int8 or int4; bytes per kept vector before the codec
        "value_format": {"name": value_format.name, "value_bits": compression.value_bits,
                         "scale": (None if not value_format.quantized else
                                   "float16 lo, hi per vector" if value_format.log else "float16 per vector"),
                         "raw_bytes_per_vector": (value_format.stored_width + 2 * value_format.scales_per_vector
                                                  if value_format.quantized else
                                                  resolved.width * np.dtype(compression.value_dtype).itemsize)},
        "mask_codec": store.attrs.get("codecs", {}).get("masks"),   # None: no per-vector masks stored
        "teacher_layers": resolved.teacher_layer_ids,
        "triple": [resolved.depth, resolved.length, resolved.width],
        "max_length": resolved.max_length,
        "truncated": store.attrs.get("truncated"),   # None: a store from before it was recorded
        "examples": examples,
        "mean_tokens": tokens / max(counted, 1),
        "amount_hsk": amount,
        "full_hsk_units": full_units_per_example,
        "fraction_of_full": amount / full_units_per_example if full_units_per_example else None,
        "bytes": components | {"hsk": hsk_bytes, "total": total_bytes},
        "bytes_per_example": {c: b / max(total_examples, 1) for c, b in (components | {"hsk": hsk_bytes, "total": total_bytes}).items()},
        "raw_hsk_bytes": int(raw_bytes),
        "full_hsk_bytes": int(full_hsk_bytes),
        "compression_ratio_vs_full": full_hsk_bytes / hsk_bytes if hsk_bytes else None,
        "derived_from": store.attrs.get("derived_from"),
        "summary": store.attrs.get("summary"),
    }


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} TB"


def format_info(info: dict) -> str:
    """One screen of text for `hskstore info`."""
    c = info["compression"]
    lines = [
        f"store       {info['path']}  ({'complete' if info['complete'] else 'INCOMPLETE'}, {info.get('backend', 'zarr')}, format v{info['format_version']}, {info['created_by']})",
        f"teacher     {info['teacher']['path']}  ({info['teacher']['num_layers']} layers, d={info['teacher']['hidden_size']}, "
        f"{info['teacher']['num_heads']} heads, vocab {info['teacher']['vocab_size']})",
        f"task        {info['task']}  examples {info['examples']}  mean tokens {info['mean_tokens']:.1f} / max {info['max_length']}",
        _truncation_line(info),
        f"compression (N^D, N^L, N^W) = {tuple(info['triple'])}  L'={c['student_layers']}  teacher layers {info['teacher_layers']}",
        f"            length {c['length_strategy']} (score {c['score_kind']}, {c['score_layer']} layer)  width {c['width_strategy']}  values {_values(info)}",
        f"A^HSK       {info['amount_hsk']:.3f} token vectors per example = {100 * (info['fraction_of_full'] or 0):.3f}% of full HSK ({info['full_hsk_units']:.1f})",
        "on disk     component     total        per example",
    ]
    per = info["bytes_per_example"]
    for name in ("values", "scales", "masks", "positions", "tokens", "logits", "labels", "hsk", "total"):
        if name == "scales" and not info["bytes"][name]:
            continue   # float16 stores have none
        codec = f"  ({info['mask_codec']})" if name == "masks" and info.get("mask_codec") else ""
        lines.append(f"            {name:<12}  {_size(info['bytes'][name]):>10}   {per[name]:>9.1f} B{codec}")
    ratio = info["compression_ratio_vs_full"]
    lines.append(f"full HSK    {_size(info['full_hsk_bytes'])} as float16 (L'+1 layers x every real token x d): "
                 f"{ratio:.0f}x the stored HSK" if ratio else f"full HSK    {_size(info['full_hsk_bytes'])}")
    summary = info.get("summary") or {}
    if summary.get("examples_per_second"):
        lines.append(f"extraction  {summary['examples_extracted']} examples in {summary['seconds']:.1f} s "
                     f"({summary['examples_per_second']:.0f} ex/s on {summary['device']}, "
                     f"{_batching(summary)})")
    return "\n".join(lines)


def _values(info: dict) -> str:
    """How the values are stored, for the info screen: float16, float16 (7 mantissa bits), int4 + scale..."""
    fmt, c = info.get("value_format") or {}, info["compression"]
    if fmt.get("scale"):
        scale = fmt["scale"] if fmt["name"] == "int4-log" else f"{fmt['scale']} scale"
        return f"{fmt['name']} + {scale} ({fmt['raw_bytes_per_vector']} B a vector before the codec)"
    bits = c.get("value_bits")
    return c["value_dtype"] + (f" ({bits} mantissa bits)" if bits is not None else "")


def _truncation_line(info: dict) -> str:
    """Examples longer than the max length, as a fraction of each split (a warning above 1%)."""
    truncated = info.get("truncated")
    if truncated is None:
        return "truncated   not recorded (a store from before hskstore counted it)"
    parts = [f"{s} {n} of {info['examples'].get(s, 0)} ({n / max(info['examples'].get(s, 0), 1):.1%})"
             for s, n in truncated.items()]
    over = any(n / max(info["examples"].get(s, 0), 1) > 0.01 for s, n in truncated.items())
    return (f"truncated   {', '.join(parts)} longer than {info['max_length']} tokens"
            + ("  (warning: over 1%; extract with a larger --max-length)" if over else ""))


def _batching(summary: dict) -> str:
    if summary.get("batch_size"):
        return f"batch {summary['batch_size']}"
    if summary.get("batch_tokens"):
        return f"batches of {summary['batch_tokens']} tokens"
    return "batch ?"
