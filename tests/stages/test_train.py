"""The teacher-free trainer: same distillation as online, losses fall, resumes, refuses mismatches."""

import json

import numpy as np
import pytest
import torch

from hskstore.errors import ConfigError, StoreError
from hskstore.store.stream import StoreStream
from hskstore.stages.train import TrainConfig, Trainer


def _config(store, student, output, **kwargs):
    kwargs.setdefault("hsk_epochs", 1)
    kwargs.setdefault("pred_epochs", 1)
    kwargs.setdefault("hsk_batch_size", 16)
    kwargs.setdefault("pred_batch_size", 16)
    return TrainConfig(store=store, student=student, output=str(output), device="cpu", **kwargs)


def test_offline_and_online_give_the_same_hsk_loss_on_the_same_batch(tiny_store, tiny_student, tiny_teacher, tmp_path):
    offline = Trainer(_config(tiny_store, tiny_student, tmp_path / "a"), progress=False)
    online = Trainer(_config(tiny_store, tiny_student, tmp_path / "b", teacher=tiny_teacher), progress=False)
    batch = next(iter(StoreStream(tiny_store, "train", 16, seed=0)))
    for variant in ("masked-zero", "kept"):
        offline.config = online.config = _config(tiny_store, tiny_student, tmp_path / "a", hsk_loss=variant)
        a, b = offline.loss_on("hsk", batch), online.loss_on("hsk", batch)
        assert a > 0
        assert a == pytest.approx(b, rel=2e-3)  # float16 storage of the kept values
    assert offline.loss_on("pred", batch) == pytest.approx(online.loss_on("pred", batch), rel=1e-4)


def test_offline_and_online_training_follow_the_same_trajectory(tiny_store, tiny_student, tiny_teacher, tmp_path):
    def step_losses(**kwargs):
        trainer = Trainer(_config(tiny_store, tiny_student, tmp_path / str(len(kwargs)), stages=("hsk",),
                                  max_steps=5, seed=7, **kwargs), progress=False)
        trainer.train()
        return trainer.history[0]["step_losses"]

    offline, online = step_losses(), step_losses(teacher=tiny_teacher)
    assert len(offline) == 5
    np.testing.assert_allclose(offline, online, rtol=5e-3)


def test_the_hsk_loss_falls_when_a_tiny_student_trains(tiny_store, tiny_student, tmp_path):
    trainer = Trainer(_config(tiny_store, tiny_student, tmp_path, stages=("hsk",), hsk_epochs=4, hsk_lr=1e-3),
                      progress=False)
    trainer.train()
    losses = [record["loss"] for record in trainer.history]
    assert losses[-1] < 0.8 * losses[0]


def test_a_run_writes_metrics_a_best_student_and_the_teachers_dev_score(tiny_store, tiny_student, tmp_path):
    result = Trainer(_config(tiny_store, tiny_student, tmp_path), progress=False).train()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["mode"] == "offline" and saved["task"] == "tweets"
    assert set(saved["teacher_dev"]) == {"accuracy"} and 0 <= saved["student_dev"]["accuracy"] <= 1
    assert [h["stage"] for h in saved["history"]] == ["hsk", "pred"]
    assert (tmp_path / "student" / "student.json").is_file() and (tmp_path / "student" / "task.json").is_file()
    assert result["student_dev"] == saved["student_dev"]


def test_an_interrupted_run_resumes_to_the_same_weights(tiny_store, tiny_student, tmp_path, monkeypatch):
    reference = Trainer(_config(tiny_store, tiny_student, tmp_path / "ref", pred_epochs=2), progress=False)
    reference.train()

    original = Trainer._save_checkpoint
    saves = {"n": 0}

    def crash_after_second_save(self, state, optimizer):
        original(self, state, optimizer)
        saves["n"] += 1
        if saves["n"] == 3:  # hsk epoch 1, hsk done, pred epoch 1 -> stop before pred epoch 2
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_checkpoint", crash_after_second_save)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(tiny_store, tiny_student, tmp_path / "run", pred_epochs=2), progress=False).train()
    monkeypatch.setattr(Trainer, "_save_checkpoint", original)
    resumed = Trainer(_config(tiny_store, tiny_student, tmp_path / "run", pred_epochs=2), progress=False)
    resumed.train()
    assert [(h["stage"], h["epoch"]) for h in resumed.history] == [("hsk", 1), ("pred", 1), ("pred", 2)]
    for name, value in reference.student.state_dict().items():
        torch.testing.assert_close(resumed.student.state_dict()[name], value, msg=name)


