"""`hskstore verify`: read every recorded chunk of every array and name the bad ones.

Chunks carry checksums (CRC-32C in Zarr, Fletcher-32 in HDF5), the per-split chunk records included, and
every written chunk is recorded, so a flipped byte, a truncated or a deleted chunk object is found here, by
split, array and chunk index.
"""

from __future__ import annotations

from ..errors import StoreError
from . import open_store
from .format import rerun_hint

__all__ = ["verify_store"]


def verify_store(location, storage_options: dict | None = None, max_problems: int = 20) -> dict:
    """Check a store end to end. Returns a summary; raises StoreError naming the first bad chunk.

    Raises:
        StoreError: a damaged or missing chunk, a damaged tokenizer or static mask, or an incomplete store.
    """
    problems: list[str] = []
    checked = 0
    with open_store(location, allow_incomplete=True, storage_options=storage_options) as store:
        for split in store.splits:
            reader = store.split(split)
            try:
                done = store.chunks_done(split)   # the chunk record, read through its checksum
            except StoreError as exc:
                problems.append(f"{split}/chunks_written (the chunk record) {_reason(str(exc))}")
                continue
            for k in range(reader.num_chunks):
                if k not in done:
                    problems.append(f"{split} chunk {k} was never written")
                    continue
                start, stop = reader.chunk_bounds(k)
                for name in reader.array_names:
                    try:
                        data = store._read(split, name, start, stop)
                    except StoreError as exc:
                        problems.append(f"{split}/{name} chunk {k}: {_reason(str(exc))}")
                        continue
                    if len(data) != stop - start:
                        problems.append(f"{split}/{name} chunk {k}: {len(data)} rows, expected {stop - start}")
                    checked += 1
                if len(problems) >= max_problems:
                    break
        try:
            store.check_records()   # array metadata that does not parse
        except StoreError as exc:
            message = str(exc)   # missing chunks are named by the reads above; metadata only here
            problems.append(message.split(": ", 1)[-1].split(";")[0] if "metadata" in message else "")
        problems = [p for p in problems if p]
        for part, read in (("tokenizer", store.tokenizer_files), ("static_mask", store.static_mask_packed)):
            try:
                read()
            except StoreError as exc:  # read through their checksums: any decode failure is damage
                problems.append(f"{part} {_reason(str(exc))}")
        complete, hint = store.complete, rerun_hint(store.attrs)
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:4])})" if len(problems) > 1 else ""
        raise StoreError(f"{location} failed verification: {problems[0]}{more}; re-extract the store"
                         + ("" if complete else f" (it is incomplete: {hint})"))
    return {"store": str(location), "complete": complete, "chunks_checked": checked}


def _reason(message: str) -> str:
    for marker in ("is missing", "is damaged"):
        if marker in message:
            return message[message.index(marker):].split(";")[0]
    return message[:100]
