"""A store in your own loop: HskDataset + collate_hsk + the same losses as `hskstore train`.

Both loops of docs/own-loop.md run here, on the tiny store: a plain PyTorch loop and a
`transformers.Trainer` subclass. On the same batch, their HSK and prediction losses equal the loss
`hskstore train` computes (Trainer.loss_on), and no dense (B, D, n, d) target is built.
"""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hskstore.store.dataset import HskDataset, collate_hsk, prediction_loss


@pytest.fixture(scope="module")
def trainer(tiny_store, tiny_student, tmp_path_factory):
    """hskstore's own trainer on the tiny store: the reference for the losses."""
    from hskstore.stages.train import TrainConfig, Trainer

    return Trainer(TrainConfig(store=tiny_store, student=tiny_student, output=str(tmp_path_factory.mktemp("run")),
                               device="cpu"), progress=False)


def test_items_hold_tokens_logits_and_the_stored_hsk(tiny_store):
    dataset = HskDataset(tiny_store, "train")
    assert len(dataset) == 120 and dataset.hidden_size == 32 and dataset.student_layers == [1, 2]
    batch = collate_hsk([dataset[i] for i in range(4)])
    assert batch["positions"].shape == (4, 2, 5) and batch["values"].shape == (4, 2, 5, 8)
    assert batch["kept"].shape == (4, 2, 5, 8) and batch["teacher_logits"].shape == (4, 3)
    assert batch["input_ids"].shape[1] == int(dataset.arrays["lengths"][:4].max())


@pytest.mark.parametrize("stage", ["hsk", "pred"])
def test_the_own_loop_loss_equals_hskstore_trains_on_the_same_batch(tiny_store, trainer, stage):
    dataset = HskDataset(tiny_store, "train")
    rows = list(range(16))
    reference = trainer.loss_on(stage, {name: array[rows] for name, array in dataset.arrays.items()})
    batch = collate_hsk([dataset[i] for i in rows])
    trainer.student.eval()
    with torch.no_grad():
        out = trainer.student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        if stage == "hsk":
            ours = dataset.hsk_loss(out.hidden_states, batch, trainer.projection)
        else:
            ours = prediction_loss(out.logits, batch["teacher_logits"], batch["labels"])
    assert float(ours) == pytest.approx(reference, rel=1e-5)


def test_a_plain_pytorch_loop_distils_from_the_store(tiny_store, tiny_student):
    """The loop of docs/own-loop.md, section 'Plain PyTorch', at a few steps."""
    from hskstore import load_student

    torch.manual_seed(0)
    dataset = HskDataset(tiny_store, "train")
    student = load_student(tiny_student).train()
    projection = torch.nn.Linear(16, dataset.hidden_size)          # d_S 16 -> d 32
    optimizer = torch.optim.AdamW([*student.parameters(), *projection.parameters()], lr=1e-3)
    loader = DataLoader(dataset, batch_size=16, shuffle=True, collate_fn=collate_hsk)
    losses = []
    for _ in range(3):
        for batch in loader:
            out = student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            loss = dataset.hsk_loss(out.hidden_states, batch, projection)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
    assert np.mean(losses[-8:]) < np.mean(losses[:8])


@pytest.mark.slow
def test_a_transformers_trainer_subclass_distils_with_compute_loss(tiny_store, tmp_path):
    """docs/own-loop.md, section 'transformers.Trainer': the HSK loss inside compute_loss."""
    pytest.importorskip("accelerate")
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    dataset = HskDataset(tiny_store, "train")
    model = BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=64, num_labels=3))

    class HskTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        token_type_ids=inputs["token_type_ids"], output_hidden_states=True)
            loss = dataset.hsk_loss(out.hidden_states, inputs, torch.nn.Identity())   # d_S = d: no projection
            return (loss, out) if return_outputs else loss

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, max_steps=6,
                             learning_rate=1e-3, logging_steps=1, report_to=[], use_cpu=True,
                             remove_unused_columns=False, save_strategy="no", disable_tqdm=True)
    trainer = HskTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate_hsk)
    trainer.train()
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 6 and logged[-1] < logged[0]
