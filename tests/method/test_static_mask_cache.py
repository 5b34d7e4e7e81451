"""Online training with a static width mask copies its kept dimensions to the device once, not every step."""

from contextlib import nullcontext
from types import SimpleNamespace

import torch

from hskstore.method.compression import Compression
from hskstore.method.select import Selector
from hskstore.store.stream import DeviceBatch
from hskstore.store.targets import OnlineTargets


def _selector(width_strategy="uniform"):
    compression = Compression(depth=1, length=3, width=4, student_layers=2, width_strategy=width_strategy)
    resolved = compression.resolve(4, 32, 12)
    return Selector(compression, resolved, sep_id=3, encoder_layers=None, num_heads=4)


def test_online_targets_hand_the_same_device_indices_to_every_step(monkeypatch):
    selector = _selector()
    calls = []

    def fake_run(model, input_ids, attention_mask, token_type_ids):
        calls.append(1)
        values = torch.zeros(2, 1, 3, 4, device="meta")
        return SimpleNamespace(logits=torch.zeros(2, 3, device="meta")), SimpleNamespace(
            values=values, mask=None, positions=torch.zeros(2, 1, 3, dtype=torch.int64, device="meta"))

    monkeypatch.setattr(selector, "run", fake_run)
    monkeypatch.setattr(torch, "autocast", lambda **kwargs: nullcontext())   # no autocast on "meta"
    online = OnlineTargets(teacher=None, selector=selector, device=torch.device("meta"))
    tokens = torch.zeros(2, 5, dtype=torch.int64, device="meta")
    batch = DeviceBatch(tokens, tokens, tokens, torch.zeros(2, device="meta"), None, None, None, None)
    seen = [online(batch).kept for _ in range(3)]
    assert len(calls) == 3 and seen[0].device.type == "meta" and seen[0].shape == (4,)
    assert seen[0] is seen[1] is seen[2]
