"""GLUE metrics in numpy: accuracy, binary F1, Matthews correlation, Pearson and Spearman.

Written out rather than imported so that evaluation needs neither scikit-learn nor scipy.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

__all__ = ["compute_metrics", "primary_metric", "METRICS"]

# metric name -> the key that ranks checkpoints ("best epoch")
METRICS = {"accuracy": "accuracy", "f1": "f1", "matthews": "matthews", "pearson_spearman": "pearson_spearman"}


def primary_metric(metric: str) -> str:
    """The key of `compute_metrics(metric, ...)` that decides which checkpoint is best."""
    _check(metric)
    return METRICS[metric]


def compute_metrics(metric: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Score predictions against gold labels.

    Args:
        metric: accuracy | f1 | matthews | pearson_spearman.
        predictions: classification logits (N, C); regression scores (N,) or (N, 1).
        labels: (N,) class ids, or gold scores for regression.
    Returns:
        accuracy -> {accuracy}; f1 -> {f1, accuracy} (F1 of class 1); matthews -> {matthews, accuracy};
        pearson_spearman -> {pearson, spearman, pearson_spearman (their mean)}. Plain floats.
    """
    _check(metric)
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if metric == "pearson_spearman":
        scores = predictions.reshape(len(predictions), -1)
        if scores.shape[1] != 1:
            raise ConfigError(f"pearson_spearman expects one score per example (N,) or (N, 1), got {predictions.shape}")
        scores = scores[:, 0].astype(np.float64)
        gold = labels.astype(np.float64)
        pearson = _pearson(scores, gold)
        spearman = _pearson(_rank(scores), _rank(gold))
        return {"pearson": pearson, "spearman": spearman, "pearson_spearman": (pearson + spearman) / 2}
    if predictions.ndim != 2:
        raise ConfigError(f"{metric} expects logits (N, C), got shape {predictions.shape}")
    predicted = predictions.argmax(-1)
    gold = labels.astype(np.int64)
    out = {"accuracy": float((predicted == gold).mean()) if len(gold) else 0.0}
    if metric == "f1":
        out = {"f1": _binary_f1(predicted, gold), **out}
    elif metric == "matthews":
        out = {"matthews": _matthews(predicted, gold, predictions.shape[1]), **out}
    return out


def _check(metric):
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {list(METRICS)}, got {metric!r}")


def _binary_f1(predicted: np.ndarray, gold: np.ndarray) -> float:
    tp = float(np.sum((predicted == 1) & (gold == 1)))
    fp = float(np.sum((predicted == 1) & (gold != 1)))
    fn = float(np.sum((predicted != 1) & (gold == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _matthews(predicted: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
    """Multiclass MCC (Gorodkin's R_K, as scikit-learn); 0 when either side is constant."""
    k = max(num_classes, int(gold.max(initial=0)) + 1)
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (gold, predicted), 1)
    t = confusion.sum(1)   # true count per class
    p = confusion.sum(0)   # predicted count per class
    c, s = np.trace(confusion), confusion.sum()
    denominator = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return 0.0 if denominator == 0 else float((c * s - t @ p) / denominator)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x @ x) * (y @ y))
    return 0.0 if denominator == 0 else float(x @ y / denominator)


def _rank(values: np.ndarray) -> np.ndarray:
    """Ranks 1..N, ties given the average of the ranks they span (as scipy.stats.rankdata)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    # Boundaries of runs of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    average = (starts + ends + 1) / 2.0          # mean of 1-based ranks start+1 .. end
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks
