import numpy as np

from toolattn.stats import accuracy, benjamini_hochberg, bootstrap_ci, permutation_pvalue


def test_bootstrap_ci_brackets_the_mean():
    x = np.r_[np.ones(70), np.zeros(30)]
    ci = accuracy(x)
    assert ci["value"] == 0.7 and ci["lo"] < 0.7 < ci["hi"] and ci["n"] == 100
    assert 0.05 < ci["hi"] - ci["lo"] < 0.25  # about +-1.96 * sqrt(.21/100)
    const = bootstrap_ci(np.ones(5))
    assert const["lo"] == const["hi"] == 1.0


def test_permutation_pvalue_detects_dependence():
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    corr = lambda a, b: np.corrcoef(a, b)[0, 1]  # noqa: E731
    assert permutation_pvalue(x, x + 0.1 * rng.normal(size=60), corr, n_permutations=300) < 0.01
    assert permutation_pvalue(x, rng.normal(size=60), corr, n_permutations=300) > 0.01


def test_bh_matches_hand_computation():
    p = [0.01, 0.04, 0.03, 0.5]
    # sorted: .01*4/1=.04, .03*4/2=.06, .04*4/3=.0533, .5; then the running minimum from the top
    assert np.allclose(benjamini_hochberg(p), [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])
