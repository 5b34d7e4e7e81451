"""Model locations: a local directory, or a Hugging Face hub id resolved to its snapshot in the hub cache.

Every function that reads a model (teacher.py) goes through `local_model_dir`, so `--model
bert-base-uncased` works wherever a directory does. Only safetensors weights, JSON configs and tokenizer
files are fetched: a repository's pickled `pytorch_model.bin` is never downloaded, let alone loaded.
Offline (HF_HUB_OFFLINE=1, or no route to the hub) only the local cache is read, and a model missing
from it is a one-line error, never a wait on a network that is not there.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from ..errors import ModelError

__all__ = ["local_model_dir", "hub_provenance", "looks_like_hub_id", "HUB_FILE_PATTERNS"]

# What a BERT checkpoint needs: configs, safetensors weights, tokenizer files. No *.bin, no code.
HUB_FILE_PATTERNS = ["*.json", "*.safetensors", "vocab.txt", "*.model", "merges.txt"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def looks_like_hub_id(value: str) -> bool:
    """`bert-base-uncased` or `org/name`; not `./dir`, `/abs/dir`, `a/b/c` or `dir/` (those are paths)."""
    return bool(_HUB_ID.match(value)) and not value.endswith((".json", ".safetensors"))


def _hub_offline() -> bool:
    import huggingface_hub.constants as constants

    if constants.HF_HUB_OFFLINE:
        return True
    import socket

    try:  # a quick probe: without a route, the hub client would retry for minutes
        with socket.create_connection(("huggingface.co", 443), timeout=3.0):
            return False
    except OSError:
        return True


@functools.lru_cache(maxsize=64)
def _snapshot(repo_id: str, revision: str | None, offline: bool, cache: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILE_PATTERNS,
                                 local_files_only=offline)
    except Exception as exc:  # not cached, no such repo, gated, network gone: the same fix for the user
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if offline:
            raise ModelError(f"model '{repo_id}' is not a local directory and not in the hub cache ({cache}), and "
                             "the hub is offline (HF_HUB_OFFLINE=1 or no network): download it once with network "
                             "(unset HF_HUB_OFFLINE), or pass a local model directory") from None
        raise ModelError(f"cannot download model '{repo_id}' from the hub ({reason[:200]}): check the id, or pass "
                         "a local model directory") from None


def local_model_dir(path_or_id: str | os.PathLike) -> Path:
    """The directory holding the model: `path_or_id` itself, or the cached hub snapshot of that id.

    Raises:
        ModelError: neither an existing path nor a hub id, or the id cannot be had (offline and not cached).
    """
    path = Path(path_or_id)
    if path.exists() or not looks_like_hub_id(str(path_or_id)):
        return path
    import huggingface_hub.constants as constants

    return Path(_snapshot(str(path_or_id), None, _hub_offline(), str(constants.HF_HUB_CACHE)))


def hub_provenance(path_or_id: str | os.PathLike) -> dict | None:
    """{"hub_id", "revision"} when `path_or_id` is a hub id (revision: the snapshot's commit), else None."""
    if Path(path_or_id).exists() or not looks_like_hub_id(str(path_or_id)):
        return None
    snapshot = local_model_dir(path_or_id)
    return {"hub_id": str(path_or_id), "revision": snapshot.name}
