"""The HSK loss from kept entries equals the dense loss on densified targets (value and gradients), and the kept
dimensions read from packed mask bytes equal those of the sorted mask."""

import pytest
import torch

from hskstore.method.losses import hsk_loss
from hskstore.method.select import densify
from hskstore.method.sparse_loss import kept_indices, kept_indices_packed, sparse_hsk_loss

B, T, D, N, D_S, D_T, K = 3, 12, 2, 4, 8, 16, 5


def _case(seed: int, mask_kind: str):
    generator = torch.Generator().manual_seed(seed)
    hidden = [torch.randn(B, T, D_S, generator=generator, requires_grad=True) for _ in range(D)]
    positions = torch.randint(0, T, (B, D, N), generator=generator)
    positions[0, :, -1] = -1                                         # an empty slot in each layer
    projection = torch.nn.Linear(D_S, D_T)
    with torch.no_grad():
        projection.weight.copy_(torch.randn(D_T, D_S, generator=generator) * 0.3)
    if mask_kind == "per-vector":
        scores = torch.rand(B, D, N, D_T, generator=generator)
        mask = torch.zeros(B, D, N, D_T, dtype=torch.bool)
        mask.scatter_(-1, scores.topk(K, dim=-1).indices, True)
        mask[0, :, -1] = False                                       # empty slots store no entries
        values = torch.randn(B, D, N, K, generator=generator)
        values[0, :, -1] = 0
        return hidden, positions, projection, values, mask, kept_indices(mask, K)
    if mask_kind == "static":
        mask = torch.zeros(D_T, dtype=torch.bool)
        mask[torch.randperm(D_T, generator=generator)[:K]] = True
        return hidden, positions, projection, torch.randn(B, D, N, K, generator=generator), mask, \
            mask.nonzero().squeeze(-1)
    return hidden, positions, projection, torch.randn(B, D, N, D_T, generator=generator), None, None


@pytest.mark.parametrize("mask_kind", ["per-vector", "static", "every activation"])
@pytest.mark.parametrize("variant", ["masked-zero", "kept"])
def test_sparse_and_dense_losses_agree_with_their_gradients(mask_kind, variant):
    hidden, positions, projection, values, mask, indices = _case(7, mask_kind)
    if mask is None:
        dense_targets = values
    elif mask.dim() == 1:
        dense_targets = values.new_zeros(B, D, N, D_T)
        dense_targets[..., mask] = values
    else:
        dense_targets = densify(values, mask)
    dense = hsk_loss(hidden, positions, dense_targets, mask, projection, variant)
    dense_grads = torch.autograd.grad(dense, [*hidden, projection.weight])
    sparse = sparse_hsk_loss(hidden, positions, values, indices, projection, D_T, variant)
    sparse_grads = torch.autograd.grad(sparse, [*hidden, projection.weight])
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(sparse_grads, dense_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_kept_indices_are_ascending_and_an_empty_vector_gets_harmless_ones():
    mask = torch.tensor([[0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert kept_indices(mask, 3).tolist() == [[1, 3, 4], [0, 1, 2]]


@pytest.mark.parametrize("hidden_size, k, empty_fraction", [(768, 77, 0.0), (768, 77, 0.3), (21, 5, 0.5), (16, 1, 0.3),
                                                            (8, 8, 0.3), (32, 8, 1.0)])
def test_indices_from_the_packed_bytes_equal_the_sorted_mask(hidden_size, k, empty_fraction):
    import numpy as np

    from hskstore.method.select import pack_bits

    generator = torch.Generator().manual_seed(hidden_size + k)
    scores = torch.rand(6, 2, 9, hidden_size, generator=generator)
    mask = torch.zeros(scores.shape, dtype=torch.bool).scatter_(-1, scores.topk(k, dim=-1).indices, True)
    mask &= ~(torch.rand(6, 2, 9, 1, generator=generator) < empty_fraction)   # empty slots: no bits at all
    ours = kept_indices_packed(pack_bits(mask).numpy(), k, hidden_size)
    assert ours.dtype == np.int64 and ours.shape == (6, 2, 9, k)
    assert np.array_equal(ours, kept_indices(mask, k).numpy())


def test_packed_masks_that_disagree_with_the_values_are_a_store_error():
    import numpy as np

    from hskstore.errors import StoreError

    packed = np.zeros((3, 1), dtype=np.uint8)
    packed[0, 0] = 0b11                                              # 2 bits set, as stored
    packed[1, 0] = 0b111                                             # 3 bits set, 2 values stored
    with pytest.raises(StoreError, match="3 set bits in a vector that stores 2 values: the store is corrupt"):
        kept_indices_packed(packed, 2, 8)
    packed[1, 0] = 0b1
    with pytest.raises(StoreError, match="corrupt"):
        kept_indices_packed(packed, 2, 8)


@pytest.mark.parametrize("hidden_size, counts", [(768, (77, 78, 76)), (768, (154, 0, 77)), (768, (77, 77, 1)),
                                                 (21, (5, 6, 4)), (21, (10, 0, 5))])
def test_packed_masks_with_the_right_total_but_the_wrong_count_in_a_vector_are_a_store_error(hidden_size, counts):
    import numpy as np

    from hskstore.errors import StoreError

    k = 77 if hidden_size == 768 else 5
    mask = np.zeros((len(counts), hidden_size), dtype=bool)
    for vector, count in enumerate(counts):
        mask[vector, hidden_size - count:] = True                   # the bits at the end: a neighbour's range
    packed = np.packbits(mask, axis=-1, bitorder="little")
    bad = next(c for c in counts if c not in (0, k))
    with pytest.raises(StoreError, match=f"hold {bad} set bits in a vector that stores {k} values"):
        kept_indices_packed(packed, k, hidden_size)
