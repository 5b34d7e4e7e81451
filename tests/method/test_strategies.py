"""The strategy registries: one list that the CLI, the config check and the selection all read."""

import pytest
import torch

from hskstore import strategies
from hskstore.cli import extract as extract_command
from hskstore.method.compression import Compression
from hskstore.errors import ConfigError
from hskstore.method.select import select_hsk
from hskstore.method.strategies import (LENGTH, WIDTH, LengthStrategy, WidthStrategy, length_choices, magnitude_order,
                                        width_choices)


def _choices(name):
    return next(p for p in extract_command.params if p.name == name).type.choices


def test_the_cli_offers_exactly_the_registered_strategies():
    assert list(_choices("length_strategy")) == length_choices() == ["att-nosep", "att", "left"]
    assert list(_choices("width_strategy")) == width_choices() == ["mag", "uniform", "rand"]


def test_every_width_strategy_either_ranks_each_vector_or_has_a_static_mask():
    for strategy in WIDTH.values():
        assert (strategy.order is not None) == strategy.per_vector == (strategy.static is None)


def test_a_width_strategy_with_both_or_neither_kind_of_mask_is_refused():
    with pytest.raises(ValueError, match="exactly one"):
        WidthStrategy("both", per_vector=True, nests=True, order=magnitude_order, static=lambda d, k, s: None)
    with pytest.raises(ValueError, match="exactly one"):
        WidthStrategy("neither", per_vector=False, nests=True)


def test_the_width_strategies_declare_their_masks_and_whether_they_nest():
    declared = {name: (s.per_vector, s.nests) for name, s in WIDTH.items()}
    assert declared == {"mag": (True, True), "uniform": (False, False), "rand": (False, True)}


@pytest.mark.parametrize("name", ["uniform", "rand"])
def test_a_nesting_static_strategy_keeps_a_subset_at_every_smaller_width(name):
    masks = [WIDTH[name].static_mask(48, k, seed=3) for k in range(1, 49)]
    nested = all(bool((small <= large).all()) for small, large in zip(masks, masks[1:]))
    assert nested == WIDTH[name].nests


def test_magnitude_reranking_of_the_stored_top_k_is_what_a_smaller_k_keeps():
    vectors = torch.randn(5, 7, 40).half()
    big_values, big_mask = WIDTH["mag"].choose(vectors, 12)
    small_values, small_mask = WIDTH["mag"].choose(vectors, 5)
    index = WIDTH["mag"].rerank(big_values, 5)
    assert torch.equal(big_values.gather(-1, index), small_values)
    assert not (small_mask & ~big_mask).any()


def test_the_compression_reads_its_masks_from_the_width_strategy():
    resolved = lambda c: c.resolve(teacher_layers=4, hidden_size=32, max_length=16)  # noqa: E731
    mag = Compression(width=8, student_layers=2)
    assert mag.per_vector_masks(resolved(mag)) and mag.static_mask(resolved(mag)) is None
    uniform = Compression(width=8, student_layers=2, width_strategy="uniform")
    assert not uniform.per_vector_masks(resolved(uniform))
    assert uniform.static_mask(resolved(uniform)).nonzero().squeeze(1).tolist() == [0, 4, 8, 12, 16, 20, 24, 28]
    every = Compression(width=None, student_layers=2, width_strategy="uniform")
    assert every.static_mask(resolved(every)) is None and not every.per_vector_masks(resolved(every))


@pytest.mark.parametrize("name", list(LENGTH))
def test_config_accepts_every_registered_length_strategy(name):
    every = LENGTH[name].every_token
    assert Compression(length=None if every else 3, length_strategy=name).length_strategy == name


def test_config_rejects_an_unregistered_strategy_naming_the_registry():
    with pytest.raises(ConfigError, match=r"width_strategy must be one of \['mag', 'uniform', 'rand'\]"):
        Compression(width_strategy="middle")


def test_a_strategy_added_to_the_registry_is_selectable_end_to_end(monkeypatch):
    # "right": the rightmost tokens first: one registry entry, no other change.
    class Right(LengthStrategy):
        def scores(self, cls_scores, eligible):
            return torch.arange(eligible.shape[1], dtype=torch.float32).expand_as(eligible)

    monkeypatch.setitem(LENGTH, "right", Right("right", needs_scores=False, keeps_sep=True))
    compression = Compression(depth=1, length=2, width=None, student_layers=1, length_strategy="right")
    resolved = compression.resolve(teacher_layers=2, hidden_size=4, max_length=5)
    hidden = tuple(torch.randn(1, 5, 4) for _ in range(3))
    ids, mask = torch.tensor([[101, 7, 8, 102, 0]]), torch.tensor([[1, 1, 1, 1, 0]])
    selection = select_hsk(hidden, {}, ids, mask, compression, resolved, sep_id=102)
    assert selection.positions.tolist() == [[[3, 2]]]           # [PAD] never, then right to left
    assert strategies.LENGTH["right"].needs_scores is False