def test_a_checkpoint_from_another_run_is_not_resumed(tiny_store, tiny_student, tmp_path):
    Trainer(_config(tiny_store, tiny_student, tmp_path, stages=("pred",), max_steps=1), progress=False).train()
    with pytest.raises(ConfigError, match="different run"):
        Trainer(_config(tiny_store, tiny_student, tmp_path, stages=("pred",), pred_lr=1e-3), progress=False).train()


def test_store_student_mismatches_are_one_line_errors(tiny_store, tmp_path):
    from hskstore.models.student import build_bert_student, save_student

    wrong_vocab = build_bert_student(num_labels=3, vocab_size=1000, num_layers=2, hidden_size=16, intermediate_size=32,
                                     num_heads=2)
    save_student(wrong_vocab, tmp_path / "vocab")
    with pytest.raises(StoreError, match="vocabulary has 1000 tokens"):
        Trainer(_config(tiny_store, str(tmp_path / "vocab"), tmp_path / "o1"), progress=False)
    two_labels = build_bert_student(num_labels=2, vocab_size=30522, num_layers=1, hidden_size=16, intermediate_size=32,
                                    num_heads=2)
    save_student(two_labels, tmp_path / "labels")
    with pytest.raises(StoreError, match="predicts 2 labels, the store's task 'tweets' has 3"):
        Trainer(_config(tiny_store, str(tmp_path / "labels"), tmp_path / "o2"), progress=False)


@pytest.mark.integration
def test_a_student_shallower_than_the_stores_depth_is_refused(tiny_teacher, tmp_path):
    from hskstore.method.compression import Compression
    from hskstore.stages.extract import ExtractConfig, extract
    from hskstore.models.student import build_bert_student, save_student

    deep = tmp_path / "deep.zarr"
    extract(ExtractConfig(teacher=tiny_teacher, task="tweets", output=str(deep), limit=20,
                          compression=Compression(depth=3, length=2, width=4, student_layers=2)), progress=False)
    one_layer = build_bert_student(num_labels=3, vocab_size=30522, num_layers=1, hidden_size=16, intermediate_size=32,
                                   num_heads=2)
    save_student(one_layer, tmp_path / "shallow")
    with pytest.raises(StoreError, match="N\\^D=3 layers .* only 1 layers"):
        Trainer(_config(str(deep), str(tmp_path / "shallow"), tmp_path / "o"), progress=False)


def test_an_online_teacher_must_be_the_stores_teacher(tiny_store, tiny_student, tmp_path):
    from conftest import save_tiny_teacher

    other = save_tiny_teacher(tmp_path / "other", layers=2)
    with pytest.raises(StoreError, match="is not the store's teacher"):
        Trainer(_config(tiny_store, tiny_student, tmp_path / "o", teacher=other), progress=False)


def test_bad_training_options_are_listed_together():
    with pytest.raises(ConfigError) as info:
        TrainConfig(store="s", student="t", output="o", stages=("pred", "hsk"), hsk_loss="l1", pred_lr=0)
    assert len(info.value.problems) == 3


