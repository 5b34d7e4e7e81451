"""Token and activation selection, pinned to docs/method.md."""

import numpy as np
import pytest
import torch

from hskstore.method.select import (
    densify,
    eligible_tokens,
    pack_bits,
    rank_tokens,
    static_mask,
    top_magnitude,
    unpack_bits,
    unpack_bits_numpy,
)
from hskstore.models.teacher import CLSAttentionRecorder

CLS, SEP, PAD = 101, 102, 0


def _batch():
    ids = torch.tensor([[CLS, 7, 8, SEP, 9, 10, SEP, PAD, PAD], [CLS, 11, SEP, PAD, PAD, PAD, PAD, PAD, PAD]])
    return ids, (ids != PAD).long()


def test_att_nosep_never_selects_sep_or_padding_even_when_they_score_highest():
    ids, mask = _batch()
    scores = torch.where((ids == SEP) | (ids == PAD), 10.0, 1.0) + torch.rand(ids.shape)
    positions = rank_tokens(scores, eligible_tokens(ids, mask, SEP, "att-nosep"), 5, "att-nosep")
    chosen = ids.gather(1, positions.clamp(min=0))[positions >= 0]
    assert not ((chosen == SEP) | (chosen == PAD)).any()


def test_att_may_select_sep_but_never_padding():
    ids, mask = _batch()
    scores = torch.where(ids == SEP, 10.0, 1.0) + torch.where(ids == PAD, 20.0, 0.0)
    positions = rank_tokens(scores, eligible_tokens(ids, mask, SEP, "att"), 2, "att")
    assert ids[0, positions[0]].tolist() == [SEP, SEP]
    assert PAD not in ids[1, positions[1][positions[1] >= 0]].tolist()


def test_slots_beyond_the_eligible_tokens_are_marked_empty():
    ids, mask = _batch()
    positions = rank_tokens(torch.rand(ids.shape), eligible_tokens(ids, mask, SEP, "att-nosep"), 4, "att-nosep")
    assert positions[1].tolist()[2:] == [-1, -1]  # only [CLS] and one word are eligible in row 2
    assert (positions[1, :2] >= 0).all()


def test_positions_come_in_descending_score_order_so_smaller_length_is_a_prefix():
    ids, mask = _batch()
    scores = torch.rand(ids.shape)
    eligible = eligible_tokens(ids, mask, SEP, "att-nosep")
    long = rank_tokens(scores, eligible, 5, "att-nosep")
    for n in range(1, 5):
        assert torch.equal(rank_tokens(scores, eligible, n, "att-nosep"), long[:, :n])
    valid = long[0][long[0] >= 0]
    assert (scores[0, valid].diff() <= 0).all()


def test_left_takes_the_first_tokens_and_all_pads_past_the_batch_width():
    ids, mask = _batch()
    left = rank_tokens(None, eligible_tokens(ids, mask, SEP, "left"), 3, "left")
    assert left.tolist() == [[0, 1, 2], [0, 1, 2]]
    everything = rank_tokens(None, eligible_tokens(ids, mask, SEP, "all"), 12, "all")
    assert everything[1].tolist() == [0, 1, 2] + [-1] * 9


def test_magnitude_keeps_each_vectors_own_top_k_in_ascending_dimension_order():
    vectors = torch.randn(3, 5, 64)
    values, mask = top_magnitude(vectors, 6)
    for v, kept, m in zip(vectors.reshape(-1, 64), values.reshape(-1, 6), mask.reshape(-1, 64)):
        expected = v.abs().topk(6).indices.sort().values
        assert torch.equal(m.nonzero().squeeze(1), expected)
        assert torch.equal(kept, v[expected])


def test_densify_inverts_top_magnitude():
    vectors = torch.randn(2, 3, 4, 40)
    values, mask = top_magnitude(vectors, 7)
    assert torch.equal(densify(values, mask), vectors * mask)


