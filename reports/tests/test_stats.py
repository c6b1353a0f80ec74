"""The lift's statistics against published and hand-computed values (docs/reports.md)."""

import math

import pytest

from reports.stats import (
    Z_95,
    chi_square_p_1df,
    newcombe_interval,
    people_needed,
    sample_ratio_check,
    wilson_interval,
)


def test_wilson_interval_of_the_worked_example():
    low, high = wilson_interval(56, 70)
    assert (round(low, 4), round(high, 4)) == (0.6918, 0.8770)
    low, high = wilson_interval(48, 80)
    assert (round(low, 4), round(high, 4)) == (0.4905, 0.7004)


def test_wilson_interval_stays_inside_zero_and_one():
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0, abs=1e-12) and 0 < high < 0.31
    low, high = wilson_interval(10, 10)
    assert 0.69 < low < 1 and high == pytest.approx(1)


@pytest.mark.parametrize(
    "x1, n1, x2, n2, low, high",
    [
        # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10.
        (56, 70, 48, 80, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.1705, 0.8090),
    ],
)
def test_newcombe_hybrid_score_interval_matches_the_published_digits(x1, n1, x2, n2, low, high):
    difference = newcombe_interval(x1, n1, x2, n2)
    assert (round(difference.low, 4), round(difference.high, 4)) == (low, high)
    assert not difference.spans_zero


def test_an_interval_that_spans_zero_says_so():
    difference = newcombe_interval(3, 10, 2, 10)
    assert difference.low < 0 < difference.high and difference.spans_zero


def test_chi_square_with_one_degree_of_freedom():
    # 3.841 is the 5 % critical value, 10.828 the 0.1 % one.
    assert chi_square_p_1df(3.841459) == pytest.approx(0.05, abs=1e-6)
    assert chi_square_p_1df(10.827566) == pytest.approx(0.001, abs=1e-7)
    assert chi_square_p_1df(0) == 1


def test_sample_ratio_check_of_an_honest_and_a_rigged_split():
    honest = sample_ratio_check(control=80, treatment=70, share=0.5)
    assert honest.statistic == pytest.approx(2 / 3)
    assert round(honest.p_value, 4) == 0.4142 and not honest.mismatch
    rigged = sample_ratio_check(control=40, treatment=60, share=0.2)
    assert rigged.statistic == pytest.approx(25.0)
    assert rigged.p_value < 0.001 and rigged.mismatch
    assert sample_ratio_check(control=0, treatment=0, share=0.2) is None


def test_people_needed_for_two_points_is_the_hand_computed_number():
    # (1.959964 + 0.841621)^2 * (0.6*0.4/0.5 + 0.62*0.38/0.5) / 0.02^2 = 18,664.6 -> 18,665
    assert round(Z_95, 6) == 1.959964
    assert people_needed(baseline=0.6, lift=0.02, share=0.5) == 18665
    # A smaller control group needs more people for the same lift.
    assert people_needed(baseline=0.6, lift=0.02, share=0.1) > 18665
    with pytest.raises(ValueError):
        people_needed(baseline=0.6, lift=0.02, share=0)
    assert math.isfinite(people_needed(baseline=0.0, lift=0.02, share=0.2))
