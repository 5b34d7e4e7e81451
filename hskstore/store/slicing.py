"""`hskstore slice`: derive a smaller store from a larger one, with no teacher.

The stored order makes each dimension nest: layers are the top N^D student layers (a smaller N^D is a
suffix), token positions are stored best first (a smaller N^L is a prefix), and under a per-vector width
strategy that nests (`mag`) the kept activations of a vector are its top-k by the strategy's ranking (a
smaller k is the top of those, re-ranked by `WidthStrategy.rerank`). Static width masks (`uniform`, `rand`)
nest only when the smaller mask is a subset of the larger one; that is checked.
The sliced store is written through the store's writer transaction (`transaction.py`): locked, and under
--overwrite built beside the old store and swapped in at the end.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import uuid as _uuid

import numpy as np

from ..errors import StoreError
from . import open_store
from ..method.quantize import PRECISION, QUANTIZED_FORMATS, dequantize_numpy, quantize_numpy
from .format import (SCALES_ARRAY, array_specs, check_mask_codec, mask_codec_of, unpack_bits_numpy, value_format_of,
                     version_for)
from .location import StoreLocation
from .transaction import StoreTransaction

__all__ = ["slice_store", "plan_slice"]


def plan_slice(store, depth=None, length=None, width=None, value_format=None):
    """The smaller (Compression, ResolvedCompression), or a one-line StoreError when it cannot be derived.

    `None` keeps the store's own value for that dimension (and its value format). A float16 store may be
    quantized to int8, int4-log or int4 and a quantized store to a coarser one (int8 > int4-log > int4); never
    to a finer format, and its width is never cut (its codes cannot be re-ranked as extraction ranks: slice the
    float16 store instead).
    """
    from ..method.compression import Compression
    from ..errors import ConfigError

    c, r = store.compression, store.resolved
    source_format = c.value_format
    target_format = source_format if value_format is None else value_format
    if target_format not in PRECISION:
        raise StoreError(f"unknown value format {target_format!r}: expected one of {list(PRECISION)}")
    if PRECISION[target_format] > PRECISION[source_format]:
        raise StoreError(f"{store.location} holds {source_format} values: they cannot be requantized to the finer "
                         f"{target_format}; slice or convert the float16 store they came from (or re-extract)")
    if target_format in QUANTIZED_FORMATS and target_format != source_format:
        if c.value_bits is not None:
            raise StoreError(f"{store.location} holds values rounded to {c.value_bits} mantissa bits: quantize an "
                             f"exact float16 store to {target_format} (or re-extract with --value-format {target_format})")
        c = dataclasses.replace(c, value_format=target_format, value_dtype="float16")
    if c.length_strategy == "all" and length is not None:
        # Every token in left order: a prefix of it is exactly `left` with N^L tokens.
        c = dataclasses.replace(c, length_strategy="left", length=r.length)
    changes = {"depth": r.depth if depth is None else depth,
               "length": c.length if length is None else length,
               "width": (r.width if c.width is not None else None) if width is None else width}
    try:
        new_c = Compression.from_dict(c.to_dict() | changes)
        new_r = new_c.resolve(store.teacher["num_layers"], r.hidden_size, r.max_length)
    except ConfigError as exc:
        raise StoreError(f"cannot slice to (depth, length, width) = {depth, length, width}: {exc}") from None
    if source_format in QUANTIZED_FORMATS and new_r.width != r.width:
        raise StoreError(f"cannot cut the width of a {source_format} store ({r.width} -> {new_r.width}): its codes do "
                         "not rank as extraction ranks; slice the float16 store it came from, or re-extract")
    larger = [f"{name} {new} > stored {old}" for name, new, old in
              (("N^D", new_r.depth, r.depth), ("N^L", new_r.length, r.length), ("N^W", new_r.width, r.width))
              if new > old]
    if larger:
        raise StoreError(f"cannot derive a larger store by slicing ({', '.join(larger)}): "
                         "extract it from the teacher instead")
    if new_r.teacher_layer_ids != r.teacher_layer_ids[r.depth - new_r.depth:] or \
            new_r.score_layer_ids != r.score_layer_ids[r.depth - new_r.depth:]:
        raise StoreError("the sliced layers are not the top layers of the stored ones: slicing keeps L' and L_top")
    smaller = new_c.static_mask(new_r)
    if smaller is not None:
        smaller = smaller.numpy()
        stored = store.static_mask()
        stored = np.ones(r.hidden_size, bool) if stored is None else stored
        if not np.all(stored[smaller]):
            raise StoreError(f"the {new_c.width_strategy} mask of {new_r.width} activations is not a subset of the "
                             f"stored {r.width}: static masks of these widths do not nest; extract it from the teacher")
    elif r.has_mask and new_r.width < r.width and not new_c.width_rule.nests:
        raise StoreError(f"width strategy {new_c.width_strategy!r} does not nest: its choice of {new_r.width} "
                         f"activations cannot be re-ranked from the stored {r.width}; extract it from the teacher")
    return new_c, new_r


def _retop(values: np.ndarray, masks: np.ndarray | None, hidden: int, k: int, positions: np.ndarray, width):
    """Per vector, the k of the kept values that `width` (a WidthStrategy) ranks first: (..., k_old) -> values
    (..., k), packed masks."""
    import torch

    values_t = torch.from_numpy(values)
    if masks is None:  # every activation stored: dims are 0..d-1
        dims = torch.arange(hidden).expand(*values.shape[:-1], hidden)
    else:
        bits = torch.from_numpy(unpack_bits_numpy(masks, hidden))
        # The kept dims of each vector, ascending (as the values are stored): stable sort of the 0/1 mask.
        dims = bits.to(torch.int8).argsort(dim=-1, descending=True, stable=True)[..., :values.shape[-1]]
    # Ranked as extraction ranks (the stored values), back to ascending dimension order.
    index = width.rerank(values_t, k)
    new_values = values_t.gather(-1, index)
    new_dims = dims.gather(-1, index)
    mask = torch.zeros(*values.shape[:-1], hidden, dtype=torch.bool).scatter_(-1, new_dims, True)
    mask &= torch.from_numpy(positions >= 0).unsqueeze(-1)
    empty = torch.from_numpy(positions < 0).unsqueeze(-1)
    new_values = new_values.masked_fill(empty, 0)
    return new_values.numpy(), np.packbits(mask.numpy(), axis=-1, bitorder="little")


def _slice_chunk(reader, k: int, rows: int, new_r, drop: int, names: set, column_index, d: int,
                 width_rule, old_width: int, source_format, target_format) -> dict:
    """Chunk k of one split of the source, cut to the smaller store's layers, tokens and activations, and
    quantized to `target_format` when the source's format differs (method/quantize.py)."""
    start = k * reader.chunk_rows
    data = reader.read_rows(start, min(start + reader.chunk_rows, rows))
    positions = data["positions"][:, drop:, :new_r.length]
    values = data["values"][:, drop:, :new_r.length]
    scales = data[SCALES_ARRAY][:, drop:, :new_r.length] if SCALES_ARRAY in data else None
    out = {n: a for n, a in data.items() if n not in ("positions", "values", "masks", SCALES_ARRAY)}
    out["positions"] = np.ascontiguousarray(positions)
    if column_index is not None:
        values = values[..., column_index]
    elif "masks" in names:
        masks = data["masks"][:, drop:, :new_r.length] if "masks" in data else None
        if new_r.width < old_width or masks is None:
            values, out["masks"] = _retop(values, masks, d, new_r.width, positions, width_rule)
        else:
            out["masks"] = np.ascontiguousarray(masks)
    if target_format.name != source_format.name:   # from float16, or from a finer format's decoded values
        source = values if scales is None else dequantize_numpy(values, scales, source_format)
        values, scales = quantize_numpy(source, target_format.name)
    out["values"] = np.ascontiguousarray(values)
    if scales is not None:
        out[SCALES_ARRAY] = np.ascontiguousarray(scales)
    return out


