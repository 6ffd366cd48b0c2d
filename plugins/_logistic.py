"""A small L2-regularised logistic regression and the measures that judge it, in plain numpy.

Used by ``corevital-otel calibrate --outcomes`` and by scripts/validate_detectors.py, so the validation
measures exactly what the command fits. Features are standardised inside the fit (the penalty then
treats them alike) and the returned weights apply to the raw features. Cross-validation assigns whole
groups (prompts) to folds: rows of one prompt never sit on both sides of a split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_L2 = 1.0  # penalty on the standardised weights; fixed, not tuned on the same folds
NEWTON_STEPS = 50


@dataclass(frozen=True)
class Fit:
    intercept: float
    weights: np.ndarray  # on the raw features

    def probability(self, features: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.intercept + np.asarray(features, dtype=np.float64) @ self.weights)))


def fit(features: np.ndarray, failed: np.ndarray, l2: float = DEFAULT_L2) -> Fit:
    """Newton's method on the penalised log-likelihood (the intercept is not penalised)."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(failed, dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 1e-9, std, 1.0)  # a constant feature keeps weight 0
    z = np.hstack([np.ones((x.shape[0], 1)), (x - mean) / std])
    penalty = np.full(z.shape[1], l2)
    penalty[0] = 0.0
    beta = np.zeros(z.shape[1])
    rate = min(max(y.mean(), 1e-3), 1 - 1e-3)
    beta[0] = math.log(rate / (1 - rate))
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(z @ beta)))
        gradient = z.T @ (p - y) + penalty * beta
        hessian = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(z.shape[1])
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    weights = beta[1:] / std
    return Fit(float(beta[0] - (weights * mean).sum()), weights)


def group_folds(groups: Sequence[object], folds: int, seed: int = 0) -> np.ndarray:
    """Fold number per row: the distinct groups are shuffled and dealt round-robin to ``folds`` folds."""
    _, index = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    order = np.random.default_rng(seed).permutation(index.max() + 1 if index.size else 0)
    fold_of_group = np.empty_like(order)
    fold_of_group[order] = np.arange(order.size) % max(folds, 1)
    return fold_of_group[index]


def out_of_fold(
    features: np.ndarray, failed: np.ndarray, groups: Sequence[object], folds: int = 5, l2: float = DEFAULT_L2
) -> np.ndarray:
    """Each row's probability from a fit that never saw its group (grouped k-fold)."""
    x, y = np.asarray(features, dtype=np.float64), np.asarray(failed, dtype=bool)
    fold = group_folds(groups, folds)
    predicted = np.full(y.size, np.nan)
    for number in np.unique(fold):
        test = fold == number
        train = ~test
        if train.sum() == 0 or y[train].all() or not y[train].any():
            predicted[test] = y[train].mean() if train.any() else 0.5  # one class only: its base rate
            continue
        predicted[test] = fit(x[train], y[train], l2).probability(x[test])
    return predicted


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties count half (Mann-Whitney U)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return math.nan
    ordered = np.sort(neg)
    below = np.searchsorted(ordered, pos, side="left")
    ties = np.searchsorted(ordered, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


def expected_calibration_error(probability: np.ndarray, failed: np.ndarray, bins: int = 10) -> float:
    """Σ over equal-width probability bins of (share of rows) × |mean predicted − observed rate|."""
    p, y = np.asarray(probability, dtype=np.float64), np.asarray(failed, dtype=np.float64)
    if not p.size:
        return math.nan
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for number in np.unique(which):
        members = which == number
        total += members.mean() * abs(p[members].mean() - y[members].mean())
    return float(total)
