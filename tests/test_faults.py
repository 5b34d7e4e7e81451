"""Bad inputs and faults from the command line: each is one `error:` line, exit status 2, and nothing on disk lost.

Inputs and identity: a teacher without a vocabulary, a teacher re-fine-tuned under a partial store, a
store re-extracted under a checkpoint, outputs that cannot be written, max lengths past the position
embeddings, numbers out of range, broken config.json files, and a disk that fills up mid-run.
"""

import errno
import json
import shutil
from pathlib import Path

import pytest
import zarr
from click.testing import CliRunner

from conftest import save_tiny_teacher
from hskstore.cli import cli
from hskstore.method.compression import Compression
from hskstore.errors import ConfigError, ModelError
from hskstore.stages.extract import ExtractConfig
from hskstore.stages.finetune import FinetuneConfig
from hskstore.store import StoreWriter, open_store
from hskstore.models.teacher import load_tokenizer, teacher_fingerprint
from hskstore.stages.train import TrainConfig, store_identity

STORE_OPTS = ("--task", "tweets", "--limit", 40, "--chunk-rows", 16, "--student-layers", 2, "--depth", 2, "--length", 5, "--width", 8,
              "--device", "cpu")
TRAIN_OPTS = ("--stages", "hsk", "--hsk-epochs", 1, "--hsk-batch-size", 16, "--max-steps", 1, "--device", "cpu")


def hsk(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    """Exit 2 and exactly one `error:` line naming the problem; never a traceback."""
    assert "Traceback" not in result.output
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output[-2000:]} {result.exception!r}"
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def assert_only_an_error(result, *fragments):
    """An up-front error: the one line is all that was printed."""
    line = assert_one_line_error(result, *fragments)
    printed = [text for text in result.output.strip().splitlines() if not text.startswith("warning: ")]
    assert printed == [line]


def _copy(directory, to: Path) -> str:
    shutil.copytree(directory, to)
    return str(to)


