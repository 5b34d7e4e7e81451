"""Teacher, student and run directories carry a README.md model card: task, metrics and split, base model,
for students the store's compression and A^HSK, and the command that made them."""

from click.testing import CliRunner

from hskstore.cli import cli


def test_the_student_command_and_train_write_model_cards(tiny_store, tiny_teacher, tmp_path):
    runner = CliRunner()
    built = runner.invoke(cli, ["student", "bert", "--store", tiny_store, "--output", str(tmp_path / "student"),
                                "--layers", "2", "--hidden", "16", "--heads", "2", "--ffn", "32"],
                          catch_exceptions=False)
    assert built.exit_code == 0, built.output
    initial = (tmp_path / "student" / "README.md").read_text()
    assert "tags: [hskstore, knowledge-distillation, student]" in initial and "**Task:** tweets" in initial
    assert "(N^D, N^L, N^W) = (2, 5, 0.25)" in initial and "no metrics yet" in initial
    trained = runner.invoke(cli, ["train", tiny_store, "--student", str(tmp_path / "student"), "--output",
                                  str(tmp_path / "run"), "--max-steps", "2", "--hsk-epochs", "1", "--pred-epochs", "1",
                                  "--device", "cpu"], catch_exceptions=False)
    assert trained.exit_code == 0, trained.output
    card = (tmp_path / "run" / "student" / "README.md").read_text()
    assert "## Metrics (validation split)" in card and "| accuracy |" in card
    assert "**A^HSK:** 2.5 token vectors per example" in card and tiny_teacher in card and tiny_store in card


def test_a_card_states_a_hsk_in_token_vectors_per_example_as_info_does_not_as_a_percentage():
    from hskstore.models.card import model_card

    card = model_card(title="s", role="student", amount_hsk=0.891)   # the demo store's (1, 9, 38) at d = 384
    line = next(line for line in card.splitlines() if "A^HSK" in line)
    assert "0.891 token vectors per example" in line and "%" not in line
