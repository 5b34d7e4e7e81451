"""The strategy registries: one list that the CLI, the config check and the selection all read."""

import pytest
import torch

from hskstore import strategies
from hskstore.cli import extract as extract_command
from hskstore.method.compression import Compression
from hskstore.errors import ConfigError
from hskstore.method.select import select_hsk
from hskstore.method.strategies import LENGTH, WIDTH, LengthStrategy, length_choices, width_choices


def _choices(name):
    return next(p for p in extract_command.params if p.name == name).type.choices


def test_the_cli_offers_exactly_the_registered_strategies():
    assert list(_choices("length_strategy")) == length_choices() == ["att-nosep", "att", "left"]
    assert list(_choices("width_strategy")) == width_choices() == ["mag", "uniform", "rand"]


def test_every_width_strategy_either_stores_a_mask_per_vector_or_has_a_static_one():
    for strategy in WIDTH.values():
        assert (strategy.choose is not None) == strategy.per_vector == (strategy.static is None)


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