@pytest.mark.parametrize("width_strategy", ["uniform", "rand"])
@pytest.mark.integration
def test_static_width_masks_distil_the_same_offline_and_online(tiny_teacher, tiny_student, tmp_path, width_strategy):
    from hskstore.method.compression import Compression
    from hskstore.stages.extract import ExtractConfig, extract

    store = tmp_path / "static.zarr"
    extract(ExtractConfig(teacher=tiny_teacher, task="tweets", output=str(store), limit=40,
                          compression=Compression(depth=2, length=4, width=8, student_layers=2,
                                                  width_strategy=width_strategy)), progress=False)
    batch = next(iter(StoreStream(str(store), "train", 16, seed=0)))
    offline = Trainer(_config(str(store), tiny_student, tmp_path / "a"), progress=False)
    online = Trainer(_config(str(store), tiny_student, tmp_path / "b", teacher=tiny_teacher), progress=False)
    for variant in ("masked-zero", "kept"):
        offline.config = online.config = _config(str(store), tiny_student, tmp_path / "a", hsk_loss=variant)
        assert offline.loss_on("hsk", batch) == pytest.approx(online.loss_on("hsk", batch), rel=2e-3)


def test_a_crash_between_checkpoint_renames_resumes_from_the_old_checkpoint(tiny_store, tiny_student, tmp_path):
    config = _config(tiny_store, tiny_student, tmp_path, stages=("pred",), pred_epochs=2)
    Trainer(config, progress=False).train()
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")  # as if killed right after the first rename
    resumed = Trainer(config, progress=False)
    resumed.train()
    assert [h["epoch"] for h in resumed.history] == [1, 2]  # nothing retrained: both epochs were done
    assert (tmp_path / "checkpoint" / "state.json").is_file()


def test_every_example_is_trained_on_once_per_epoch_with_worker_processes(tiny_store, tiny_student, tmp_path):
    trainer = Trainer(_config(tiny_store, tiny_student, tmp_path, stages=("pred",), pred_epochs=2, pred_batch_size=12,
                              num_workers=2), progress=False)
    trainer.train()
    stream = StoreStream(tiny_store, "train", 12, seed=0)
    expected = []
    for epoch in range(2):
        stream.set_epoch(epoch)
        expected.append(stream.num_batches(2))
    assert [len(h["step_losses"]) for h in trainer.history] == expected == [10, 10]  # workers take whole batches


