"""The admin's model pages: funnel entries, sync runs, funnels, and who may see them."""

from __future__ import annotations

import datetime as dt
import re

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from funnels.models import Funnel, FunnelEntry, SyncRun, SyncRunItem, SyncStatus
from funnels.tests.factories import (
    FunnelEntryFactory,
    SyncRunFactory,
    SyncRunItemFactory,
    funnel_get,
)

# The index (and so the header links' pages) reads MODX: every test may touch both.
pytestmark = pytest.mark.django_db(databases=["default", "modx"])

ENTRIES_URL = reverse("admin:funnels_funnelentry_changelist")
RUNS_URL = reverse("admin:funnels_syncrun_changelist")
FUNNELS_URL = reverse("admin:funnels_funnel_changelist")


@pytest.fixture(autouse=True)
def english(settings):
    # Assertions read the English source strings; the Russian catalogue comes later.
    settings.LANGUAGE_CODE = "en"


@pytest.fixture
def pinned_time(now):
    with time_machine.travel(now, tick=False):
        yield now


def staff_user(django_user_model, *, username: str, perms: list[str] = ()):
    user = django_user_model.objects.create_user(username, password="pw-for-tests-1", is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def emails_on(response) -> set[str]:
    return emails_on_html(response.content.decode())


def emails_on_html(html: str) -> set[str]:
    return set(re.findall(r"[a-z0-9.+-]+@[a-z0-9.-]+", html))


def entries_bulk(count: int, *, start: dt.datetime, **fields) -> None:
    FunnelEntry.objects.bulk_create(
        [
            FunnelEntry(
                email=f"bulk{n}@example.com",
                funnel_type=fields.get("funnel_type", "language" if n % 2 else "non_language"),
                user_id=n,
                test_id=100 + n % 7,
                entered_at=start + dt.timedelta(minutes=n),
                sync_status=fields.get("sync_status", SyncStatus.SYNCED),
            )
            for n in range(count)
        ],
        batch_size=1000,
    )


# --- Funnel entries: the list ----------------------------------------------------------


def test_entries_list_shows_the_columns_in_site_time(admin_client):
    FunnelEntryFactory(
        email="anna@example.com",
        funnel_type="language",
        test_id=321,
        entered_at=dt.datetime(2026, 11, 27, 20, 45, tzinfo=dt.UTC),  # 23:45 in Moscow
        sync_status=SyncStatus.FAILED,
        sync_last_error="400 invalid_parameter",
        certificate_purchased=True,
        certificate_purchased_at=dt.datetime(2026, 11, 28, 6, 5, tzinfo=dt.UTC),
        payment_id=9876,
    )
    response = admin_client.get(ENTRIES_URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert "anna@example.com" in html
    assert "321" in html and "9876" in html
    assert "funnels-sync-failed" in html
    # Stored 20:45 UTC, shown in Europe/Moscow (UTC+3), in the active language's format.
    assert "Nov. 27, 2026, 11:45 p.m." in html
    assert "Nov. 28, 2026, 9:05 a.m." in html
    assert "8:45 p.m." not in html


def test_entries_filter_by_funnel_sync_state_and_purchase(admin_client):
    FunnelEntryFactory(email="lang-synced@example.com", funnel_type="language",
                       sync_status=SyncStatus.SYNCED)
    FunnelEntryFactory(email="other-failed@example.com", funnel_type="non_language",
                       sync_status=SyncStatus.FAILED)
    FunnelEntryFactory(email="lang-bought@example.com", funnel_type="language",
                       certificate_purchased=True,
                       certificate_purchased_at=dt.datetime(2026, 11, 20, tzinfo=dt.UTC))

    def shown(query: str) -> set[str]:
        return emails_on(admin_client.get(ENTRIES_URL + query)) & {
            "lang-synced@example.com", "other-failed@example.com", "lang-bought@example.com"
        }

    assert shown("?funnel=language") == {"lang-synced@example.com", "lang-bought@example.com"}
    assert shown("?funnel=non_language") == {"other-failed@example.com"}
    assert shown("?sync=failed") == {"other-failed@example.com"}
    assert shown("?sync=synced") == {"lang-synced@example.com"}
    assert shown("?sync=pending") == {"lang-bought@example.com"}
    assert shown("?purchased=yes") == {"lang-bought@example.com"}
    assert shown("?purchased=no") == {"lang-synced@example.com", "other-failed@example.com"}
    assert shown("?funnel=language&purchased=no") == {"lang-synced@example.com"}


def test_entries_date_hierarchy_filters_by_local_day(admin_client):
    # 22:30 UTC on the 9th is 01:30 on the 10th in Moscow: the local day decides.
    FunnelEntryFactory(email="late@example.com",
                       entered_at=dt.datetime(2026, 10, 9, 22, 30, tzinfo=dt.UTC))
    FunnelEntryFactory(email="early@example.com",
                       entered_at=dt.datetime(2026, 10, 9, 8, 0, tzinfo=dt.UTC))
    FunnelEntryFactory(email="november@example.com",
                       entered_at=dt.datetime(2026, 11, 3, 8, 0, tzinfo=dt.UTC))
    FunnelEntryFactory(email="lastyear@example.com",
                       entered_at=dt.datetime(2025, 12, 31, 8, 0, tzinfo=dt.UTC))

    top = admin_client.get(ENTRIES_URL)
    hierarchy = re.search(r'<nav class="toplinks" id="funnels-date-hierarchy">(.*?)</nav>',
                          top.content.decode(), re.S).group(1)
    assert "entered_at__year=2025" in hierarchy and "entered_at__year=2026" in hierarchy

    year = admin_client.get(ENTRIES_URL + "?entered_at__year=2026")
    assert emails_on(year) >= {"late@example.com", "early@example.com", "november@example.com"}
    assert "lastyear@example.com" not in emails_on(year)
    assert "entered_at__month=10" in year.content.decode()
    assert "entered_at__month=11" in year.content.decode()

    day10 = admin_client.get(ENTRIES_URL + "?entered_at__year=2026&entered_at__month=10"
                                           "&entered_at__day=10")
    assert "late@example.com" in emails_on(day10)
    assert "early@example.com" not in emails_on(day10)
    month = admin_client.get(ENTRIES_URL + "?entered_at__year=2026&entered_at__month=10")
    assert "entered_at__day=9" in month.content.decode()
    assert "entered_at__day=10" in month.content.decode()


@pytest.mark.parametrize(
    "typed",
    ["Anna.Smith@Example.COM", "  anna.smith@example.com  ", "ANNA.SM", "anna.smith@exa"],
)
def test_entries_search_ignores_case_and_spaces_and_matches_prefixes(admin_client, typed):
    FunnelEntryFactory(email="anna.smith@example.com")
    FunnelEntryFactory(email="boris@example.com")
    found = emails_on(admin_client.get(ENTRIES_URL, {"q": typed}))
    assert "anna.smith@example.com" in found
    assert "boris@example.com" not in found


def test_entries_search_finds_an_internationalised_domain_typed_in_cyrillic(admin_client):
    FunnelEntryFactory(email="ivan@xn--e1afmkfd.xn--p1ai")  # ivan@пример.рф, as stored
    FunnelEntryFactory(email="ivan@example.com")
    html = admin_client.get(ENTRIES_URL, {"q": " Ivan@ПРИМЕР.рф "}).content.decode()
    # Found, and shown as people write it: the domain in Unicode.
    assert "ivan@пример.рф" in html
    assert "ivan@example.com" not in emails_on_html(html)
    assert 'id="funnels-explanation"' not in html


def test_entries_search_is_a_prefix_match_not_a_substring_scan(admin_client):
    FunnelEntryFactory(email="maria@example.com")
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(ENTRIES_URL, {"q": "example.com"})
    assert "maria@example.com" not in emails_on(response)
    searches = [q["sql"] for q in captured.captured_queries if "LIKE" in q["sql"].upper()]
    assert searches, "the search did not reach the database"
    assert all("%example.com%" not in sql for sql in searches)
    assert any("example.com%" in sql for sql in searches)


def test_entries_crafted_sort_on_an_unindexed_column_falls_back_to_entry_time(admin_client):
    FunnelEntryFactory(email="zed@example.com", entered_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    FunnelEntryFactory(email="abe@example.com", entered_at=dt.datetime(2026, 2, 1, tzinfo=dt.UTC))
    with CaptureQueriesContext(connection) as captured:
        html = admin_client.get(ENTRIES_URL + "?o=1").content.decode()  # column 1 = email
    assert html.index("abe@example.com") < html.index("zed@example.com")  # newest first
    page_sql = [q["sql"] for q in captured.captured_queries if "LIMIT" in q["sql"]
                and "funnel_entries" in q["sql"] and "ORDER BY" in q["sql"]]
    assert page_sql and all('"email"' not in s.split("ORDER BY")[1] and "`email`" not in
                            s.split("ORDER BY")[1] for s in page_sql)

    ascending = admin_client.get(ENTRIES_URL + "?o=3").content.decode()  # entered_at asc
    assert ascending.index("zed@example.com") < ascending.index("abe@example.com")


def test_entries_pages_without_counting(admin_client):
    entries_bulk(250, start=dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    first = admin_client.get(ENTRIES_URL)
    html = first.content.decode()
    assert "bulk249@example.com" in html and "bulk150@example.com" in html
    assert "bulk149@example.com" not in html
    assert 'class="funnels-next"' in html and 'class="funnels-previous"' not in html
    assert "250" not in re.search(r'id="funnels-paginator">(.*?)</p>', html, re.S).group(1)

    third = admin_client.get(ENTRIES_URL + "?p=3").content.decode()
    assert "bulk0@example.com" in third and "bulk49@example.com" in third
    assert 'class="funnels-next"' not in third and 'class="funnels-previous"' in third

    beyond = admin_client.get(ENTRIES_URL + "?p=4")
    assert beyond.status_code == 302 and "e=1" in beyond["Location"]


@pytest.mark.parametrize("page", ["1000000000000000000", str(2**64), "99999999999999999999999"])
def test_entries_page_far_beyond_the_end_answers_like_djangos_paginator(admin_client, page):
    """A number that would overflow OFFSET is an empty page: the change list's redirect to
    `?e=1`, as for any page past the end, not a 500; and no query asks for that offset."""
    entries_bulk(3, start=dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(ENTRIES_URL + "?p=" + page)
    assert response.status_code == 302 and response["Location"].endswith("?e=1")
    assert not [q for q in captured.captured_queries if "OFFSET" in q["sql"].upper()]
    assert admin_client.get(response["Location"]).status_code == 200


LIST_QUERIES = [
    "",
    "?funnel=language",
    "?sync=failed",
    "?purchased=no",
    "?q=bulk12",
    "?q=BULK2999@example.com",
    "?entered_at__year=2026&entered_at__month=11",
    "?entered_at__year=2026&entered_at__month=11&entered_at__day=2",
    "?p=5",
    "?o=-3",
]


def test_entries_list_on_thousands_of_rows_never_counts_the_table(
    admin_client, django_assert_max_num_queries
):
    entries_bulk(3000, start=dt.datetime(2026, 10, 20, tzinfo=dt.UTC))
    FunnelEntry.objects.filter(email__startswith="bulk1").update(sync_status=SyncStatus.FAILED)
    for query in LIST_QUERIES:
        # session, user, mode, health (two), funnel filter choices, first and last entry
        # (date links), the page's rows with one look-ahead row, and the rows again when
        # everything fits on one page: nothing here grows with the table.
        with django_assert_max_num_queries(10) as captured:
            response = admin_client.get(ENTRIES_URL + query)
        assert response.status_code == 200, query
        sqls = [q["sql"] for q in captured.captured_queries]
        counts = [sql for sql in sqls if "COUNT(" in sql.upper()]
        assert counts == [], (query, counts)
        distinct = [sql for sql in sqls if "DISTINCT" in sql.upper()]
        assert distinct == [], (query, distinct)
        rows_read = [sql for sql in sqls if "funnel_entries" in sql and "LIMIT" in sql]
        assert any("LIMIT 101" in sql for sql in rows_read), (query, rows_read)


# --- Funnel entries: read only, and the retry action -------------------------------------


def test_entries_cannot_be_added_changed_or_deleted(admin_client):
    entry = FunnelEntryFactory(email="keep@example.com")
    change_url = reverse("admin:funnels_funnelentry_change", args=[entry.pk])
    assert admin_client.get(reverse("admin:funnels_funnelentry_add")).status_code == 403
    page = admin_client.get(change_url)
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    admin_client.post(change_url, {"email": "changed@example.com"})
    delete = admin_client.post(
        reverse("admin:funnels_funnelentry_delete", args=[entry.pk]), {"post": "yes"}
    )
    assert delete.status_code == 403
    entry.refresh_from_db()
    assert entry.email == "keep@example.com"


def test_entry_page_shows_the_sync_error_and_links_the_run(admin_client):
    run = SyncRunFactory()
    entry = FunnelEntryFactory(run=run, sync_status=SyncStatus.FAILED,
                               sync_last_error="400 invalid_parameter: bad attribute")
    html = admin_client.get(reverse("admin:funnels_funnelentry_change", args=[entry.pk])
                            ).content.decode()
    assert "400 invalid_parameter: bad attribute" in html
    assert reverse("admin:funnels_syncrun_change", args=[run.pk]) in html


def test_entry_page_names_its_funnel(admin_client):
    Funnel.objects.filter(slug="language").update(name="Английский и немецкий")
    entry = FunnelEntryFactory(funnel_type="language")
    html = admin_client.get(reverse("admin:funnels_funnelentry_change", args=[entry.pk])
                            ).content.decode()
    field = html[html.index("field-funnel_shown"):]
    field = field[:field.index("</div>", field.index("readonly"))]
    assert "Английский и немецкий" in field and "(language)" in field


def test_retry_action_requeues_only_failed_entries(admin_client, pinned_time):
    failed = FunnelEntryFactory(sync_status=SyncStatus.FAILED, sync_attempts=6, sync_revision=2)
    synced = FunnelEntryFactory(sync_status=SyncStatus.SYNCED)
    response = admin_client.post(
        ENTRIES_URL,
        {"action": "retry_brevo_sync", "_selected_action": [failed.pk, synced.pk]},
        follow=True,
    )
    assert "1 failed entry will be sent to Brevo again" in response.content.decode()
    failed.refresh_from_db()
    synced.refresh_from_db()
    assert (failed.sync_status, failed.sync_attempts, failed.sync_revision) == ("pending", 0, 3)
    assert failed.sync_next_attempt_at == pinned_time
    assert synced.sync_status == SyncStatus.SYNCED


def test_retry_action_across_all_pages_of_a_filter(admin_client):
    entries_bulk(130, start=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
                 sync_status=SyncStatus.FAILED)
    FunnelEntryFactory(sync_status=SyncStatus.SYNCED)
    admin_client.post(
        ENTRIES_URL + "?sync=failed",
        {"action": "retry_brevo_sync", "select_across": "1", "index": "0",
         "_selected_action": [FunnelEntry.objects.first().pk]},
    )
    assert FunnelEntry.objects.filter(sync_status=SyncStatus.FAILED).count() == 0
    assert FunnelEntry.objects.filter(sync_status=SyncStatus.PENDING).count() == 130


def test_retry_action_warns_when_nothing_had_failed(admin_client):
    synced = FunnelEntryFactory(sync_status=SyncStatus.SYNCED)
    response = admin_client.post(
        ENTRIES_URL, {"action": "retry_brevo_sync", "_selected_action": [synced.pk]}, follow=True
    )
    assert "None of the selected entries had failed." in response.content.decode()


def test_retry_action_needs_the_change_permission(django_user_model):
    viewer = staff_user(django_user_model, username="viewer",
                        perms=["funnels.view_funnelentry"])
    failed = FunnelEntryFactory(sync_status=SyncStatus.FAILED)
    client = logged_in(viewer)
    page = client.get(ENTRIES_URL)
    assert page.status_code == 200
    assert "retry_brevo_sync" not in page.content.decode()
    client.post(ENTRIES_URL, {"action": "retry_brevo_sync", "_selected_action": [failed.pk]})
    failed.refresh_from_db()
    assert failed.sync_status == SyncStatus.FAILED

    operator = staff_user(django_user_model, username="operator",
                          perms=["funnels.view_funnelentry", "funnels.change_funnelentry"])
    logged_in(operator).post(
        ENTRIES_URL, {"action": "retry_brevo_sync", "_selected_action": [failed.pk]}
    )
    failed.refresh_from_db()
    assert failed.sync_status == SyncStatus.PENDING


# --- Sync runs ----------------------------------------------------------------------------


def test_runs_list_shows_status_mode_duration_counts_and_error(admin_client):
    start = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
    SyncRunFactory(started_at=start, finished_at=start + dt.timedelta(seconds=125),
                   status=SyncRun.Status.FAILED, dry_run=False, entries_added=17,
                   contacts_failed=3, error="Brevo said 401 unauthorized")
    SyncRunFactory(started_at=start - dt.timedelta(hours=1), dry_run=True, results_read=4242)
    html = admin_client.get(RUNS_URL).content.decode()
    assert "Failed" in html and "Live" in html and "Dry run" in html
    assert "2 min 05 s" in html
    assert "4242" in html and "17" in html
    assert "Brevo said 401 unauthorized" in html


def test_runs_filters(admin_client):
    SyncRunFactory(status=SyncRun.Status.CRASHED, dry_run=False, results_read=1111)
    SyncRunFactory(status=SyncRun.Status.SUCCESS, dry_run=True, results_read=2222)
    crashed = admin_client.get(RUNS_URL + "?status=crashed").content.decode()
    assert "1111" in crashed and "2222" not in crashed
    dry = admin_client.get(RUNS_URL + "?mode=dry").content.decode()
    assert "2222" in dry and "1111" not in dry


def test_run_page_shows_each_candidate_outcome_with_email(admin_client):
    run = SyncRunFactory(dry_run=False, skipped_by_reason={"invalid_email": 1})
    entry = FunnelEntryFactory(email="added@example.com")
    SyncRunItemFactory(run=run, action=SyncRunItem.Action.ADDED, email="added@example.com",
                       entry=entry)
    SyncRunItemFactory(run=run, action=SyncRunItem.Action.SKIPPED, email="not-an-email",
                       reason="invalid_email")
    SyncRunItemFactory(run=run, action=SyncRunItem.Action.FAILED, email="refused@example.com",
                       detail="400 invalid_parameter")
    SyncRunItemFactory(run=run, action=SyncRunItem.Action.PURCHASE, email="buyer@example.com")
    html = admin_client.get(reverse("admin:funnels_syncrun_change", args=[run.pk])
                            ).content.decode()
    assert "Outcome per candidate" in html
    for text in ("added@example.com", "not-an-email", "not a valid email address",
                 "refused@example.com", "400 invalid_parameter", "buyer@example.com",
                 "Skipped", "Brevo failed", "Purchase"):
        assert text in html, text
    assert reverse("admin:funnels_funnelentry_change", args=[entry.pk]) in html
    assert 'name="_save"' not in html


def test_dry_run_page_shows_the_plan(admin_client):
    run = SyncRunFactory(dry_run=True)
    SyncRunItemFactory(run=run, action=SyncRunItem.Action.WOULD_ADD, email="maybe@example.com")
    html = admin_client.get(reverse("admin:funnels_syncrun_change", args=[run.pk])
                            ).content.decode()
    assert "Plan: what this dry run would have done" in html
    assert "Would add" in html and "maybe@example.com" in html


def test_run_items_are_paginated_and_filterable(admin_client, django_assert_max_num_queries):
    run = SyncRunFactory(dry_run=True)
    SyncRunItem.objects.bulk_create(
        [SyncRunItem(run=run, action=SyncRunItem.Action.WOULD_ADD, email=f"p{n}@example.com")
         for n in range(230)]
        + [SyncRunItem(run=run, action=SyncRunItem.Action.SKIPPED, email=f"s{n}@example.com",
                       reason="already_in_funnel") for n in range(5)]
    )
    url = reverse("admin:funnels_syncrun_change", args=[run.pk])
    with django_assert_max_num_queries(12):
        first = admin_client.get(url).content.decode()
    assert "p0@example.com" in first and "p99@example.com" in first
    assert "p100@example.com" not in first
    assert "page 1 of 3" in first and "page=2" in first
    last = admin_client.get(url + "?page=3").content.decode()
    assert "s4@example.com" in last and "p199@example.com" not in last
    skipped = admin_client.get(url + "?action=skipped").content.decode()
    assert "s0@example.com" in skipped and "p0@example.com" not in skipped
    assert "page 1 of 1" in skipped
    assert "Would add (230)" in first and "Skipped (5)" in first


def test_runs_are_read_only(admin_client):
    run = SyncRunFactory()
    assert admin_client.get(reverse("admin:funnels_syncrun_add")).status_code == 403
    assert admin_client.post(reverse("admin:funnels_syncrun_delete", args=[run.pk]),
                             {"post": "yes"}).status_code == 403
    assert SyncRun.objects.filter(pk=run.pk).exists()


def test_runs_list_query_count_does_not_grow(admin_client, django_assert_max_num_queries, now):
    for n in range(60):
        SyncRunFactory(started_at=now - dt.timedelta(minutes=15 * n))
    with django_assert_max_num_queries(9):
        assert admin_client.get(RUNS_URL).status_code == 200


# --- Funnels --------------------------------------------------------------------------------


def funnel_form(funnel: Funnel, **changes) -> dict:
    data = {
        "name": funnel.name,
        "active": "on" if funnel.active else "",
        "brevo_list_id": funnel.brevo_list_id or "",
        "test_kind": funnel.test_kind,
        "test_ids": ", ".join(str(t) for t in funnel.test_ids),
        "reentry": funnel.reentry,
        "certificate_type": funnel.certificate_type,
        "attribute_funnel_type": funnel.attribute_funnel_type,
        "attribute_purchased": funnel.attribute_purchased,
        "attribute_purchased_at": funnel.attribute_purchased_at,
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_funnel_is_editable_and_test_ids_are_parsed(admin_client):
    funnel = funnel_get("language")
    url = reverse("admin:funnels_funnel_change", args=[funnel.pk])
    response = admin_client.post(url, funnel_form(
        funnel, name="Language (EN)", brevo_list_id="12", test_ids=" 15, 3 12;3 ",
        reentry=Funnel.Reentry.PER_TEST, active="",
    ))
    assert response.status_code == 302, response.content.decode()[:2000]
    funnel.refresh_from_db()
    assert (funnel.name, funnel.brevo_list_id, funnel.test_ids) == ("Language (EN)", 12, [3, 12, 15])
    assert funnel.reentry == Funnel.Reentry.PER_TEST and funnel.active is False
    assert funnel.slug == "language"
    page = admin_client.get(url).content.decode()
    assert 'value="3, 12, 15"' in page


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"brevo_list_id": "0"}, "brevo_list_id"),
        ({"brevo_list_id": "-4"}, "brevo_list_id"),
        ({"brevo_list_id": "abc"}, "brevo_list_id"),
        ({"test_ids": "1, two"}, "test_ids"),
        ({"test_ids": "0"}, "test_ids"),
        ({"test_ids": "-3"}, "test_ids"),
        ({"test_ids": "1.5"}, "test_ids"),
        ({"test_ids": "99999999999"}, "test_ids"),
        ({"certificate_type": "3"}, "certificate_type"),
    ],
)
def test_funnel_validation(admin_client, changes, field):
    funnel = funnel_get("non_language")
    before = (funnel.brevo_list_id, funnel.test_ids, funnel.certificate_type)
    response = admin_client.post(
        reverse("admin:funnels_funnel_change", args=[funnel.pk]), funnel_form(funnel, **changes)
    )
    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    funnel.refresh_from_db()
    assert (funnel.brevo_list_id, funnel.test_ids, funnel.certificate_type) == before


def test_a_funnel_gets_attribute_names_of_its_own(admin_client):
    funnel = funnel_get("language")
    assert (funnel.attribute_funnel_type, funnel.attribute_purchased,
            funnel.attribute_purchased_at) == (
        "FUNNEL_TYPE", "CERTIFICATE_PURCHASED", "CERTIFICATE_PURCHASED_AT",
    )
    add_page = admin_client.get(reverse("admin:funnels_funnel_add")).content.decode()
    assert 'value="CERTIFICATE_PURCHASED_AT"' in add_page
    response = admin_client.post(
        reverse("admin:funnels_funnel_change", args=[funnel.pk]),
        funnel_form(funnel, attribute_purchased="LANGUAGE_CERTIFICATE_PURCHASED",
                    attribute_purchased_at="LANGUAGE_CERTIFICATE_PURCHASED_AT"),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    funnel.refresh_from_db()
    assert (funnel.attribute_funnel_type, funnel.attribute_purchased,
            funnel.attribute_purchased_at) == (
        "FUNNEL_TYPE", "LANGUAGE_CERTIFICATE_PURCHASED", "LANGUAGE_CERTIFICATE_PURCHASED_AT",
    )


@pytest.mark.parametrize(
    "changes, field, code",
    [
        ({"attribute_purchased": "certificate_purchased"}, "attribute_purchased",
         "attribute_name"),
        ({"attribute_purchased": "1ST_PURCHASE"}, "attribute_purchased", "attribute_name"),
        ({"attribute_purchased": "KÄUFER"}, "attribute_purchased", "attribute_name"),
        ({"attribute_purchased": "BOUGHT AT"}, "attribute_purchased", "attribute_name"),
        ({"attribute_purchased": "DOUBLE-OPT"}, "attribute_purchased", "attribute_name"),
        ({"attribute_purchased": ""}, "attribute_purchased", "required"),
        ({"attribute_purchased_at": "A" * 51}, "attribute_purchased_at", "max_length"),
        ({"attribute_funnel_type": "EMAIL"}, "attribute_funnel_type", "attribute_reserved"),
        ({"attribute_funnel_type": "SMS"}, "attribute_funnel_type", "attribute_reserved"),
        # One name, two kinds of value in one funnel.
        ({"attribute_purchased_at": "CERTIFICATE_PURCHASED"}, "__all__", "attribute_same"),
        # The other funnel writes its yes/no to CERTIFICATE_PURCHASED: not a date here.
        ({"attribute_purchased": "LANGUAGE_BOUGHT",
          "attribute_purchased_at": "CERTIFICATE_PURCHASED"}, "attribute_purchased_at",
         "attribute_role"),
    ],
)
def test_funnel_attribute_names_are_validated(admin_client, changes, field, code):
    funnel = funnel_get("language")
    response = admin_client.post(
        reverse("admin:funnels_funnel_change", args=[funnel.pk]), funnel_form(funnel, **changes)
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors.as_data()
    assert code in [error.code for error in errors.get(field, [])], errors
    funnel.refresh_from_db()
    assert funnel.attribute_purchased == "CERTIFICATE_PURCHASED"
    assert funnel.attribute_purchased_at == "CERTIFICATE_PURCHASED_AT"


def test_funnel_slug_cannot_be_renamed(admin_client):
    funnel = funnel_get("language")
    admin_client.post(reverse("admin:funnels_funnel_change", args=[funnel.pk]),
                      funnel_form(funnel, slug="renamed"))
    funnel.refresh_from_db()
    assert funnel.slug == "language"


def test_a_new_funnel_can_be_added_and_deleted_while_empty(admin_client):
    response = admin_client.post(reverse("admin:funnels_funnel_add"), {
        "name": "Spring promo", "slug": "spring", "active": "on", "brevo_list_id": "7",
        "test_kind": "any", "test_ids": "5 6", "reentry": "once", "certificate_type": "2",
        "attribute_funnel_type": "FUNNEL_TYPE", "attribute_purchased": "SPRING_PURCHASED",
        "attribute_purchased_at": "SPRING_PURCHASED_AT",
    })
    assert response.status_code == 302
    spring = Funnel.objects.get(slug="spring")
    assert spring.test_ids == [5, 6]
    assert (spring.attribute_purchased, spring.attribute_purchased_at) == (
        "SPRING_PURCHASED", "SPRING_PURCHASED_AT",
    )
    response = admin_client.post(reverse("admin:funnels_funnel_delete", args=[spring.pk]),
                                 {"post": "yes"})
    assert response.status_code == 302
    assert not Funnel.objects.filter(slug="spring").exists()


def test_default_funnels_cannot_be_deleted(admin_client):
    for slug in ("language", "non_language"):
        funnel = funnel_get(slug)
        assert admin_client.post(reverse("admin:funnels_funnel_delete", args=[funnel.pk]),
                                 {"post": "yes"}).status_code == 403
    admin_client.post(FUNNELS_URL, {
        "action": "delete_selected", "post": "yes",
        "_selected_action": list(Funnel.objects.values_list("pk", flat=True)),
    })
    assert set(Funnel.objects.values_list("slug", flat=True)) >= {"language", "non_language"}


def test_a_funnel_with_entries_cannot_be_deleted(admin_client):
    funnel = Funnel.objects.create(slug="autumn", name="Autumn", test_kind="any",
                                   certificate_type=1)
    FunnelEntryFactory(funnel_type="autumn")
    assert admin_client.post(reverse("admin:funnels_funnel_delete", args=[funnel.pk]),
                             {"post": "yes"}).status_code == 403
    assert Funnel.objects.filter(slug="autumn").exists()


# --- Who may see what ---------------------------------------------------------------------


def admin_urls() -> list[str]:
    run = SyncRunFactory()
    entry = FunnelEntryFactory()
    return [
        reverse("admin:index"),
        reverse("admin:app_list", args=["funnels"]),
        reverse("admin:app_list", args=["auth"]),
        ENTRIES_URL,
        reverse("admin:funnels_funnelentry_change", args=[entry.pk]),
        RUNS_URL,
        reverse("admin:funnels_syncrun_change", args=[run.pk]),
        FUNNELS_URL,
        reverse("admin:funnels_funnel_change", args=[funnel_get("language").pk]),
        reverse("admin:funnels_funnel_add"),
        reverse("admin:funnels_syncstate_changelist"),
        reverse("admin:auth_user_changelist"),
        reverse("admin:password_change"),
    ]


def test_anonymous_users_get_the_login_page_everywhere(client):
    urls = admin_urls() + [reverse("admin:funnels_dry_run")]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("admin:login")), url
    login = client.get(reverse("admin:login")).content.decode()
    assert 'id="funnels-mode"' not in login  # strangers learn nothing about the job


def test_non_staff_users_are_refused(django_user_model):
    user = django_user_model.objects.create_user("customer", password="pw-for-tests-1")
    client = logged_in(user)
    for url in admin_urls():
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("admin:login")), url


def test_changes_need_a_csrf_token(admin_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    funnel = funnel_get("language")
    response = client.post(reverse("admin:funnels_funnel_change", args=[funnel.pk]),
                           funnel_form(funnel, name="Hijacked"))
    assert response.status_code == 403
    funnel.refresh_from_db()
    assert funnel.name != "Hijacked"


def test_every_page_shows_the_mode_and_never_the_api_key(admin_client, settings):
    marker = "xkeysib-MARKER-0123456789abcdef-must-never-render"
    settings.BREVO_API_KEY = marker
    SyncRunFactory(status=SyncRun.Status.FAILED, error="something broke")
    for url in admin_urls():
        response = admin_client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        assert marker not in html, url
        assert 'id="funnels-mode"' in html, url
    assert marker not in admin_client.get(reverse("admin:login")).content.decode()


def test_a_secret_that_slipped_into_a_run_record_is_not_shown(admin_client, settings):
    marker = "xkeysib-LEAKED-0123456789abcdef"
    settings.BREVO_API_KEY = marker
    run = SyncRunFactory(status=SyncRun.Status.FAILED, error=f"auth failed with {marker}")
    SyncRunItemFactory(run=run, action=SyncRunItem.Action.FAILED, detail=f"key={marker}")
    FunnelEntryFactory(sync_status=SyncStatus.FAILED, sync_last_error=f"api-key {marker}")
    for url in (RUNS_URL, reverse("admin:funnels_syncrun_change", args=[run.pk]), ENTRIES_URL,
                reverse("admin:funnels_funnelentry_change",
                        args=[FunnelEntry.objects.get().pk])):
        html = admin_client.get(url).content.decode()
        assert marker not in html, url
        assert "[redacted]" in html, url


def test_watermarks_page_shows_how_many_ids_are_awaited_in_gaps(admin_client):
    from funnels.models import SyncState

    SyncState.objects.create(
        key="test_results", last_id=500,
        gaps={"2026-11-28T15:00:00+00:00": [490, 495], "2026-11-28T15:15:00+00:00": [499]},
    )
    response = admin_client.get(reverse("admin:funnels_syncstate_changelist"))
    assert response.status_code == 200
    cells = re.findall(r'<td class="field-gap_count">(\d+)</td>', response.content.decode())
    assert cells == ["3"]
