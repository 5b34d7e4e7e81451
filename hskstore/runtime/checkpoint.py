"""Checkpoint pieces shared by the stages that train (finetune, train): optimizer state and the atomic swap.

Everything is safetensors plus JSON: loading a checkpoint never executes code from it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

__all__ = ["save_optimizer", "load_optimizer", "swap_in"]


def save_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Write the optimizer's tensors to optimizer.safetensors and its scalars and groups to optimizer.json."""
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{name}"] = value
    save_file(tensors, str(directory / "optimizer.safetensors"))
    (directory / "optimizer.json").write_text(json.dumps({"param_groups": state["param_groups"], "scalars": scalars}))


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Restore what `save_optimizer` wrote into an optimizer over the same parameters."""
    from safetensors.torch import load_file

    meta = json.loads((directory / "optimizer.json").read_text())
    tensors = load_file(str(directory / "optimizer.safetensors"))
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def swap_in(tmp: Path, final: Path) -> None:
    """Replace directory `final` by the complete directory `tmp`: a crash leaves the old or the new one, whole."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
