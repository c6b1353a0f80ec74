"""The statistics of the lift: plain functions of counts, no framework, no SciPy.

- Wilson's score interval for one proportion.
- Newcombe's hybrid score interval for a difference of two independent proportions
  (Newcombe 1998, "Interval estimation for the difference between independent
  proportions", method 10): built from the two Wilson intervals, it stays inside [-1, 1],
  behaves at 0 % and at small counts, where the textbook Wald interval does not.
- A chi-square goodness-of-fit test of the observed split against the configured share
  (sample-ratio mismatch); with one degree of freedom p = erfc(sqrt(x / 2)).
- The sample size at which a given absolute lift becomes detectable: the normal
  approximation for two proportions with unequal groups, two-sided alpha 5 %, power 80 %.

docs/reports.md works an example through by hand; reports/tests/test_stats.py checks it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

ALPHA = 0.05
POWER = 0.80
Z_95 = NormalDist().inv_cdf(1 - ALPHA / 2)  # 1.959964...
Z_POWER = NormalDist().inv_cdf(POWER)  # 0.841621...
SRM_P_THRESHOLD = 0.001


def wilson_interval(successes: int, n: int, *, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval for successes / n (n > 0)."""
    if n <= 0:
        raise ValueError("a proportion needs n > 0")
    if not 0 <= successes <= n:
        raise ValueError("successes must be between 0 and n")
    p = successes / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    denominator = 1 + z2 / n
    return (centre - spread) / denominator, (centre + spread) / denominator


@dataclass(frozen=True)
class Difference:
    """p1 - p2 with its interval, as fractions (x 100 for percentage points)."""

    p1: float
    p2: float
    difference: float
    low: float
    high: float

    @property
    def spans_zero(self) -> bool:
        return self.low <= 0 <= self.high


def newcombe_interval(
    x1: int, n1: int, x2: int, n2: int, *, z: float = Z_95
) -> Difference:
    """Newcombe's hybrid score interval (method 10) for x1/n1 - x2/n2."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, z=z)
    l2, u2 = wilson_interval(x2, n2, z=z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return Difference(p1=p1, p2=p2, difference=d, low=low, high=high)


def chi_square_p_1df(statistic: float) -> float:
    """Upper tail of the chi-square distribution with one degree of freedom."""
    return math.erfc(math.sqrt(max(statistic, 0.0) / 2))


@dataclass(frozen=True)
class SampleRatio:
    control: int
    treatment: int
    expected_control: float
    statistic: float
    p_value: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < SRM_P_THRESHOLD


def sample_ratio_check(*, control: int, treatment: int, share: float) -> SampleRatio | None:
    """Chi-square goodness of fit of the split against the configured control share
    (a fraction in (0, 1)); None when there is nobody or no share to test against."""
    total = control + treatment
    if total == 0 or not 0 < share < 1:
        return None
    expected_control = total * share
    expected_treatment = total * (1 - share)
    statistic = ((control - expected_control) ** 2 / expected_control
                 + (treatment - expected_treatment) ** 2 / expected_treatment)
    return SampleRatio(
        control=control, treatment=treatment, expected_control=expected_control,
        statistic=statistic, p_value=chi_square_p_1df(statistic),
    )


def people_needed(
    *, baseline: float, lift: float, share: float, z_alpha: float = Z_95,
    z_power: float = Z_POWER,
) -> int:
    """People in total (both groups) for an absolute `lift` over the control rate
    `baseline` to be detected with two-sided alpha 5 % and power 80 %, when a fraction
    `share` of them is in control: the standard error of the difference,
    sqrt(p_c (1 - p_c) / n_c + p_t (1 - p_t) / n_t), must be at most
    lift / (z_alpha + z_power). With n_c = share N and n_t = (1 - share) N:
    N = (z_alpha + z_power)^2 (p_c (1 - p_c) / share + p_t (1 - p_t) / (1 - share)) / lift^2.
    """
    if not 0 < share < 1 or lift <= 0:
        raise ValueError("share must be in (0, 1) and lift positive")
    p_c = min(max(baseline, 0.0), 1.0)
    p_t = min(p_c + lift, 1.0)
    variance = p_c * (1 - p_c) / share + p_t * (1 - p_t) / (1 - share)
    return math.ceil((z_alpha + z_power) ** 2 * variance / (lift * lift))