def test_a_failing_step_closes_the_prefetch_thread(tiny_store, tiny_student, tmp_path, monkeypatch):
    import threading

    calls = {"n": 0}
    original = Trainer._train_step

    def out_of_memory_on_third_step(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(self, *args)

    monkeypatch.setattr(Trainer, "_train_step", out_of_memory_on_third_step)
    trainer = Trainer(_config(tiny_store, tiny_student, tmp_path, stages=("hsk",)), progress=False)
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer.train()
    assert not [t for t in threading.enumerate() if t.name == "hskstore-prefetch" and t.is_alive()]


def test_a_resumed_fp16_run_keeps_its_learned_loss_scale(tiny_store, tiny_student, tmp_path, monkeypatch):
    """fp16 training (CUDA below capability 8.0) scales the loss; a resume must not restart at 2**16."""
    import hskstore.stages.train as train_module
    from hskstore.runtime.device import Precision

    # A GradScaler runs on the CPU too: the fp16 path's bookkeeping, without fp16 kernels.
    monkeypatch.setattr(train_module, "precision_for", lambda device, amp=True: Precision("fp16-autocast", None, True))
    loaded = []
    original_load = torch.amp.GradScaler.load_state_dict
    monkeypatch.setattr(torch.amp.GradScaler, "load_state_dict",
                        lambda self, state: (loaded.append(dict(state)), original_load(self, state))[1])
    config = _config(tiny_store, tiny_student, tmp_path, stages=("pred",), pred_epochs=2)
    original_save = Trainer._save_checkpoint

    def stop_after_first_epoch(self, state, optimizer):
        original_save(self, state, optimizer)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_checkpoint", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, progress=False).train()
    saved = json.loads((tmp_path / "checkpoint" / "state.json").read_text())["scaler"]
    assert saved["scale"] > 0 and "_growth_tracker" in saved
    monkeypatch.setattr(Trainer, "_save_checkpoint", original_save)
    Trainer(config, progress=False).train()
    assert loaded == [saved]


def test_steps_with_one_optimizer_share_one_loss_scaler_and_its_learned_state(tiny_store, tiny_student, tmp_path,
                                                                              monkeypatch):
    """fp16 learns its loss scale over steps: a scaler made per step would restart at 2**16 every step and skip
    overflowing steps unseen. One scaler lives as long as its optimizer, in `step` as in a stage."""
    import hskstore.stages.train as train_module
    from hskstore.runtime.device import Precision

    made = []
    original = Precision.scaler
    monkeypatch.setattr(Precision, "scaler", lambda self, device: made.append(original(self, device)) or made[-1])
    # A GradScaler runs on the CPU too: the fp16 path's bookkeeping, without fp16 kernels.
    monkeypatch.setattr(train_module, "precision_for", lambda device, amp=True: Precision("fp16-autocast", None, True))
    trainer = Trainer(_config(tiny_store, tiny_student, tmp_path, stages=("hsk",)), progress=False)
    optimizer = trainer.optimizer("hsk", 1e-3)
    batches = iter(trainer.stream("train", 16, "hsk"))
    trainer.step("hsk", optimizer, next(batches))
    trainer.step("hsk", optimizer, next(batches))
    assert len(made) == 1 and trainer.scaler_for(optimizer) is made[0]
    assert made[0].state_dict()["_growth_tracker"] == 2  # two unskipped steps counted by the same scaler
    other = trainer.optimizer("hsk", 1e-3)
    assert trainer.scaler_for(other) is not made[0]  # another optimizer, another scale


def test_offline_and_online_targets_are_one_interface(tiny_store, tiny_student, tiny_teacher, tmp_path):
    from hskstore.store.stream import TOKEN_ARRAYS
    from hskstore.store.targets import OfflineTargets, OnlineTargets

    offline = Trainer(_config(tiny_store, tiny_student, tmp_path / "a"), progress=False).targets
    online = Trainer(_config(tiny_store, tiny_student, tmp_path / "b", teacher=tiny_teacher), progress=False).targets
    assert isinstance(offline, OfflineTargets) and isinstance(online, OnlineTargets)
    assert offline.arrays("hsk") == TOKEN_ARRAYS + ("positions", "values", "masks", "value_scales")  # scales: int8/int4
    assert offline.arrays("pred") == TOKEN_ARRAYS + ("logits",) and offline.arrays(None) == TOKEN_ARRAYS
    assert online.arrays("hsk") == online.arrays("pred") == TOKEN_ARRAYS  # the teacher computes the rest
    batch = next(iter(StoreStream(tiny_store, "train", 16, seed=0)))
    a, b = offline(offline.to_device(batch)), online(online.to_device(batch))
    torch.testing.assert_close(a.positions, b.positions)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-5)
    assert torch.equal(a.kept, b.kept)                      # the same dimensions chosen, from the same bytes
    torch.testing.assert_close(a.values, b.values, rtol=2e-3, atol=2e-3)  # float16 storage of the kept values


def _dense_reference(hidden, positions, values, kept, projection, hidden_size, variant):
    """The dense loss on full-width targets rebuilt from (values, kept): what training computed before."""
    from hskstore.method.losses import hsk_loss

    if kept is None:
        targets, mask = values, None
    elif kept.dim() == 1:
        targets = values.new_zeros(*values.shape[:-1], hidden_size).index_copy_(-1, kept, values)
        mask = torch.zeros(hidden_size, dtype=torch.bool).index_fill_(0, kept, True)
    else:
        targets = values.new_zeros(*values.shape[:-1], hidden_size).scatter_(-1, kept, values)
        mask = torch.zeros(targets.shape, dtype=torch.bool).scatter_(-1, kept, True)
    return hsk_loss(hidden, positions, targets, mask, projection, variant)


def _watch_the_loss(monkeypatch, compare: bool):
    """Record what reaches `sparse_hsk_loss` in `hskstore train`; with `compare`, check it against the dense loss."""
    from hskstore.method import sparse_loss
    from hskstore.stages import train as train_module

    seen = []

    def watched(hidden, positions, values, kept, projection, hidden_size, variant="masked-zero"):
        loss = sparse_loss.sparse_hsk_loss(hidden, positions, values, kept, projection, hidden_size, variant)
        seen.append({"tensors": [t for t in (*hidden, positions, values, kept) if t is not None],
                     "hidden_size": hidden_size, "loss": float(loss)})
        if compare:
            with torch.no_grad():
                dense = _dense_reference(hidden, positions, values, kept, projection, hidden_size, variant)
            seen[-1]["dense"] = float(dense)
        return loss

    monkeypatch.setattr(train_module, "sparse_hsk_loss", watched)
    return seen