@pytest.mark.parametrize("density", [0.0, 0.01, 0.0999, 0.1, 0.1001, 0.3, 1.0])
def test_the_readers_set_entry_search_is_flatnonzero_on_either_side_of_numpys_10_percent_switch(density):
    from hskstore.method.bits import set_entries

    rng = np.random.default_rng(0)
    for n in (0, 1, 10, 997, 6912):
        flat = np.zeros(n, dtype=bool)
        flat[rng.permutation(n)[:round(density * n)]] = True
        assert np.array_equal(set_entries(flat), np.flatnonzero(flat))
        assert set_entries(flat).dtype == np.flatnonzero(flat).dtype


def test_masks_pack_little_endian_like_numpy_and_unpack_back():
    mask = torch.rand(4, 9, 21) > 0.6  # 21 is not a multiple of 8: the last byte is zero-padded
    packed = pack_bits(mask)
    assert packed.shape == (4, 9, 3)
    assert np.array_equal(packed.numpy(), np.packbits(mask.numpy(), axis=-1, bitorder="little"))
    assert torch.equal(unpack_bits(packed, 21), mask)
    assert np.array_equal(unpack_bits_numpy(packed.numpy(), 21), mask.numpy())


def test_bit_j_of_byte_i_is_dimension_8i_plus_j():
    mask = torch.zeros(16, dtype=torch.bool)
    mask[[0, 9]] = True
    assert pack_bits(mask).tolist() == [1, 2]


def test_uniform_static_mask_keeps_round_i_d_over_k():
    mask = static_mask(10, 4, "uniform")
    assert mask.nonzero().squeeze(1).tolist() == [0, 2, 5, 8]  # round(2.5) == 2, round(7.5) == 8


def test_rand_static_mask_is_reproducible_from_its_seed():
    assert torch.equal(static_mask(384, 38, "rand", seed=3), static_mask(384, 38, "rand", seed=3))
    assert static_mask(384, 38, "rand", seed=3).sum() == 38
    assert not torch.equal(static_mask(384, 38, "rand", seed=3), static_mask(384, 38, "rand", seed=4))


@pytest.mark.parametrize("kind", ["softmax", "logits"])
def test_cls_row_from_hooks_equals_the_materialised_attention(tiny_teacher, kind):
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(tiny_teacher, attn_implementation="eager").eval()
    ids = torch.tensor([[CLS, 2023, 2003, 1037, 3231, SEP, PAD, PAD], [CLS, 7592, SEP, 2088, 999, 2000, 2017, SEP]])
    mask = (ids != PAD).long()
    layers = list(range(model.config.num_hidden_layers))
    captured = {}

    def keep_pre_softmax(index):
        def hook(module, args, kwargs, output):
            hidden = args[0]
            q = module.query(hidden)[:, 0].view(hidden.shape[0], module.num_attention_heads, -1)
            k = module.key(hidden).view(hidden.shape[0], hidden.shape[1], module.num_attention_heads, -1)
            raw = torch.einsum("bhd,bthd->bht", q, k) * module.scaling
            captured[index] = raw.masked_fill(mask[:, None, :] == 0, float("-inf")).mean(1)
        return hook

    handles = [model.bert.encoder.layer[i].attention.self.register_forward_hook(keep_pre_softmax(i), with_kwargs=True)
               for i in layers]
    with torch.no_grad(), CLSAttentionRecorder(model.bert.encoder.layer, layers, model.config.num_attention_heads, kind) as rec:
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        scores = rec.scores(mask)
    for h in handles:
        h.remove()
    for i in layers:
        expected = out.attentions[i][:, :, 0, :].mean(1) if kind == "softmax" else captured[i]
        valid = mask.bool()
        torch.testing.assert_close(scores[i][valid], expected[valid], rtol=1e-5, atol=1e-6)
        if kind == "softmax":
            assert (scores[i][~valid] == 0).all()