@pytest.fixture(scope="module")
def store(tiny_teacher, tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "s.zarr"
    assert hsk("extract", "--teacher", tiny_teacher, "--output", path, *STORE_OPTS).exit_code == 0
    return str(path)


@pytest.fixture(scope="module")
def student(store, tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "student"
    built = hsk("student", "bert", "--store", store, "--output", path, "--layers", 2, "--hidden", 16, "--heads", 2,
                "--ffn", 32)
    assert built.exit_code == 0, built.output
    return str(path)


# ---------------------------------------------------------------------------------------------- tokenizer

@pytest.fixture()
def teacher_without_vocab(tiny_teacher, tmp_path):
    teacher = _copy(tiny_teacher, tmp_path / "no-vocab")
    for name in ("vocab.txt", "tokenizer.json"):
        (Path(teacher) / name).unlink(missing_ok=True)
    return teacher


def test_a_teacher_without_tokenizer_files_is_refused_before_anything_is_written(teacher_without_vocab, tmp_path):
    result = hsk("extract", "--teacher", teacher_without_vocab, "--output", tmp_path / "s.zarr", *STORE_OPTS)
    assert_only_an_error(result, "no tokenizer vocabulary", "vocab.txt")
    assert not (tmp_path / "s.zarr").exists()  # not an all-[UNK] store


def test_finetuning_a_model_without_tokenizer_files_is_refused(teacher_without_vocab, tmp_path):
    result = hsk("finetune", "--model", teacher_without_vocab, "--output", tmp_path / "t", "--limit", 8,
                 "--epochs", 1, "--device", "cpu")
    assert_only_an_error(result, "no tokenizer vocabulary")
    assert not (tmp_path / "t").exists()


def test_a_tokenizer_of_special_tokens_only_is_refused(teacher_without_vocab):
    # tokenizer_config.json alone makes transformers build a 5-token tokenizer: every word [UNK].
    with pytest.raises(ModelError, match="no tokenizer vocabulary"):
        load_tokenizer(teacher_without_vocab)


# ---------------------------------------------------------------------------------------------- teacher identity

def test_the_fingerprint_follows_contents_not_paths(tiny_teacher, tmp_path):
    copy = _copy(tiny_teacher, tmp_path / "copy")
    original = teacher_fingerprint(tiny_teacher)
    assert original == teacher_fingerprint(copy)
    assert set(original["weights"]) == {"config.json", "model.safetensors"}
    assert "tokenizer.json" in original["tokenizer"] and original["algorithm"] == "sha256"
    weights = Path(copy) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit in the last weight
    weights.write_bytes(bytes(data))
    changed = teacher_fingerprint(copy)
    assert changed["weights"]["model.safetensors"] != original["weights"]["model.safetensors"]
    assert changed["tokenizer"] == original["tokenizer"]
    (Path(copy) / "tokenizer_config.json").write_text("{}")
    assert teacher_fingerprint(copy)["tokenizer"] != original["tokenizer"]


@pytest.mark.integration
def test_the_store_records_its_teachers_fingerprint(store, tiny_teacher):
    assert open_store(store).attrs["teacher_fingerprint"] == teacher_fingerprint(tiny_teacher)


def _partial_store(teacher, path, monkeypatch):
    """An extraction killed after its first chunk."""
    original = StoreWriter.write_chunk
    calls = {"n": 0}

    def stop_after_one(self, *args):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt("simulated kill")
        original(self, *args)

    monkeypatch.setattr(StoreWriter, "write_chunk", stop_after_one)
    hsk("extract", "--teacher", teacher, "--output", path, *STORE_OPTS)
    monkeypatch.setattr(StoreWriter, "write_chunk", original)
    with open_store(path, allow_incomplete=True) as partial:
        assert partial.chunks_done("train") == {0}


@pytest.mark.integration
def test_a_teacher_refinetuned_in_place_cannot_finish_a_partial_store(tmp_path, monkeypatch):
    teacher = save_tiny_teacher(tmp_path / "teacher", seed=0)
    path = tmp_path / "s.zarr"
    _partial_store(teacher, path, monkeypatch)
    save_tiny_teacher(Path(teacher), seed=1)  # "re-fine-tuned" into the same directory: same path, new weights
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    result = hsk("extract", "--teacher", teacher, "--output", path, *STORE_OPTS)
    assert_only_an_error(result, "partial store from a different run", "teacher_fingerprint", "--overwrite")
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before  # the partial store is left as it was


@pytest.mark.integration
def test_a_moved_teacher_with_the_same_contents_resumes(tmp_path, monkeypatch):
    teacher = save_tiny_teacher(tmp_path / "teacher")
    path = tmp_path / "s.zarr"
    _partial_store(teacher, path, monkeypatch)
    moved = shutil.move(teacher, tmp_path / "moved")
    result = hsk("extract", "--teacher", moved, "--output", path, *STORE_OPTS)
    assert result.exit_code == 0, result.output
    assert open_store(path).complete


@pytest.mark.integration
def test_an_online_teacher_with_the_same_shapes_but_other_weights_is_refused(store, student, tmp_path):
    other = save_tiny_teacher(tmp_path / "other", seed=1)  # same layers, width, vocabulary and labels
    result = hsk("train", store, "--student", student, "--output", tmp_path / "run", "--teacher", other, *TRAIN_OPTS)
    assert_only_an_error(result, "is not the store's teacher", "fingerprint")


@pytest.mark.integration
def test_a_rosita_student_is_not_cut_from_a_look_alike_teacher(store, tmp_path):
    other = save_tiny_teacher(tmp_path / "other", seed=1)
    result = hsk("student", "rosita", "--teacher", other, "--store", store, "--output", tmp_path / "r", "--layers", 2,
                 "--heads", 2, "--ffn", 16, "--rank", 8, "--importance-examples", 16)
    assert_only_an_error(result, "extracted from another teacher", "teacher_fingerprint")
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------- store identity

@pytest.mark.integration
def test_a_checkpoint_is_not_resumed_on_a_re_extracted_store(tiny_teacher, tmp_path):
    path, run = tmp_path / "s.zarr", tmp_path / "run"
    assert hsk("extract", "--teacher", tiny_teacher, "--output", path, *STORE_OPTS).exit_code == 0
    built = hsk("student", "bert", "--store", path, "--output", tmp_path / "student", "--layers", 2, "--hidden", 16,
                "--heads", 2, "--ffn", 32)
    assert built.exit_code == 0, built.output
    first = hsk("train", path, "--student", tmp_path / "student", "--output", run, *TRAIN_OPTS)
    assert first.exit_code == 0, first.output
    state = (run / "checkpoint" / "state.json").read_text()
    other = [str(a) if a != 5 else "4" for a in STORE_OPTS]  # --length 4: other compression, same path
    assert hsk("extract", "--teacher", tiny_teacher, "--output", path, *other, "--overwrite").exit_code == 0
    again = hsk("train", path, "--student", tmp_path / "student", "--output", run, *TRAIN_OPTS)
    assert_one_line_error(again, "re-extracted", "--no-resume", "another --output")
    assert (run / "checkpoint" / "state.json").read_text() == state
    assert json.loads(state)["run"]["store_identity"] != store_identity(open_store(path).attrs)


def test_a_checkpoint_is_not_resumed_after_the_initial_student_was_replaced(store, tmp_path):
    student, run = tmp_path / "student", tmp_path / "run"
    bert = ("student", "bert", "--store", store, "--output", student, "--layers", 2, "--heads", 2, "--ffn", 32)
    assert hsk(*bert, "--hidden", 16).exit_code == 0
    first = hsk("train", store, "--student", student, "--output", run, *TRAIN_OPTS)
    assert first.exit_code == 0, first.output
    state = (run / "checkpoint" / "state.json").read_text()
    assert hsk(*bert, "--hidden", 24, "--overwrite").exit_code == 0   # another student at the same path
    again = hsk("train", store, "--student", student, "--output", run, *TRAIN_OPTS)
    assert_one_line_error(again, "initial student", "was replaced", "--no-resume")
    assert (run / "checkpoint" / "state.json").read_text() == state


def test_store_identity_is_the_uuid_when_the_store_has_one():
    attrs = {"uuid": "a1", "created_at": "2026-01-01T00:00:00+00:00", "compression": {"length": 5}}
    assert store_identity(attrs) == {"uuid": "a1"}
    older = store_identity({k: v for k, v in attrs.items() if k != "uuid"} | {"teacher_fingerprint": {"x": 1}})
    assert older == {"created_at": attrs["created_at"], "compression": {"length": 5}, "teacher_fingerprint": {"x": 1}}


# ---------------------------------------------------------------------------------------------- outputs

@pytest.fixture()
def a_file(tmp_path):
    path = tmp_path / "precious.txt"
    path.write_text("keep me")
    return path


def _commands(store, student, tiny_teacher, output):
    return {
        "finetune": ("finetune", "--model", tiny_teacher, "--output", output, "--limit", 8, "--epochs", 1,
                     "--device", "cpu"),
        "extract": ("extract", "--teacher", tiny_teacher, "--output", output, *STORE_OPTS),
        "student": ("student", "bert", "--store", store, "--output", output, "--layers", 2, "--hidden", 16,
                    "--heads", 2, "--ffn", 32),
        "train": ("train", store, "--student", student, "--output", output, *TRAIN_OPTS),
    }


@pytest.mark.parametrize("command", ["finetune", "extract", "student", "train"])
@pytest.mark.integration
def test_an_output_that_is_a_file_is_refused_up_front_and_kept(command, store, student, tiny_teacher, a_file):
    result = hsk(*_commands(store, student, tiny_teacher, a_file)[command])
    assert_only_an_error(result, str(a_file))
    assert a_file.read_text() == "keep me"


@pytest.mark.parametrize("command", ["finetune", "extract", "student", "train"])
@pytest.mark.integration
def test_an_output_below_a_file_is_refused_up_front(command, store, student, tiny_teacher, a_file):
    result = hsk(*_commands(store, student, tiny_teacher, a_file / "sub")[command])
    assert_only_an_error(result, "cannot be created", "is a file")
    assert a_file.read_text() == "keep me"


@pytest.mark.integration
def test_an_unwritable_output_is_refused_up_front(store, student, tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes through directory permissions")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = hsk("train", store, "--student", student, "--output", locked / "run", *TRAIN_OPTS)
    assert_only_an_error(result, "not writable")


# ---------------------------------------------------------------------------------------------- max length

def test_finetune_refuses_a_max_length_past_the_position_embeddings(tiny_teacher, tmp_path):
    result = hsk("finetune", "--model", tiny_teacher, "--output", tmp_path / "t", "--max-length", 200, "--limit", 8,
                 "--epochs", 1, "--device", "cpu")
    assert_only_an_error(result, "max length 200", "128 positions", "--max-length 128")
    assert not (tmp_path / "t").exists()


def test_a_dry_run_checks_the_max_length_against_the_teacher(tiny_teacher, tmp_path):
    result = hsk("extract", "--teacher", tiny_teacher, "--output", tmp_path / "s.zarr", "--max-length", 200, "--dry-run")
    assert_only_an_error(result, "128 positions")


@pytest.mark.integration
def test_overwrite_with_a_max_length_the_teacher_cannot_take_keeps_the_old_store(tiny_teacher, tmp_path):
    path = tmp_path / "s.zarr"
    assert hsk("extract", "--teacher", tiny_teacher, "--output", path, *STORE_OPTS).exit_code == 0
    result = hsk("extract", "--teacher", tiny_teacher, "--output", path, *STORE_OPTS, "--max-length", 200,
                 "--overwrite")
    assert_only_an_error(result, "128 positions")
    kept = open_store(path)
    assert kept.complete and kept.resolved.max_length == 32


@pytest.mark.integration
def test_train_refuses_a_student_with_fewer_positions_than_the_stores_length(store, tmp_path):
    from hskstore.models.student import build_bert_student, save_student

    short = build_bert_student(num_labels=3, vocab_size=30522, num_layers=2, hidden_size=16, intermediate_size=32,
                               num_heads=2, max_position_embeddings=16)
    save_student(short, tmp_path / "short")
    result = hsk("train", store, "--student", tmp_path / "short", "--output", tmp_path / "run", *TRAIN_OPTS)
    assert_only_an_error(result, "up to 32 tokens", "16 positions")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- numbers in range

@pytest.mark.parametrize("command, args, message", [
    ("finetune", ("--data-seed", -1), "--data-seed"),
    ("extract", ("--data-seed", -1), "--data-seed"),
    ("train", ("--workers", -1), "--workers"),
    ("train", ("--weight-decay", -1), "--weight-decay"),
])
@pytest.mark.integration
def test_numbers_out_of_range_are_one_line_errors(command, args, message, store, student, tiny_teacher, tmp_path):
    output = tmp_path / "out"
    result = hsk(*_commands(store, student, tiny_teacher, output)[command], *args)
    assert_only_an_error(result, message, "-1")
    assert not output.exists()


def test_config_dataclasses_list_every_out_of_range_number():
    with pytest.raises(ConfigError) as caught:
        TrainConfig(store="s", student="t", output="o", num_workers=-1, weight_decay=-1.0, seed=-1)
    assert [p.split(" ")[0] for p in caught.value.problems] == ["weight_decay", "num_workers", "seed"]
    with pytest.raises(ConfigError) as caught:
        FinetuneConfig(model="m", task="tweets", output="o", data_seed=-1, weight_decay=-1.0, seed=2**32)
    assert {p.split(" ")[0] for p in caught.value.problems} == {"weight_decay", "seed", "data_seed"}
    with pytest.raises(ConfigError) as caught:
        ExtractConfig(teacher="t", task="tweets", output="o", data_seed=-1, limit=0, compression=Compression())
    assert {p.split(" ")[0] for p in caught.value.problems} == {"limit", "data_seed"}


# ---------------------------------------------------------------------------------------------- config.json

@pytest.mark.parametrize("text, message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "holds a JSON list"),
    (None, "invalid sizes (num_hidden_layers='four')"),
])
def test_an_invalid_teacher_config_json_is_a_one_line_model_error(text, message, tiny_teacher, tmp_path):
    teacher = _copy(tiny_teacher, tmp_path / "teacher")
    config_file = Path(teacher) / "config.json"
    if text is None:
        text = json.dumps(json.loads(config_file.read_text()) | {"num_hidden_layers": "four"})
    config_file.write_text(text)
    result = hsk("extract", "--teacher", teacher, "--output", tmp_path / "s.zarr", *STORE_OPTS)
    assert_only_an_error(result, message)
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("text, message", [
    ("{oops", "hskstore_teacher.json is not valid JSON"),
    ('{"max_length": "long"}', "max_length='long', expected an integer"),
])
def test_a_broken_hskstore_teacher_json_is_a_one_line_model_error(text, message, tiny_teacher, tmp_path):
    teacher = _copy(tiny_teacher, tmp_path / "teacher")
    (Path(teacher) / "hskstore_teacher.json").write_text(text)
    result = hsk("extract", "--teacher", teacher, "--output", tmp_path / "s.zarr", *STORE_OPTS)
    assert_only_an_error(result, message)
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.integration
def test_a_bert_student_checkpoint_with_fewer_positions_than_the_store_is_refused(store, tmp_path):
    short = save_tiny_teacher(tmp_path / "short", max_positions=16)
    result = hsk("student", "bert", "--store", store, "--checkpoint", short, "--output", tmp_path / "student")
    assert_only_an_error(result, "max length 32", "16 positions")
    assert not (tmp_path / "student").exists()


@pytest.mark.integration
def test_an_invalid_checkpoint_config_json_for_a_bert_student_is_one_line(store, tiny_teacher, tmp_path):
    checkpoint = _copy(tiny_teacher, tmp_path / "checkpoint")
    (Path(checkpoint) / "config.json").write_text("{truncated")
    result = hsk("student", "bert", "--store", store, "--checkpoint", checkpoint, "--output", tmp_path / "student")
    assert_only_an_error(result, "is not valid JSON")


@pytest.mark.integration
def test_a_mistyped_student_json_config_is_one_line(store, student, tmp_path):
    broken = _copy(student, tmp_path / "student")
    meta_file = Path(broken) / "student.json"
    meta = json.loads(meta_file.read_text())
    meta["config"]["hidden_size"] = "sixteen"
    meta_file.write_text(json.dumps(meta))
    result = hsk("train", store, "--student", broken, "--output", tmp_path / "run", *TRAIN_OPTS)
    assert_one_line_error(result, "student.json has an invalid bert config")


# ---------------------------------------------------------------------------------------------- disk full

def _enospc(path="model.safetensors"):
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def _safetensors_enospc():
    """What safetensors' Rust writer raises on a full disk (seen on a 2 MB tmpfs): not an OSError."""
    import safetensors

    return safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.integration
def test_a_disk_full_during_training_keeps_the_last_checkpoint_and_a_rerun_resumes(store, student, tmp_path,
                                                                                 monkeypatch):
    import safetensors.torch

    run = tmp_path / "run"
    args = ("train", store, "--student", student, "--output", run, "--stages", "hsk", "--hsk-epochs", 2,
            "--hsk-batch-size", 16, "--device", "cpu")
    original, calls = safetensors.torch.save_file, {"n": 0}

    def fills_up_after_the_first_checkpoint(tensors, filename, *a, **k):
        calls["n"] += 1
        if calls["n"] > 3:  # student, projection and optimizer of the first checkpoint fit; then the disk is full
            raise _safetensors_enospc()
        return original(tensors, filename, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", fills_up_after_the_first_checkpoint)
    assert_one_line_error(hsk(*args), "no space left on device", "rerun")
    assert json.loads((run / "checkpoint" / "state.json").read_text())["epoch"] == 1
    monkeypatch.setattr(safetensors.torch, "save_file", original)
    resumed = hsk(*args)
    assert resumed.exit_code == 0, resumed.output
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


@pytest.mark.integration
def test_a_disk_full_during_extraction_is_one_line_and_the_store_resumes(tiny_teacher, tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    original, calls = StoreWriter.write_chunk, {"n": 0}

    def fills_up_on_the_second_chunk(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _enospc(path / "train" / "values" / "c" / "1" / "0" / "0" / "0")
        original(self, *args)

    monkeypatch.setattr(StoreWriter, "write_chunk", fills_up_on_the_second_chunk)
    assert_one_line_error(hsk("extract", "--teacher", tiny_teacher, "--output", path, *STORE_OPTS),
                          "no space left on device", "s.zarr")
    monkeypatch.setattr(StoreWriter, "write_chunk", original)
    assert hsk("extract", "--teacher", tiny_teacher, "--output", path, *STORE_OPTS).exit_code == 0
    assert open_store(path).complete


@pytest.mark.integration
def test_a_disk_full_when_the_teacher_is_saved_is_one_line(tiny_teacher, tmp_path, monkeypatch):
    import importlib

    def full(*_args, **_kwargs):
        raise _enospc(tmp_path / "t" / "model.safetensors")

    # The module, not the `finetune` function that hskstore re-exports under the same name.
    monkeypatch.setattr(importlib.import_module("hskstore.stages.finetune"), "_save", full)
    result = hsk("finetune", "--model", tiny_teacher, "--output", tmp_path / "t", "--limit", 8, "--epochs", 1,
                 "--device", "cpu")
    assert_one_line_error(result, "no space left on device", "model.safetensors")
