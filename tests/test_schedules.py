import numpy as np
import pytest

from compdiff import schedules


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_tables_follow_their_definitions(name):
    s = schedules.get(name, 50)
    beta = np.asarray(s.beta, np.float64)
    assert s.num_levels == 50 and beta.shape == (51,)
    abar = np.cumprod(1 - beta)
    np.testing.assert_allclose(s.abar, abar, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(s.sigma, np.sqrt(1 - abar), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(s.btilde[1:], beta[1:] * (1 - abar[:-1]) / (1 - abar[1:]),
                               rtol=1e-5)
    assert s.btilde[1] == 0 and s.sigma[0] == 0
    assert float(s.abar[-1]) < 1e-3  # the prior N(0, I) is reached


def test_linear_total_noise_does_not_depend_on_levels():
    assert abs(float(schedules.get("linear", 100).abar[-1])
               - float(schedules.get("linear", 1000).abar[-1])) < 1e-4


def test_unknown_schedule_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'.*cosine.*linear"):
        schedules.get("quadratic", 10)
    with pytest.raises(ValueError, match="positive integer"):
        schedules.get("linear", 0)
