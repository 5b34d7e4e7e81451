"""Checkpoints shared by finetune and train: written whole, read back exactly, resumed only by the same run."""

import json

import pytest
import torch

from hskstore.errors import ConfigError
from hskstore.runtime.checkpoint import (changed_keys, load_weights, read_state, recover, restore_optimizer,
                                         restore_rng, resumable, rng_state, save_checkpoint)


def _trained_optimizer():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        layer(torch.randn(5, 4)).pow(2).sum().backward()
        optimizer.step()
    return layer, optimizer


def test_a_checkpoint_holds_weights_optimizer_random_state_and_state_json(tmp_path):
    layer, optimizer = _trained_optimizer()
    generator = torch.Generator().manual_seed(5)
    save_checkpoint(tmp_path / "checkpoint", {"run": {"seed": 1}, "epoch": 2}, weights={"model": layer.state_dict()},
                    optimizer=optimizer, rng=rng_state(generator), write=lambda tmp: (tmp / "extra.txt").write_text("x"))
    names = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert names == ["extra.txt", "model.safetensors", "optimizer.json", "optimizer.safetensors", "rng.safetensors",
                     "state.json"]
    assert not (tmp_path / "checkpoint.tmp").exists()
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text()) == {"run": {"seed": 1}, "epoch": 2}
    for name, value in load_weights(tmp_path / "checkpoint", "model").items():
        torch.testing.assert_close(value, layer.state_dict()[name])
    assert load_weights(tmp_path / "checkpoint", "projection") is None


def test_optimizer_loss_scale_and_random_states_come_back_exactly(tmp_path):
    layer, optimizer = _trained_optimizer()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    generator = torch.Generator().manual_seed(5)
    save_checkpoint(tmp_path / "c", {"scaler": scaler.state_dict()}, optimizer=optimizer, rng=rng_state(generator))
    expected = (torch.rand(3), torch.rand(3, generator=generator))

    fresh = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    fresh_scaler = torch.amp.GradScaler("cpu")
    restore_optimizer(tmp_path / "c", fresh, fresh_scaler, read_state(tmp_path / "c", {}, str)["scaler"])
    for p in layer.parameters():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(fresh.state[p][key], optimizer.state[p][key])
    assert fresh_scaler.get_scale() == 1024.0
    other = torch.Generator().manual_seed(99)
    torch.manual_seed(99)
    restore_rng(tmp_path / "c", other)
    assert torch.equal(torch.rand(3), expected[0]) and torch.equal(torch.rand(3, generator=other), expected[1])


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path):
    save_checkpoint(tmp_path / "checkpoint", {"epoch": 1})

    def disk_full(tmp):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "checkpoint", {"epoch": 2}, write=disk_full)
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text()) == {"epoch": 1}


def test_a_crash_between_the_swaps_renames_leaves_a_checkpoint_that_recover_restores(tmp_path):
    save_checkpoint(tmp_path / "checkpoint", {"epoch": 1})
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")  # killed right after the first rename
    assert resumable(tmp_path / "checkpoint")
    recover(tmp_path / "checkpoint")
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text()) == {"epoch": 1}
    assert not (tmp_path / "checkpoint.old").exists()
    assert not resumable(tmp_path / "elsewhere")


def test_another_runs_checkpoint_is_refused_naming_what_differs(tmp_path):
    save_checkpoint(tmp_path / "c", {"run": {"lr": 0.1, "stages": ["hsk"]}, "epoch": 1})
    assert read_state(tmp_path / "c", {"lr": 0.1, "stages": ("hsk",)}, str)["epoch"] == 1  # compared as JSON
    with pytest.raises(ConfigError, match=r"^other run: \['lr'\] recorded 0.1$"):
        read_state(tmp_path / "c", {"lr": 0.2, "stages": ["hsk"]},
                   lambda changed, recorded: f"other run: {changed} recorded {recorded['lr']}")
    assert changed_keys({"a": 1}, {"a": 2, "b": 3}) == ["a", "b"]


def test_an_option_added_since_at_its_none_default_keeps_old_checkpoints_resumable():
    assert changed_keys({"a": 1}, {"a": 1, "new_option": None}) == []


def test_keys_a_run_key_no_longer_compares_do_not_refuse_an_older_checkpoint(tmp_path):
    """Older runs recorded `num_workers` and `world_size`; the batch order no longer depends on either."""
    save_checkpoint(tmp_path / "checkpoint", {"run": {"seed": 1, "num_workers": 2, "world_size": 4}, "step": 3})
    state = read_state(tmp_path / "checkpoint", {"seed": 1}, lambda changed, recorded: f"differ: {changed}",
                       ignore=("num_workers", "world_size"))
    assert state["step"] == 3
    with pytest.raises(ConfigError, match=r"differ: \['seed'\]"):
        read_state(tmp_path / "checkpoint", {"seed": 2, "num_workers": 0}, lambda changed, recorded: f"differ: {changed}",
                   ignore=("num_workers", "world_size"))
