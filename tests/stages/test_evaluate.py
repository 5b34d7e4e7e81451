"""`predict` refuses inputs a model would label anyway: no text, an empty text, unpaired second texts."""

import pytest

from hskstore.errors import DataError
from hskstore.stages.evaluate import predict_texts


@pytest.mark.parametrize("texts, pairs, message", [
    ([], None, "nothing to predict"),
    ([""], None, "input 1's text is empty"),
    (["fine", "   "], None, "input 2's text is empty"),
    (["a premise"], [""], "input 1's second text is empty"),
    (["one", "two"], ["only one"], "2 texts but 1 second texts"),
])
def test_empty_or_unpaired_inputs_are_refused_before_the_student_loads(tmp_path, texts, pairs, message):
    with pytest.raises(DataError, match=message):
        predict_texts(tmp_path / "no-student-needed", texts, pairs)


def test_predict_on_the_command_line_refuses_an_empty_text(tmp_path):
    from click.testing import CliRunner

    from hskstore.cli import cli

    result = CliRunner().invoke(cli, ["predict", str(tmp_path), ""])
    assert result.exit_code == 2 and result.output.strip().startswith("error: input 1's text is empty")
