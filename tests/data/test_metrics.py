"""GLUE metrics match hand-computed values, without scikit-learn or scipy."""

import numpy as np
import pytest

from hskstore.errors import ConfigError
from hskstore.data.metrics import compute_metrics, primary_metric


def _logits(predicted, num_classes=2):
    """Logits whose argmax is `predicted`."""
    return np.eye(num_classes)[np.asarray(predicted)] * 3.0 - 1.0


def test_accuracy_is_the_share_of_argmax_hits():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 5.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert compute_metrics("accuracy", logits, np.array([0, 1, 1, 2])) == {"accuracy": 0.5}


def test_f1_is_the_binary_f1_of_class_one_and_reports_accuracy_too():
    # predicted 1 1 1 0 0 0 ; gold 1 1 0 1 0 0 -> tp 2, fp 1, fn 1 -> F1 = 4 / 6
    result = compute_metrics("f1", _logits([1, 1, 1, 0, 0, 0]), np.array([1, 1, 0, 1, 0, 0]))
    assert result == pytest.approx({"f1": 2 / 3, "accuracy": 4 / 6})


def test_f1_is_zero_when_class_one_is_never_hit():
    assert compute_metrics("f1", _logits([0, 0]), np.array([1, 0]))["f1"] == 0.0


def test_matthews_matches_the_binary_formula():
    # tp 2, tn 2, fp 1, fn 1: (2*2 - 1*1) / sqrt(3*3*3*3) = 3 / 9
    result = compute_metrics("matthews", _logits([1, 1, 1, 0, 0, 0]), np.array([1, 1, 0, 1, 0, 0]))
    assert result == pytest.approx({"matthews": 1 / 3, "accuracy": 4 / 6})


def test_matthews_is_zero_for_a_constant_predictor():
    assert compute_metrics("matthews", _logits([1, 1, 1]), np.array([1, 0, 1]))["matthews"] == 0.0


def test_matthews_handles_several_classes():
    # confusion (rows gold, cols predicted) [[1,1,0],[0,1,0],[0,0,2]]: c=4, s=5, t=(2,1,2), p=(1,2,2)
    # (4*5 - (2+2+4)) / sqrt((25 - 9) * (25 - 9)) = 12 / 16
    predicted, gold = [0, 1, 1, 2, 2], [0, 0, 1, 2, 2]
    assert compute_metrics("matthews", _logits(predicted, 3), np.array(gold))["matthews"] == pytest.approx(0.75)


def test_pearson_spearman_reports_both_and_their_mean():
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    gold = np.array([1.0, 2.0, 3.0, 5.0])
    result = compute_metrics("pearson_spearman", scores, gold)
    # Pearson by hand: x - mean = (-1.5,-.5,.5,1.5), y - mean = (-1.75,-.75,.25,2.25): 6.5 / sqrt(5 * 8.75)
    pearson = 6.5 / np.sqrt(5 * 8.75)
    assert result == pytest.approx({"pearson": pearson, "spearman": 1.0, "pearson_spearman": (pearson + 1) / 2})


def test_spearman_gives_ties_their_average_rank():
    # ranks of scores (1, 2.5, 2.5, 4), of gold (1, 2, 3, 4): Pearson of the ranks
    scores = np.array([[0.1], [0.5], [0.5], [0.9]])  # (N, 1) is accepted like (N,)
    gold = np.array([1.0, 2.0, 3.0, 4.0])
    x = np.array([1, 2.5, 2.5, 4]) - 2.5
    y = np.array([1, 2, 3, 4]) - 2.5
    expected = (x @ y) / np.sqrt((x @ x) * (y @ y))
    assert compute_metrics("pearson_spearman", scores, gold)["spearman"] == pytest.approx(expected)


def test_metrics_agree_with_scikit_learn_and_scipy_when_installed():
    metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    logits, gold = rng.normal(size=(200, 3)), rng.integers(0, 3, 200)
    binary_logits, binary_gold = rng.normal(size=(200, 2)), rng.integers(0, 2, 200)
    assert compute_metrics("matthews", logits, gold)["matthews"] == pytest.approx(
        metrics.matthews_corrcoef(gold, logits.argmax(1)))
    assert compute_metrics("f1", binary_logits, binary_gold)["f1"] == pytest.approx(
        metrics.f1_score(binary_gold, binary_logits.argmax(1)))
    scores, targets = rng.integers(0, 5, 100).astype(float), rng.normal(size=100)  # many ties in scores
    result = compute_metrics("pearson_spearman", scores, targets)
    assert result["pearson"] == pytest.approx(stats.pearsonr(scores, targets)[0])
    assert result["spearman"] == pytest.approx(stats.spearmanr(scores, targets)[0])


def test_primary_metric_names_the_key_that_ranks_checkpoints():
    assert [primary_metric(m) for m in ("accuracy", "f1", "matthews", "pearson_spearman")] == [
        "accuracy", "f1", "matthews", "pearson_spearman"]


def test_an_unknown_metric_is_a_config_error():
    with pytest.raises(ConfigError, match=r"metric must be one of .*got 'auc'"):
        compute_metrics("auc", np.zeros((2, 2)), np.zeros(2))


def test_classification_metrics_need_two_dimensional_logits():
    with pytest.raises(ConfigError, match=r"expects logits \(N, C\)"):
        compute_metrics("accuracy", np.zeros(3), np.zeros(3))