def slice_store(src, dst, *, depth=None, length=None, width=None, limit: int | None = None,
                overwrite: bool = False, src_options: dict | None = None, dst_options: dict | None = None,
                value_format: str | None = None, mask_codec: str | None = None, command: str = "slice") -> dict:
    """Write the (depth, length, width) sub-store of `src` to `dst`; `limit` keeps each split's first rows;
    `value_format` (int8, int4, int4-log) quantizes the values as extraction would have (None: the store's
    format); `mask_codec` (format.MASK_CODECS) writes the masks with that codec, recorded in `codecs` as
    extract's --mask-codec records it (None: the source's, so a zstd19 store slices to a zstd19 store).

    `src` and `dst` are paths or URLs (with `src_options`, `dst_options`) or StoreLocations.
    """
    if limit is not None and limit < 1:
        raise StoreError(f"--limit must be >= 1, got {limit}")
    check_mask_codec(mask_codec)
    src, dst = StoreLocation.of(src, src_options), StoreLocation.of(dst, dst_options)
    transaction = StoreTransaction(dst, command=command, overwrite=overwrite, option="DST")
    with open_store(src) as store:
        new_c, new_r = plan_slice(store, depth, length, width, value_format)
        transaction.check()
        old_c, old_r = store.compression, store.resolved
        d = old_r.hidden_size
        drop = old_r.depth - new_r.depth
        source_format, target_format = value_format_of(old_c, old_r), value_format_of(new_c, new_r)
        splits = {s: min(n, limit) if limit else n for s, n in store.attrs["splits"].items()}
        specs = array_specs(new_r, new_c, store.teacher["vocab_size"], store.num_labels,
                            mask_codec=mask_codec or mask_codec_of(store.attrs))
        names = {s.name for s in specs}
        static = None
        column_index = None  # static masks: which stored value columns the smaller mask keeps
        smaller = new_c.static_mask(new_r)
        if smaller is not None:
            smaller = smaller.numpy()
            stored = store.static_mask()
            stored = np.ones(d, bool) if stored is None else stored
            column_index = np.flatnonzero(smaller[np.flatnonzero(stored)])
            column_index = None if new_r.width == old_r.width else column_index   # every stored column
            static = np.packbits(smaller, bitorder="little")
        attrs = dict(store.attrs)
        attrs.update(
            uuid=str(_uuid.uuid4()),
            created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            compression=new_c.to_dict(), resolved=new_r.to_dict(), amount_hsk=new_r.amount(),
            splits=splits, codecs={s.name: s.codec for s in specs}, complete=False, layout_complete=False,
            summary=None, format_version=version_for(specs),
            derived_from={"uuid": store.uuid, "location": store.location, "compression": old_c.to_dict(),
                          "limit": limit},
        )
        attrs.pop("chunks_done", None)
        with transaction:
            writer = transaction.open_writer(attrs, specs, static, store.tokenizer_files())
            try:
                for split, rows in splits.items():
                    reader = store.split(split)
                    for k in range(-(-rows // store.chunk_rows)):
                        writer.write_chunk(split, k, _slice_chunk(reader, k, rows, new_r, drop, names, column_index, d,
                                                                  new_c.width_rule, old_r.width, source_format,
                                                                  target_format))
                writer.mark_complete({"sliced_from": store.location, "examples": sum(splits.values())})
            finally:
                writer.close()
            transaction.commit()
    return {"source": str(src), "destination": str(dst), "triple": [new_r.depth, new_r.length, new_r.width],
            "amount_hsk": new_r.amount(), "examples": splits, "value_format": new_c.value_format}
