"""Statistics: bootstrap CIs, permutation p-values, multiple-testing correction.

Every headline number is reported as ``{"value", "lo", "hi", "n"}`` with a 95% percentile
bootstrap interval (scipy.stats.bootstrap).
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def bootstrap_ci(values, statistic=np.mean, n_resamples: int = 2000, seed: int = 0) -> dict:
    """``{"value", "lo", "hi", "n"}`` for ``statistic`` of a 1-D sample (95% percentile bootstrap)."""
    x = np.asarray(values, dtype=float)
    value = float(statistic(x))
    if len(x) < 2 or np.all(x == x[0]):
        return {"value": value, "lo": value, "hi": value, "n": int(len(x))}
    res = stats.bootstrap((x,), statistic, n_resamples=n_resamples, confidence_level=0.95,
                          method="percentile", random_state=np.random.default_rng(seed), vectorized=False)
    return {"value": value, "lo": float(res.confidence_interval.low), "hi": float(res.confidence_interval.high),
            "n": int(len(x))}


def accuracy(correct) -> dict:
    """Mean of a 0/1 sample with a bootstrap CI."""
    return bootstrap_ci(np.asarray(correct, dtype=float))


def roc_auc(scores, labels) -> dict:
    """AUC of ``scores`` for binary ``labels`` with a bootstrap CI over examples."""
    from sklearn.metrics import roc_auc_score

    s, y = np.asarray(scores, float), np.asarray(labels, int)
    value = float(roc_auc_score(y, s))
    rng = np.random.default_rng(0)
    boots = []
    for _ in range(1000):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            boots.append(roc_auc_score(y[i], s[i]))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"value": value, "lo": float(lo), "hi": float(hi), "n": int(len(y))}


def permutation_pvalue(x, y, statistic, n_permutations: int = 1000, seed: int = 0) -> float:
    """Two-sided permutation p-value of ``statistic(x, y)`` under shuffling ``y``."""
    res = stats.permutation_test((np.asarray(x), np.asarray(y)), statistic, permutation_type="pairings",
                                 n_resamples=n_permutations, alternative="two-sided",
                                 random_state=np.random.default_rng(seed), vectorized=False)
    return float(res.pvalue)


def benjamini_hochberg(pvalues) -> np.ndarray:
    """BH-adjusted p-values (scipy.stats.false_discovery_control)."""
    return stats.false_discovery_control(np.asarray(pvalues, float), method="bh")
