"""Statistics: intervals, exact paired tests, permutation p-values, multiple-testing correction.

Every headline number is reported as ``{"value", "lo", "hi", "n"}`` with a 95% interval:

* a proportion (accuracy, flip rate, choice rate) -- Wilson score interval (``proportion``);
  it never collapses to a point at 0/n or n/n;
* a paired difference of two proportions measured on the same requests (ablation, knockout,
  steering) -- Newcombe's hybrid score interval built from the two Wilson intervals (method 10
  of Newcombe 1998) with the exact McNemar p-value (``paired_difference``);
* anything else (correlations, margins, shares of variance) -- a percentile bootstrap over
  requests (``bootstrap_ci``).

Families of tests are corrected: ``holm`` across layers, ``benjamini_hochberg`` across heads
or neurons. A metric that could not be measured (no pair to flip) is ``{"value": None, ..., "n": 0}``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

Z95 = float(stats.norm.ppf(0.975))


def empty() -> dict:
    """A metric with nothing to measure (``n == 0``)."""
    return {"value": None, "lo": None, "hi": None, "n": 0}


def bootstrap_ci(values, statistic=np.mean, n_resamples: int = 2000, seed: int = 0) -> dict:
    """``{"value", "lo", "hi", "n"}`` for ``statistic`` of a 1-D sample (95% percentile bootstrap).

    Only for statistics that are not proportions: a constant sample gives a zero-width interval.
    """
    x = np.asarray(values, dtype=float)
    value = float(statistic(x))
    if len(x) < 2 or np.all(x == x[0]):
        return {"value": value, "lo": value, "hi": value, "n": int(len(x))}
    res = stats.bootstrap((x,), statistic, n_resamples=n_resamples, confidence_level=0.95,
                          method="percentile", random_state=np.random.default_rng(seed), vectorized=False)
    return {"value": value, "lo": float(res.confidence_interval.low), "hi": float(res.confidence_interval.high),
            "n": int(len(x))}


def bootstrap_mean_difference(a, b, n_resamples: int = 2000, seed: int = 0) -> dict:
    """``mean(a) - mean(b)`` of two independent samples with a 95% percentile bootstrap interval (each
    sample resampled on its own); ``n`` is ``len(a) + len(b)``."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    value = float(a.mean() - b.mean())
    if min(len(a), len(b)) < 2 or (np.all(a == a[0]) and np.all(b == b[0])):
        return {"value": value, "lo": value, "hi": value, "n": int(len(a) + len(b))}
    res = stats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis), n_resamples=n_resamples,
                          confidence_level=0.95, method="percentile", random_state=np.random.default_rng(seed))
    return {"value": value, "lo": float(res.confidence_interval.low), "hi": float(res.confidence_interval.high),
            "n": int(len(a) + len(b))}


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of ``k`` successes in ``n`` trials."""
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(int(k), int(n), alpha=0.05, method="wilson")
    p = k / n
    return max(0.0, min(float(lo), p)), min(1.0, max(float(hi), p))  # contains k/n despite rounding at 0 and 1


def proportion(successes) -> dict:
    """Share of True in a 0/1 sample, with its Wilson interval."""
    x = np.asarray(successes, dtype=bool).reshape(-1)
    if len(x) == 0:
        return empty()
    lo, hi = wilson(x.sum(), len(x))
    return {"value": float(x.mean()), "lo": lo, "hi": hi, "n": int(len(x))}


accuracy = proportion  # an accuracy is the proportion of correct readings


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` (1 -> 0) and ``c`` (0 -> 1)."""
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(int(b), int(b + c), 0.5).pvalue)


def paired_difference(before, after) -> dict:
    """``mean(before) - mean(after)`` of paired 0/1 outcomes (a drop when positive), its 95% Newcombe
    hybrid score interval, and the exact McNemar p-value.

    Returns ``{"value", "lo", "hi", "n", "p", "b", "c"}``: ``b`` pairs go 1 -> 0, ``c`` go 0 -> 1.
    The interval has positive width even when no pair changes (it is built from Wilson intervals).
    """
    x, y = np.asarray(before, bool).reshape(-1), np.asarray(after, bool).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"paired samples differ in length: {len(x)} vs {len(y)}")
    n = len(x)
    if n == 0:
        return {**empty(), "p": None, "b": 0, "c": 0}
    a, b, c, d = (int(np.sum(x & y)), int(np.sum(x & ~y)), int(np.sum(~x & y)), int(np.sum(~x & ~y)))
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n)
    l2, u2 = wilson(a + c, n)
    den = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / np.sqrt(den) if den > 0 else 0.0
    diff = p1 - p2
    dl = np.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    du = np.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return {"value": float(diff), "lo": float(max(diff - dl, -1.0)), "hi": float(min(diff + du, 1.0)), "n": n,
            "p": mcnemar_exact(b, c), "b": b, "c": c}


def independent_difference(first, second) -> dict:
    """``mean(first) - mean(second)`` of two independent 0/1 samples (a drop when positive), its 95%
    Newcombe (hybrid score) interval, and the one-sided Fisher exact p that ``first``'s rate is higher.

    Returns ``{"value", "lo", "hi", "n", "p"}`` (``n``: both samples together)."""
    from statsmodels.stats.proportion import confint_proportions_2indep

    x, y = np.asarray(first, bool).reshape(-1), np.asarray(second, bool).reshape(-1)
    if len(x) == 0 or len(y) == 0:
        return {**empty(), "p": None}
    k1, n1, k2, n2 = int(x.sum()), len(x), int(y.sum()), len(y)
    lo, hi = confint_proportions_2indep(k1, n1, k2, n2, method="newcomb", compare="diff")
    diff = k1 / n1 - k2 / n2
    return {"value": float(diff), "lo": float(min(lo, diff)), "hi": float(max(hi, diff)), "n": n1 + n2,
            "p": fisher_greater(k1, n1, k2, n2)}


def fisher_greater(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided Fisher exact p-value that the rate ``k1/n1`` exceeds ``k2/n2`` (independent groups)."""
    if n1 == 0 or n2 == 0:
        return 1.0
    return float(stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="greater").pvalue)


def roc_auc(scores, labels, n_resamples: int = 1000, seed: int = 0) -> dict:
    """AUC of ``scores`` for binary ``labels`` with a bootstrap CI over examples."""
    from sklearn.metrics import roc_auc_score

    s, y = np.asarray(scores, float), np.asarray(labels, int)
    value = float(roc_auc_score(y, s))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_resamples):
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
    """BH-adjusted p-values across a screen (heads, neurons): scipy.stats.false_discovery_control."""
    p = np.asarray(pvalues, float)
    return stats.false_discovery_control(p, method="bh") if len(p) else p


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p-values across a family (layers): the k-th smallest p times (m - k + 1), made
    monotone and capped at 1 (equal to statsmodels' ``multipletests(method="holm")``, which costs
    ~50 ms a call; the null simulations call it thousands of times)."""
    p = np.asarray(pvalues, float)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]), 1.0)
    out = np.empty_like(p)
    out[order] = adjusted
    return out
