"""Checkpoints of the stages that train (finetune, train): written whole, resumed only by the same run.

A checkpoint is a directory of safetensors and JSON, so loading one never executes code from it: weights,
the optimizer's state, random states, and `state.json`, which records the run key. `save_checkpoint` writes
it to `<name>.tmp` and swaps it in, so a crash leaves the old or the new checkpoint, never half of one;
`read_state` refuses one whose run key is not this run's. What goes in `state` is the stage's business.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError

__all__ = ["save_checkpoint", "resumable", "recover", "read_state", "changed_keys", "load_weights",
           "restore_optimizer", "rng_state", "restore_rng", "save_optimizer", "load_optimizer", "swap_in"]


def save_checkpoint(directory: Path, state: dict, *, weights: dict[str, dict[str, torch.Tensor]] | None = None,
                    optimizer: torch.optim.Optimizer | None = None, rng: dict[str, torch.Tensor] | None = None,
                    write: Callable[[Path], None] | None = None) -> None:
    """Write a checkpoint and swap it in whole.

    Args:
        state: written to state.json (JSON: the run key, epoch, history...).
        weights: {stem: tensors}, each written to `<stem>.safetensors`.
        optimizer: its state, to optimizer.safetensors and optimizer.json (`save_optimizer`).
        rng: random states (`rng_state`), to rng.safetensors.
        write: called first with the temporary directory, for anything else (a student directory).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if write is not None:
        write(tmp)
    for stem, tensors in (weights or {}).items():
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / f"{stem}.safetensors"))
    if optimizer is not None:
        save_optimizer(optimizer, tmp)
    if rng is not None:
        save_file(rng, str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    swap_in(tmp, directory)


def resumable(directory: Path) -> bool:
    """Whether `directory` holds a checkpoint, or a crash in the middle of `swap_in` left one beside it."""
    directory = Path(directory)
    return any((d / "state.json").is_file() for d in (directory, _old(directory)))


def recover(directory: Path) -> None:
    """After a crash between `swap_in`'s two renames only `<name>.old` is left: it is the checkpoint again."""
    directory, old = Path(directory), _old(Path(directory))
    if not directory.exists() and (old / "state.json").is_file():
        old.rename(directory)


def read_state(directory: Path, run: dict, refuse: Callable[[list[str], dict], str], ignore=()) -> dict:
    """The checkpoint's state.json, when its run key is `run` (compared as JSON; keys in `ignore`, which older
    versions recorded but no longer name another run, are not compared).

    Raises:
        ConfigError: `refuse(the differing keys, the recorded run key)` when the key is another run's.
    """
    state = json.loads((Path(directory) / "state.json").read_text())
    recorded = state.get("run") or {}
    changed = [key for key in changed_keys(recorded, run) if key not in ignore]
    if changed:
        raise ConfigError(refuse(changed, recorded))
    return state


def changed_keys(recorded: dict, current: dict) -> list[str]:
    """Top-level keys whose values differ between a recorded run key and this run's, as JSON sees them.

    A key missing on one side counts as None: an option added since, left at a None default, keeps older
    checkpoints resumable.
    """
    current = json.loads(json.dumps(current))
    return [k for k in sorted(set(recorded) | set(current)) if recorded.get(k) != current.get(k)]


def fingerprint_files(directory) -> dict[str, str]:
    """SHA-256 of a model directory's weights and configs (top-level `*.safetensors`, `*.json`), by file name.

    A run key records the initial student's: a student replaced between a killed run and its resume is
    refused by name, not met as a state_dict size mismatch.
    """
    import hashlib

    out = {}
    for path in sorted(Path(directory).iterdir()) if Path(directory).is_dir() else ():
        if path.is_file() and path.name.endswith((".safetensors", ".json")):
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            out[path.name] = digest.hexdigest()
    return out


def load_weights(directory: Path, stem: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor] | None:
    """`<stem>.safetensors` of a checkpoint on `device`, or None when the checkpoint has none."""
    from safetensors.torch import load_file

    path = Path(directory) / f"{stem}.safetensors"
    return load_file(str(path), device=str(device)) if path.is_file() else None


def restore_optimizer(directory: Path, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                      scaler_state: dict | None) -> None:
    """The optimizer's moments, and with fp16 the learned loss scale: not 2**16 again, with its skipped steps."""
    load_optimizer(optimizer, Path(directory))
    if scaler_state:  # {} unless training in fp16
        scaler.load_state_dict(scaler_state)


def rng_state(generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """torch's random state (dropout), a data-order generator's, and CUDA's when there is one."""
    rng = {"torch": torch.get_rng_state()}
    if generator is not None:
        rng["batches"] = generator.get_state()
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def restore_rng(directory: Path, generator: torch.Generator | None = None) -> None:
    """Put back what `rng_state` saved in a checkpoint's rng.safetensors (CUDA's only where there is CUDA)."""
    from safetensors.torch import load_file

    rng = load_file(str(Path(directory) / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if generator is not None:
        generator.set_state(rng["batches"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


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
    old = _old(final)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _old(directory: Path) -> Path:
    return directory.with_name(directory.name + ".old")
