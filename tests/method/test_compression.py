"""The compression triple and its layer mapping, pinned to docs/method.md."""

import pytest

from hskstore.method.compression import Compression, default_l_top, layer_mapping
from hskstore.errors import ConfigError


@pytest.mark.parametrize(
    "student_layers, l_top, expected",
    [(6, 10, [0, 2, 3, 5, 7, 8, 10]), (4, 10, [0, 2, 5, 8, 10]), (3, 5, [0, 2, 3, 5])],
)
def test_layer_mapping_matches_the_lists_method_md_quotes(student_layers, l_top, expected):
    assert layer_mapping(student_layers, l_top) == expected


def test_default_l_top_is_10_of_12_scaled_to_the_teacher():
    assert default_l_top(12) == 10
    assert default_l_top(6) == 5


def test_depth_keeps_the_top_student_layers_and_the_embedding_only_when_all_are_kept():
    four = Compression(depth=2, student_layers=4).resolve(12, 768, 128)
    assert four.student_layer_ids == [3, 4] and four.teacher_layer_ids == [8, 10]
    everything = Compression(depth=5, student_layers=4).resolve(12, 768, 128)
    assert everything.teacher_layer_ids == [0, 2, 5, 8, 10]


def test_score_layer_is_the_uniform_mapping_by_default_and_the_stored_layer_on_request():
    uniform = Compression(depth=7, student_layers=6).resolve(12, 768, 128)
    # g(l, 12) = [0, 2, 4, 6, 8, 10, 12]; H_k comes out of encoder layer k-1, H_0 takes layer 0's attention.
    assert uniform.score_layer_ids == [0, 1, 3, 5, 7, 9, 11]
    same = Compression(depth=7, student_layers=6, score_layer="same").resolve(12, 768, 128)
    assert same.score_layer_ids == [0, 1, 2, 4, 6, 7, 9]


def test_width_fraction_resolves_to_a_count_of_d():
    assert Compression(width=0.1).resolve(6, 384, 64).width == 38
    assert Compression(width=20).resolve(6, 384, 64).width == 20


def test_amount_of_hsk_is_nd_times_nl_times_nw_over_d():
    resolved = Compression(depth=1, length=9, width=0.1).resolve(6, 384, 64)
    assert resolved.amount() == pytest.approx(1 * 9 * 38 / 384)


def test_full_hsk_keeps_every_layer_token_and_activation():
    resolved = Compression.full(student_layers=3).resolve(6, 384, 64)
    assert (resolved.depth, resolved.length, resolved.width, resolved.has_mask) == (4, 64, 384, False)


@pytest.mark.parametrize(
    "kwargs, resolve_args, message",
    [
        (dict(depth=5, student_layers=3), None, "depth N^D must be in 1..L'+1"),
        (dict(length=100), (6, 384, 64), "larger than the max sequence length 64"),
        (dict(width=500), (6, 384, 64), "larger than the teacher's hidden size d=384"),
        (dict(length_strategy="middle"), None, "length_strategy must be one of"),
        (dict(l_top=9), (6, 384, 64), "l_top must be in 1..6"),
    ],
)
def test_bad_triples_name_the_problem_and_the_fix(kwargs, resolve_args, message):
    with pytest.raises(ConfigError) as info:
        Compression(**kwargs).resolve(*(resolve_args or (6, 384, 64)))
    assert message in str(info.value)


def test_config_errors_list_every_problem_at_once():
    with pytest.raises(ConfigError) as info:
        Compression(depth=0, length=0, width_strategy="bogus")
    assert len(info.value.problems) == 3


def test_compression_round_trips_through_a_dict():
    original = Compression(depth=2, length=8, width=0.2, student_layers=4, score_kind="logits")
    assert Compression.from_dict(original.to_dict()) == original


def test_a_float16_compression_records_no_value_format_so_older_readers_open_its_store():
    assert "value_format" not in Compression().to_dict()
    assert Compression.from_dict(Compression().to_dict()) == Compression()
    quantized = Compression(value_format="int4")
    assert quantized.to_dict()["value_format"] == "int4" and quantized.quantized
    assert Compression.from_dict(quantized.to_dict()) == quantized


@pytest.mark.parametrize("kwargs, message", [
    ({"value_format": "int3"}, "value_format must be one of"),
    ({"value_format": "int8", "value_bits": 7}, "value_format int8 quantizes the float16 values"),
    ({"value_format": "int4", "value_dtype": "float32"}, "value_format int4 quantizes the float16 values"),
])
def test_a_value_format_goes_with_exact_float16_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Compression(**kwargs)
