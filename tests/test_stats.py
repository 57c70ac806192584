"""Intervals and tests of toolattn.stats against reference values and by simulation."""

import numpy as np
import pytest

from toolattn.stats import (accuracy, benjamini_hochberg, bootstrap_ci, fisher_greater, holm, mcnemar_exact,
                            paired_difference, permutation_pvalue, proportion, wilson)


@pytest.mark.parametrize("k,n,lo,hi", [
    # Wilson (1927) score interval, z = 1.959964; values from the closed form by hand
    (4, 4, 0.510109, 1.0), (0, 10, 0.0, 0.277533), (7, 10, 0.396778, 0.892209), (38, 40, 0.834961, 0.986179)])
def test_wilson_matches_reference_values(k, n, lo, hi):
    assert wilson(k, n) == pytest.approx((lo, hi), abs=1e-6)


def test_proportion_never_collapses_at_the_edges():
    assert wilson(40, 40)[1] == 1.0 and wilson(0, 40)[0] == 0.0  # the interval contains k/n exactly
    for x in (np.ones(4), np.zeros(4)):
        m = proportion(x)
        assert m["hi"] - m["lo"] > 0.4 and m["lo"] <= m["value"] <= m["hi"] and m["n"] == 4
    assert accuracy([]) == {"value": None, "lo": None, "hi": None, "n": 0}


def test_paired_difference_counts_and_exact_mcnemar():
    before = np.array([1] * 10 + [1] * 3 + [0] * 7, bool)  # 3 pairs go 1 -> 0, none 0 -> 1
    after = np.array([1] * 10 + [0] * 3 + [0] * 7, bool)
    d = paired_difference(before, after)
    assert (d["b"], d["c"], d["n"]) == (3, 0, 20)
    assert d["value"] == pytest.approx(0.15)
    assert d["p"] == pytest.approx(0.25)  # two-sided binomial: 2 * 0.5**3
    assert d["lo"] < 0 < d["value"] < d["hi"]  # 3 discordant pairs are not significant at n = 20
    assert mcnemar_exact(0, 0) == 1.0


def test_paired_difference_has_width_when_nothing_changes():
    x = np.r_[np.ones(38), np.zeros(2)].astype(bool)
    d = paired_difference(x, x)
    assert d["value"] == 0 and d["lo"] < 0 < d["hi"] and d["hi"] - d["lo"] > 0.05 and d["p"] == 1.0


def test_paired_difference_coverage_by_simulation():
    """The 95% interval covers the true paired difference in about 95% of samples (n = 40)."""
    rng = np.random.default_rng(0)
    p_both, p_b, p_c = 0.6, 0.15, 0.05  # P(1,1), P(1,0), P(0,1): true difference 0.10
    covered, sims = 0, 1500
    for _ in range(sims):
        u = rng.random(40)
        before = u < p_both + p_b
        after = (u < p_both) | ((u >= p_both + p_b) & (u < p_both + p_b + p_c))
        d = paired_difference(before, after)
        covered += d["lo"] <= 0.10 <= d["hi"]
    assert 0.92 <= covered / sims <= 0.99


def test_fisher_greater():
    assert fisher_greater(18, 20, 1, 20) < 1e-6
    assert fisher_greater(1, 20, 18, 20) > 0.99
    assert fisher_greater(0, 0, 3, 10) == 1.0


def test_holm_and_bh_match_hand_computation():
    p = [0.01, 0.04, 0.03, 0.5]
    # Holm: sorted .01*4, .03*3, .04*2, .5*1 with a running maximum -> .04, .09, .09, .5
    assert np.allclose(holm(p), [0.04, 0.09, 0.09, 0.5])
    from statsmodels.stats.multitest import multipletests

    q = np.random.default_rng(0).random(30) ** 3
    assert np.allclose(holm(q), multipletests(q, method="holm")[1])
    # BH: .01*4/1=.04, .03*4/2=.06, .04*4/3=.0533, .5; then the running minimum from the top
    assert np.allclose(benjamini_hochberg(p), [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])


def test_bootstrap_ci_of_a_mean():
    x = np.random.default_rng(1).normal(0.3, 1.0, 200)
    ci = bootstrap_ci(x)
    assert ci["lo"] < ci["value"] < ci["hi"] and 0.2 < ci["hi"] - ci["lo"] < 0.35  # ~ 2 * 1.96 / sqrt(200)


def test_permutation_pvalue_detects_dependence_and_is_uniform_under_the_null():
    from scipy import stats

    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    corr = lambda a, b: np.corrcoef(a, b)[0, 1]  # noqa: E731
    assert permutation_pvalue(x, x + 0.1 * rng.normal(size=60), corr, n_permutations=300) < 0.01
    null = [permutation_pvalue(rng.normal(size=30), rng.normal(size=30), corr, n_permutations=199, seed=i)
            for i in range(150)]
    assert stats.kstest(null, "uniform").pvalue > 0.01


def test_independent_difference_matches_newcombe_1998():
    """Newcombe (1998, Stat Med 17:873) example: 56/70 vs 48/80, method 10 gives 0.2000 [0.0524, 0.3339];
    the one-sided Fisher p is small, and reversing the samples reverses the sign and the interval."""
    from toolattn.stats import independent_difference

    a, b = [1] * 56 + [0] * 14, [1] * 48 + [0] * 32
    d = independent_difference(a, b)
    assert abs(d["value"] - 0.2) < 1e-12 and abs(d["lo"] - 0.0524) < 1e-4 and abs(d["hi"] - 0.3339) < 1e-4
    assert d["n"] == 150 and d["p"] < 0.01
    r = independent_difference(b, a)
    assert abs(r["value"] + d["value"]) < 1e-12 and abs(r["lo"] + d["hi"]) < 1e-9 and r["p"] > 0.99
