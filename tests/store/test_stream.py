"""Streaming a store split: exactly-once epochs, seeded shuffles, kept values and dimensions on the device."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hskstore.method.select import densify, unpack_bits
from hskstore.method.sparse_loss import kept_indices
from hskstore.store import open_store
from hskstore.store.stream import StoreStream, keep_numpy, to_device


def _labels_and_ids(loader):
    ids = []
    for batch in loader:
        ids.append(batch["input_ids"][:, :8].astype(np.int64))
    return np.concatenate(ids)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_one_epoch_visits_every_example_exactly_once(tiny_store, workers):
    stream = StoreStream(tiny_store, "train", batch_size=7, seed=3)
    loader = DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=keep_numpy)
    seen = _labels_and_ids(loader)
    reference = open_store(tiny_store).split("train").read_rows(0, 120, ["input_ids"])["input_ids"][:, :8]
    key = lambda rows: sorted(map(tuple, rows.tolist()))
    assert len(seen) == 120
    assert key(seen) == key(reference)


def test_ranks_split_the_data_without_duplicates_or_gaps(tiny_store):
    parts = [list(StoreStream(tiny_store, "train", 16, rank=r, world_size=2, seed=1)) for r in range(2)]
    rows = [np.concatenate([b["input_ids"][:, :8] for b in part]) for part in parts]
    assert len(rows[0]) + len(rows[1]) == 120
    assert not set(map(tuple, rows[0].tolist())) & set(map(tuple, rows[1].tolist()))


def test_shuffles_are_seeded_per_epoch(tiny_store):
    def order(epoch, seed=0):
        stream = StoreStream(tiny_store, "train", 120, seed=seed)
        stream.set_epoch(epoch)
        return np.concatenate([b["input_ids"][:, 1] for b in stream]).tolist()

    assert order(0) == order(0)
    assert order(0) != order(1)
    unshuffled = StoreStream(tiny_store, "train", 200, shuffle=False)
    assert next(iter(unshuffled))["input_ids"].tolist() == open_store(tiny_store).split("train").read_rows(0, 120)["input_ids"].tolist()


def test_to_device_hands_over_kept_values_and_their_dimensions_not_full_width_targets(tiny_store):
    batch = next(iter(StoreStream(tiny_store, "train", 8, shuffle=False)))
    moved = to_device(batch, torch.device("cpu"), hidden_size=32)
    mask = unpack_bits(torch.from_numpy(batch["masks"]), 32)
    k = batch["values"].shape[-1]
    assert moved.values.shape == moved.kept.shape == (8, 2, 5, k) and k < 32
    assert moved.values.dtype == torch.float32 and moved.kept.dtype == torch.int64
    assert torch.equal(moved.values, torch.from_numpy(batch["values"]).float())
    assert torch.equal(moved.kept, kept_indices(mask, k))
    # The kept dimensions put the values back where the sorting densify puts them.
    rebuilt = torch.zeros(8, 2, 5, 32).scatter_(-1, moved.kept, moved.values)
    assert torch.equal(rebuilt, densify(moved.values, mask))
    assert not hasattr(moved, "targets") and not hasattr(moved, "mask")
    assert moved.input_ids.shape[1] == batch["lengths"].max()  # trimmed to the longest sequence
    assert moved.attention_mask.sum(1).tolist() == batch["lengths"].tolist()


def test_a_static_mask_hands_over_its_one_index_set_and_no_mask_none(tiny_store):
    batch = next(iter(StoreStream(tiny_store, "train", 4, shuffle=False)))
    static = torch.tensor([1, 5, 6], dtype=torch.int64)
    without_masks = {name: array for name, array in batch.items() if name != "masks"}
    assert to_device(without_masks, torch.device("cpu"), 32, static).kept is static
    assert to_device(without_masks, torch.device("cpu"), 32).kept is None


def test_prefetching_yields_the_same_batches_and_surfaces_errors(tiny_store):
    from hskstore.store.stream import Prefetcher

    direct = [b["input_ids"] for b in StoreStream(tiny_store, "train", 16, seed=2)]
    fetched = [b["input_ids"] for b in Prefetcher(StoreStream(tiny_store, "train", 16, seed=2))]
    assert all(np.array_equal(a, b) for a, b in zip(direct, fetched)) and len(direct) == len(fetched)

    def broken():
        yield 1
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        list(Prefetcher(broken()))


def test_closing_a_prefetcher_early_stops_its_thread(tiny_store):
    from hskstore.store.stream import Prefetcher

    with Prefetcher(StoreStream(tiny_store, "train", 4), depth=1) as batches:
        next(iter(batches))
    assert not batches._thread.is_alive()


@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_the_batch_count_is_exact_even_when_shards_end_in_partial_batches(tiny_store, workers):
    stream = StoreStream(tiny_store, "train", batch_size=12, seed=5)  # 12 does not divide the 32-row chunks
    for epoch in range(3):
        stream.set_epoch(epoch)
        loader = DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=keep_numpy)
        assert stream.num_batches(workers) == sum(1 for _ in loader)


@pytest.mark.parametrize("batch_size, workers", [(8, 1), (7, 1), (16, 1), (5, 2)])
def test_ranks_get_equally_many_batches_and_still_every_example_once(tiny_store, batch_size, workers):
    streams = [StoreStream(tiny_store, "train", batch_size, seed=4, rank=r, world_size=2) for r in range(2)]
    for epoch in range(3):
        for stream in streams:
            stream.set_epoch(epoch)
        plan = streams[0].batch_plan(workers)
        per_rank = [sum(len(plan[r * workers + k]) for k in range(workers)) for r in range(2)]
        assert per_rank[0] == per_rank[1] == streams[0].num_batches(workers)  # every rank: S batches
        assert all(0 < size <= batch_size for sizes in plan for size in sizes)
        batches = [list(DataLoader(s, batch_size=None, num_workers=workers, collate_fn=keep_numpy)) for s in streams]
        assert len(batches[0]) == len(batches[1]) == streams[0].num_batches(workers)
        seen = np.concatenate([b["input_ids"][:, :8] for part in batches for b in part])
        assert len(seen) == 120 and len(set(map(tuple, seen.tolist()))) == len(set(map(tuple, _all_ids(tiny_store))))


def _all_ids(store):
    return open_store(store).split("train").read_rows(0, 120, ["input_ids"])["input_ids"][:, :8].tolist()


def test_fewer_examples_than_processes_is_a_one_line_error(tiny_store):
    from hskstore.errors import ConfigError

    stream = StoreStream(tiny_store, "train", 1, rank=0, world_size=121)  # 120 examples for 121 ranks
    with pytest.raises(ConfigError, match="too few rows to give every rank a batch"):
        stream.num_batches()


def _reference_batches(stream, store):
    """The reader as first written: concatenate the buffer, permute, fancy-index a copy per array per batch."""
    reader = open_store(store).split(stream.split)
    rng = np.random.default_rng([stream.seed, stream.epoch, 0, 0])
    chunks = stream._chunk_order().tolist()
    sizes = stream.batch_plan(1)[0][::-1]
    buffer, buffered = {name: [] for name in stream.arrays}, 0
    for i, chunk in enumerate(chunks):
        data = reader.read_chunk(chunk, stream.arrays)
        for name in stream.arrays:
            buffer[name].append(data[name])
        buffered += len(data[stream.arrays[0]])
        if buffered >= stream.buffer_rows or i == len(chunks) - 1:
            rows = {name: np.concatenate(parts) for name, parts in buffer.items()}
            order = rng.permutation(buffered) if stream.shuffle else np.arange(buffered)
            start = 0
            while sizes and buffered - start >= sizes[-1]:
                index = order[start:start + sizes.pop()]
                start += len(index)
                yield {name: rows[name][index] for name in stream.arrays}
            buffer = {name: [rows[name][order[start:]]] for name in stream.arrays}
            buffered = len(order) - start


@pytest.mark.parametrize("batch_size, buffer_chunks, shuffle, world_size, drop_last",
                         [(7, 2, True, 1, False), (32, 1, True, 1, False), (50, 3, True, 1, True),
                          (16, 2, False, 1, False), (5, 2, True, 2, False)])
def test_batches_are_the_reference_readers_bit_for_bit(tiny_store, batch_size, buffer_chunks, shuffle, world_size,
                                                       drop_last):
    # Batches are gathered one by one from the buffered rows now; rows, order and bytes must be the copying reader's
    # one process. Several ranks: each takes its contiguous slice of one process's batch of batch_size * ranks.
    for epoch in range(2):
        whole = StoreStream(tiny_store, "train", batch_size * world_size, seed=3, buffer_chunks=buffer_chunks,
                            shuffle=shuffle, drop_last=drop_last)
        whole.set_epoch(epoch)
        global_batches = list(_reference_batches(whole, tiny_store))
        for rank in range(world_size):
            stream = StoreStream(tiny_store, "train", batch_size, seed=3, buffer_chunks=buffer_chunks, shuffle=shuffle,
                                 rank=rank, world_size=world_size, drop_last=drop_last)
            stream.set_epoch(epoch)
            reference = [{n: b[n][slice(*stream.rank_slice(0, len(b["lengths"])))] for n in b} for b in global_batches]
            ours = list(stream)
            assert len(ours) == len(reference) == stream.num_batches()
            for a, b in zip(ours, reference):
                assert a.keys() == b.keys()
                assert all(a[n].dtype == b[n].dtype and a[n].tobytes() == b[n].tobytes() for n in a)


def test_cpu_device_batches_are_the_sorting_reference_bit_for_bit(tiny_store):
    for batch in StoreStream(tiny_store, "train", 16, seed=1):
        moved = to_device(batch, torch.device("cpu"), hidden_size=32)
        mask = unpack_bits(torch.from_numpy(np.ascontiguousarray(batch["masks"])), 32)
        assert torch.equal(moved.kept, kept_indices(mask, moved.values.shape[-1]))
        assert moved.values.dtype == torch.float32
        assert torch.equal(moved.values.view(torch.int32),
                           torch.from_numpy(batch["values"]).float().view(torch.int32))


def test_cpu_batches_hold_the_stored_tokens_and_positions_as_int64_trimmed_to_the_longest_text(tiny_store):
    for batch in StoreStream(tiny_store, "train", 16, seed=1):
        moved = to_device(batch, torch.device("cpu"), hidden_size=32)
        lengths = batch["lengths"].astype(np.int64)
        width = int(lengths.max())
        for name in ("input_ids", "attention_mask", "token_type_ids", "positions"):
            assert getattr(moved, name).dtype == torch.int64, name
        assert torch.equal(moved.input_ids, torch.from_numpy(batch["input_ids"][:, :width].astype(np.int64)))
        assert torch.equal(moved.token_type_ids, torch.from_numpy(batch["token_type_ids"][:, :width].astype(np.int64)))
        expected_mask = (torch.arange(width)[None, :] < torch.from_numpy(lengths)[:, None]).long()
        assert torch.equal(moved.attention_mask, expected_mask)
        assert torch.equal(moved.positions, torch.from_numpy(batch["positions"].astype(np.int64)))
        assert torch.equal(moved.labels, torch.from_numpy(batch["labels"]))


def test_the_accelerator_path_unpacks_on_the_device_to_the_same_indices(tiny_store, monkeypatch):
    from hskstore.store import stream as stream_module

    batch = next(iter(StoreStream(tiny_store, "train", 16, seed=1)))
    host = to_device(batch, torch.device("cpu"), hidden_size=32)
    # "meta" is a device that is not the CPU: the masks must be copied packed and unpacked there.
    copied = []
    real_put = stream_module._put
    monkeypatch.setattr(stream_module, "_put", lambda array, device, dtype=None: copied.append(array.dtype) or
                        real_put(array, torch.device("cpu"), dtype))
    on_device = stream_module._device_kept(batch, torch.device("meta"), host.values.shape[-1], 32, None)
    assert copied == [np.uint8]                                      # the packed bytes, nothing unpacked
    assert torch.equal(on_device, host.kept)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_hold_the_same_kept_dimensions_and_values_as_cpu_ones(tiny_store):
    for batch in StoreStream(tiny_store, "train", 16, seed=1):
        host = to_device(batch, torch.device("cpu"), hidden_size=32)
        cuda = to_device(batch, torch.device("cuda"), hidden_size=32)
        assert cuda.kept.is_cuda and cuda.values.dtype == torch.float32
        assert torch.equal(cuda.kept.cpu(), host.kept) and torch.equal(cuda.values.cpu(), host.values)


@pytest.mark.parametrize("hidden_size, k, empty_fraction", [(21, 5, 0.3), (768, 77, 0.3), (768, 77, 0.0)])
def test_the_numpy_reader_path_equals_the_sorting_densify_bit_for_bit(hidden_size, k, empty_fraction):
    from hskstore.method.select import densify_packed, pack_bits, top_magnitude

    torch.manual_seed(0)
    vectors = torch.randn(6, 2, 9, hidden_size).half()
    values, mask = top_magnitude(vectors, k)                         # (6, 2, 9, k), (6, 2, 9, d)
    empty = torch.rand(6, 2, 9) < empty_fraction                     # short texts leave slots empty
    values, mask = values.masked_fill(empty[..., None], 0), mask & ~empty[..., None]
    targets, unpacked = densify_packed(values.numpy(), pack_bits(mask).numpy(), hidden_size)
    assert torch.equal(torch.from_numpy(unpacked), mask)
    assert torch.equal(torch.from_numpy(targets), densify(values.float(), mask))


def test_a_mask_that_disagrees_with_its_values_is_a_store_error():
    from hskstore.errors import StoreError
    from hskstore.method.select import densify_packed

    packed = np.zeros((2, 1), dtype=np.uint8)
    packed[0, 0] = 0b111                                             # 3 bits set, 2 values stored
    with pytest.raises(StoreError, match="corrupt"):
        densify_packed(np.ones((2, 2), dtype=np.float16), packed, 8)
    packed[0, 0] = 0b1                                               # 1 bit set, 2 values stored
    with pytest.raises(StoreError, match="corrupt"):
        densify_packed(np.ones((2, 2), dtype=np.float16), packed, 8)


def _served(streams, workers=0):
    """Each step's rows over the ranks (rank 0's slice first), as (step count, concatenated input_ids)."""
    loaders = [DataLoader(s, batch_size=None, num_workers=workers, collate_fn=keep_numpy) for s in streams]
    steps = [list(loader) for loader in loaders]
    assert len({len(s) for s in steps}) == 1                             # every rank: the same number of steps
    return len(steps[0]), np.concatenate([b["input_ids"] for parts in zip(*steps) for b in parts])


def _streams(store, global_batch, world_size, epoch=1, start=0, **options):
    streams = [StoreStream(store, "train", global_batch // world_size, seed=7, rank=r, world_size=world_size,
                           **options) for r in range(world_size)]
    for stream in streams:
        stream.set_epoch(epoch, start)
    return streams


@pytest.mark.parametrize("buffer_chunks", [1, 2, 3])
def test_the_global_order_depends_on_seed_and_epoch_not_on_ranks_or_workers(tiny_store, buffer_chunks):
    everything = open_store(tiny_store).split("train").read_rows(0, 120, ["input_ids"])["input_ids"]
    one = _streams(tiny_store, 16, 1, buffer_chunks=buffer_chunks)
    order, _, _ = one[0].global_order()
    steps, rows = _served(one)
    assert steps == 8 and rows.tobytes() == everything[order].tobytes()   # the order global_order names
    for world_size, workers in [(1, 2), (2, 0), (2, 2), (4, 1)]:
        assert _served(_streams(tiny_store, 16, world_size, buffer_chunks=buffer_chunks), workers)[1].tobytes() \
            == rows.tobytes(), (world_size, workers)
    other_epoch, _, _ = _streams(tiny_store, 16, 1, epoch=2)[0].global_order()
    assert sorted(other_epoch.tolist()) == list(range(120)) and other_epoch.tolist() != order.tolist()


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2), (2, 4), (4, 1)])
def test_a_resume_at_another_world_size_serves_exactly_the_examples_not_seen(tiny_store, before, after):
    everything = open_store(tiny_store).split("train").read_rows(0, 120, ["input_ids"])["input_ids"]
    order, _, _ = _streams(tiny_store, 16, 1)[0].global_order()
    first = _streams(tiny_store, 16, before)
    seen_steps = 3
    consumed = sum(b - a for a, b in first[0].global_batches()[:seen_steps])   # what the checkpoint records
    assert consumed == 48
    resumed = _streams(tiny_store, 16, after, start=consumed)
    steps, rest = _served(resumed)
    assert steps == 8 - seen_steps and rest.tobytes() == everything[order[consumed:]].tobytes()


def test_a_last_global_batch_too_small_for_every_rank_joins_the_one_before(tiny_store):
    streams = _streams(tiny_store, 7, 7)                                     # 120 = 17 * 7 + 1: 1 row for 7 ranks
    assert streams[0].global_batches()[-1] == (112, 120)
    plan = streams[0].batch_plan(1)
    assert {len(sizes) for sizes in plan} == {17} and all(min(sizes) >= 1 for sizes in plan)
    steps, rows = _served(streams)
    everything = open_store(tiny_store).split("train").read_rows(0, 120, ["input_ids"])["input_ids"]
    order, _, _ = streams[0].global_order()
    assert steps == 17 and rows.tobytes() == everything[order].tobytes()


def test_a_rank_reads_only_the_chunks_that_hold_its_rows(tiny_store, monkeypatch):
    """Resumed after all but the last global batch, a rank needs the rows of one buffer: it reads those chunks."""
    stream = _streams(tiny_store, 16, 2, start=112)[1]
    read = []
    original = StoreStream._chunks_read_ahead

    def counting(self, reader, chunks):
        read.extend(chunks)
        return original(self, reader, chunks)

    monkeypatch.setattr(StoreStream, "_chunks_read_ahead", counting)
    order, _, _ = stream.global_order()
    a, b = stream.rank_slice(112, 120)
    assert len(list(stream)) == 1
    assert sorted(read) == sorted(set((order[a:b] // 32).tolist()))
