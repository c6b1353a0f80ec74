"""Treatment against control, from entries in the database (both databases).

The worked example of docs/reports.md: in control period 1 of the language funnel (50 %
held out), 70 treated people of whom 56 bought within the window, and 80 held out of whom
48 bought.
"""

import datetime as dt
import zoneinfo

import pytest

from funnels.models import ControlPeriod, ExperimentGroup, Funnel, FunnelEntry, SyncStatus
from reports.lift import (
    NOT_ENOUGH_NO_CONTROL,
    NOT_ENOUGH_SPANS_ZERO,
    NOT_ENOUGH_WINDOW_OPEN,
)
from reports.selectors import conversion_report
from reports.tests.helpers import utc

D = dt.date
ZONE = zoneinfo.ZoneInfo("Europe/Moscow")
ENTERED = utc(2026, 11, 10, 9)
LONG_AFTER = utc(2027, 3, 1)


@pytest.fixture
def period(funnels):
    funnel = Funnel.objects.get(slug="language")
    funnel.control_share, funnel.control_period = 50, 1
    funnel.save()
    return ControlPeriod.objects.create(
        funnel=funnel, number=1, share=50, started_at=utc(2026, 10, 1)
    )


def people(prefix, n, *, group, bought=0, bought_after=dt.timedelta(days=2),
           started_after=dt.timedelta(minutes=20), entered=ENTERED, share_period=1):
    """n people, the first `bought` of them buying `bought_after` their test."""
    FunnelEntry.objects.bulk_create([
        FunnelEntry(
            email=f"{prefix}{i}@example.com", funnel_type="language", user_id=i,
            test_id=100, entered_at=entered + dt.timedelta(seconds=i),
            test_completed_at=entered, experiment_group=group, control_period=share_period,
            sync_status=(SyncStatus.CONTROL if group == ExperimentGroup.CONTROL
                         else SyncStatus.SYNCED),
            funnel_started_at=(None if started_after is None
                               else entered + dt.timedelta(seconds=i) + started_after),
            certificate_purchased=i < bought,
            certificate_purchased_at=(entered + dt.timedelta(seconds=i) + bought_after
                                      if i < bought else None),
        )
        for i in range(n)
    ])


def lift_of(*, as_of=LONG_AFTER, origin="completion", window=30):
    report = conversion_report(date_from=D(2026, 11, 1), date_to=D(2026, 11, 30),
                               window_days=window, tz=ZONE, as_of=as_of, origin=origin)
    return report, report.lift


@pytest.mark.django_db
def test_the_worked_example_to_the_published_digits(period):
    people("t", 70, group=ExperimentGroup.TREATMENT, bought=56)
    people("c", 80, group=ExperimentGroup.CONTROL, bought=48)
    _report, lift = lift_of()
    [row] = lift.rows
    assert (row.funnel, row.period, row.share) == ("language", 1, 50)
    assert (row.treatment.entered, row.treatment.converted) == (70, 56)
    assert (row.control.entered, row.control.converted) == (80, 48)
    assert round(row.lift_points, 1) == 20.0
    assert (round(row.difference.low, 4), round(row.difference.high, 4)) == (0.0524, 0.3339)
    assert round(row.relative_lift, 4) == 0.3333
    assert round(row.incremental_purchases, 1) == 14.0
    assert not row.srm_warning and round(row.sample_ratio.p_value, 4) == 0.4142
    assert row.not_enough == ()
    assert row.people_needed == 18665
    # 150 people in 30 days (Nov 1 - 30): 5 a day; 18,515 more people -> 3,703 days.
    assert row.days_more == 3703
    # Everyone bought on day 2: the curve is flat at 0 until then, then at the rate.
    assert [p.treatment_converted for p in row.curve[:4]] == [0, 0, 56, 56]
    assert row.curve[-1].control_rate == pytest.approx(0.6)


