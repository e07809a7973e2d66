"""Paired claim statistics against values computed by hand (and by statsmodels' exact test)."""

import numpy as np
import pytest

from compdiff.experiments import paired


def _pairs(n10: int, n01: int, n11: int = 0, n00: int = 0) -> tuple[list[int], list[int]]:
    a = [1] * n10 + [0] * n01 + [1] * n11 + [0] * n00
    b = [0] * n10 + [1] * n01 + [1] * n11 + [0] * n00
    return a, b


@pytest.mark.parametrize("n10, n01, p", [
    (0, 5, 2 / 32),                 # 2 * P(Bin(5, 1/2) = 0)
    (2, 8, 2 * (1 + 10 + 45) / 1024),  # 0.109375 (statsmodels mcnemar exact)
    (3, 3, 1.0),
    (0, 0, 1.0),                    # no discordant pair: no evidence
    (10, 1, 2 * (1 + 11) / 2048),   # 0.01171875
])
def test_mcnemar_exact_known_values(n10, n01, p):
    a, b = _pairs(n10, n01, n11=7, n00=4)  # concordant pairs change nothing
    assert paired.mcnemar(a, b) == pytest.approx(p)
    assert paired.mcnemar(b, a) == pytest.approx(p)


def test_bootstrap_interval_matches_the_normal_interval_of_a_mean():
    rng = np.random.default_rng(1)
    a = rng.normal(0.3, 1.0, 4000)
    b = a - rng.normal(0.1, 0.5, 4000)  # shared variance cancels: d ~ N(0.1, 0.5^2)
    d = a - b
    estimate, (low, high), p = paired.paired_bootstrap(a, b)
    se = d.std() / np.sqrt(len(d))
    assert estimate == pytest.approx(d.mean())
    assert low == pytest.approx(d.mean() - 1.96 * se, abs=0.3 * se)
    assert high == pytest.approx(d.mean() + 1.96 * se, abs=0.3 * se)
    assert p == pytest.approx(1 / 2001 * 2)  # no resample reaches 0: the smallest p
    const = paired.paired_bootstrap([2.0, 3.0], [1.0, 2.0])
    assert const[0] == 1.0 and const[1] == (1.0, 1.0)


def test_compare_records_claims_and_verdicts():
    a, b = _pairs(12, 1, n11=20, n00=7)
    claim = paired.compare("hmc beats reverse", "hmc", a, "reverse", b, binary=True)
    assert claim["verdict"] == "holds" and claim["test"] == "exact McNemar"
    assert claim["p_value"] == pytest.approx(paired.mcnemar(a, b))
    assert claim["estimate"] == pytest.approx(11 / 40) and claim["num_pairs"] == 40
    assert claim["interval"][0] <= claim["estimate"] <= claim["interval"][1]
    assert "holds" in claim["text"] and "McNemar p = " in claim["text"]
    assert paired.compare("x", "b", b, "a", a, binary=True)["verdict"] == "fails"
    assert paired.compare("x", "a", *_pairs(3, 3)[:1], "b", _pairs(3, 3)[1],
                          binary=True)["verdict"] == "unresolved"
    with pytest.raises(ValueError, match="equal, non-zero lengths"):
        paired.mcnemar([1, 0], [1])
    with pytest.raises(ValueError, match="finite"):
        paired.paired_bootstrap([1.0, np.inf], [0.0, 0.0])