def test_offline_training_never_builds_a_dense_target(tiny_store, tiny_student, tmp_path, monkeypatch):
    from hskstore.method import losses, select

    def refused(*args, **kwargs):
        raise AssertionError("a dense HSK target or loss was built during training")

    for module, name in ((losses, "hsk_loss"), (select, "densify"), (select, "densify_packed")):
        monkeypatch.setattr(module, name, refused)
    seen = _watch_the_loss(monkeypatch, compare=False)
    Trainer(_config(tiny_store, tiny_student, tmp_path, stages=("hsk",), max_steps=4), progress=False).train()
    assert len(seen) == 4
    d = seen[0]["hidden_size"]
    assert d == 32
    for call in seen:
        # Nothing 4-dimensional and d wide: the values and indices are k = 8 wide, the student's layers 3-d.
        assert not [tuple(t.shape) for t in call["tensors"] if t.dim() == 4 and t.shape[-1] == d]
        assert any(t.dim() == 4 and t.shape[-1] == 8 for t in call["tensors"])


@pytest.mark.parametrize("variant", ["masked-zero", "kept"])
@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
def test_training_losses_equal_the_dense_loss_on_the_same_batches(tiny_store, tiny_student, tiny_teacher, tmp_path,
                                                                   monkeypatch, variant, online):
    seen = _watch_the_loss(monkeypatch, compare=True)
    teacher = {"teacher": tiny_teacher} if online else {}
    trainer = Trainer(_config(tiny_store, tiny_student, tmp_path, stages=("hsk",), max_steps=4, hsk_loss=variant,
                              **teacher), progress=False)
    trainer.train()
    assert len(seen) == 4
    for call in seen:
        assert call["loss"] > 0
        assert call["loss"] == pytest.approx(call["dense"], rel=1e-5)
    np.testing.assert_allclose(trainer.history[0]["step_losses"], [call["loss"] for call in seen], rtol=1e-6)


def test_a_run_stopped_mid_epoch_resumes_at_the_next_example_even_with_other_workers(tiny_store, tiny_student,
                                                                                     tmp_path, monkeypatch):
    import shutil

    student = tmp_path / "student"
    shutil.copytree(tiny_student, student)
    meta = json.loads((student / "student.json").read_text())
    meta["config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # the same steps, bit for bit
    (student / "student.json").write_text(json.dumps(meta))
    config = dict(stages=("hsk",), hsk_epochs=2, checkpoint_every=3)
    reference = Trainer(_config(tiny_store, str(student), tmp_path / "ref", **config), progress=False)
    reference.train()

    original = Trainer._save_checkpoint

    def stop_at_the_second_save(self, state, optimizer):
        original(self, state, optimizer)
        if state.get("examples") == 96:  # steps 3 and 6 of the first epoch's 8 (120 rows in global batches of 16)
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_checkpoint", stop_at_the_second_save)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(tiny_store, str(student), tmp_path / "run", **config), progress=False).train()
    monkeypatch.setattr(Trainer, "_save_checkpoint", original)
    resumed = Trainer(_config(tiny_store, str(student), tmp_path / "run", num_workers=1, **config), progress=False)
    resumed.train()
    assert [(h["epoch"], h["step"], h.get("resumed_at_example")) for h in resumed.history] == [(1, 8, 96),
                                                                                               (2, 16, None)]
    np.testing.assert_allclose(resumed.history[0]["step_losses"], reference.history[0]["step_losses"][6:], rtol=1e-5)
    for name, value in reference.student.state_dict().items():
        torch.testing.assert_close(resumed.student.state_dict()[name], value, msg=name)