@pytest.mark.django_db
def test_not_enough_data_while_the_window_is_open_and_while_the_interval_spans_zero(period):
    people("t", 10, group=ExperimentGroup.TREATMENT, bought=3)
    people("c", 10, group=ExperimentGroup.CONTROL, bought=2)
    _report, lift = lift_of(as_of=utc(2026, 11, 20))
    [row] = lift.rows
    assert NOT_ENOUGH_WINDOW_OPEN in row.not_enough
    assert NOT_ENOUGH_SPANS_ZERO in row.not_enough
    assert row.days_more > 0
    _report, lift = lift_of()
    assert lift.rows[0].not_enough == (NOT_ENOUGH_SPANS_ZERO,)


@pytest.mark.django_db
def test_no_control_people_is_not_enough_data(period):
    people("t", 10, group=ExperimentGroup.TREATMENT, bought=3)
    _report, lift = lift_of()
    [row] = lift.rows
    assert row.difference is None and NOT_ENOUGH_NO_CONTROL in row.not_enough


@pytest.mark.django_db
def test_a_rigged_split_warns(period):
    ControlPeriod.objects.filter(pk=period.pk).update(share=20)
    people("t", 60, group=ExperimentGroup.TREATMENT, bought=10)
    people("c", 40, group=ExperimentGroup.CONTROL, bought=5)
    [row] = lift_of()[1].rows
    assert row.sample_ratio.statistic == pytest.approx(25.0)
    assert row.srm_warning


@pytest.mark.django_db
def test_periods_are_never_mixed_and_share_zero_has_no_comparison(period):
    funnel = Funnel.objects.get(slug="language")
    ControlPeriod.objects.create(funnel=funnel, number=2, share=0, started_at=utc(2026, 11, 5))
    people("t", 10, group=ExperimentGroup.TREATMENT, bought=3)
    people("c", 10, group=ExperimentGroup.CONTROL, bought=2)
    people("z", 10, group=ExperimentGroup.TREATMENT, bought=9, share_period=2)
    rows = lift_of()[1].rows
    assert [(r.period, r.treatment.entered) for r in rows] == [(1, 10)]


@pytest.mark.django_db
def test_counting_from_the_funnel_s_start_and_bought_before_it(period):
    # 10 treated bought 10 minutes after the test, before Brevo confirmed them (20 min);
    # 5 more bought two days later; 5 never started (Brevo never confirmed).
    people("early", 10, group=ExperimentGroup.TREATMENT, bought=10,
           bought_after=dt.timedelta(minutes=10))
    people("late", 5, group=ExperimentGroup.TREATMENT, bought=5)
    people("never", 5, group=ExperimentGroup.TREATMENT, bought=5, started_after=None)
    people("c", 20, group=ExperimentGroup.CONTROL, bought=4)
    report, lift = lift_of()
    [row] = lift.rows
    assert row.treatment.converted == 20  # from the test's completion: every purchase
    assert row.treatment.bought_before_start == 10 and row.treatment.not_started == 5
    assert lift.bought_before_start == {"language": 10, "non_language": 0}
    assert report.totals.converted == 24
    report, lift = lift_of(origin="start")
    [row] = lift.rows
    assert (row.treatment.entered, row.treatment.converted) == (20, 5)
    assert report.totals.entered == 40 and report.totals.converted == 9
    assert lift.bought_before_start == {"language": 10, "non_language": 0}


@pytest.mark.django_db
def test_a_report_with_a_control_group_is_five_queries(period, django_assert_num_queries):
    people("t", 10, group=ExperimentGroup.TREATMENT, bought=3)
    people("c", 10, group=ExperimentGroup.CONTROL, bought=2)
    # Funnels, the rollup's state (reports/rollup.py), period, previous period, the
    # control periods, the lift's counts.
    with django_assert_num_queries(6):
        lift_of()
    people("more", 50, group=ExperimentGroup.CONTROL, bought=5)
    with django_assert_num_queries(6):
        lift_of()
