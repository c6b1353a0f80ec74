"""Security at the edges, checked against the running application rather than templates:

- `manage.py check --deploy` is clean with the production settings of .env.example;
- every admin and report URL, enumerated from the URLconf and the admin registry, sends
  strangers to the login page and refuses signed-in non-staff; staff without the
  permission can neither switch the dry run nor retry syncs (POSTs, checked in the DB);
- the Brevo key and database passwords reach no log line, command output, page or run
  record, even when runs fail and Brevo echoes the key back;
- HTML in addresses and names is escaped on every page; CSV cells cannot be formulas.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connections
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from fake_brevo.server import FakeBrevo
from funnels.models import (
    Funnel,
    FunnelEntry,
    RuntimeSettings,
    SyncRun,
    SyncRunItem,
    SyncState,
    SyncStatus,
)
from funnels.services.runtime import runtime_settings_get
from funnels.tests.factories import (
    FunnelEntryFactory,
    SyncRunFactory,
    SyncRunItemFactory,
    funnel_get,
)
from funnels.tests.manage_subprocess import manage_run as manage_clean, mariadb_connect
from funnels.tests.sync_support import (
    LANG_TEST,
    OTHER_TEST,
    database_url,
    default_rows_restore,
    manage_run,
    modx_catalogue,
    modx_result,
    modx_rows_delete,
    subprocess_env,
)
from funnels.admin_site import site as admin_site

pytestmark = pytest.mark.django_db(databases=["default", "modx"])

ENV_EXAMPLE = Path(settings.BASE_DIR) / ".env.example"
# Generous for any one admin page; each page's own tests pin its exact budget.
MAX_QUERIES_PER_PAGE = 25


# --- check --deploy -----------------------------------------------------------------------


def _deploy_check(tmp_path, **overrides: str):
    # Every production value of .env.example except its SECRET_KEY, which production
    # refuses because it is public (test_settings_startup.py).
    env = {"TESTIZER_ENV_FILE": str(ENV_EXAMPLE), "LOG_FILE": str(tmp_path / "app.log"),
           "SECRET_KEY": secrets.token_urlsafe(50), **overrides}
    return manage_clean("check", "--deploy", "--fail-level", "WARNING", env=env)


def test_check_deploy_is_clean_with_the_production_settings_of_env_example(tmp_path):
    assert "APP_ENV=production" in ENV_EXAMPLE.read_text()
    done = _deploy_check(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout


def test_check_deploy_does_fail_when_a_production_switch_is_off(tmp_path):
    """The same command, one setting worse: the check is really looking."""
    done = _deploy_check(tmp_path, SECURE_HSTS_SECONDS="0", DEBUG="true")
    assert done.returncode != 0
    assert "security.W004" in done.stdout + done.stderr  # HSTS
    assert "security.W018" in done.stdout + done.stderr  # DEBUG


# --- every admin and report URL ----------------------------------------------------------


def _routes(patterns=None, prefix: str = "", namespace: str = ""):
    """(route, name, pattern) for every URL pattern, with namespaces joined."""
    for pattern in patterns if patterns is not None else get_resolver().url_patterns:
        if isinstance(pattern, URLResolver):
            inner = ":".join(n for n in (namespace, pattern.namespace or "") if n)
            yield from _routes(pattern.url_patterns, prefix + str(pattern.pattern), inner)
        elif isinstance(pattern, URLPattern):
            name = f"{namespace}:{pattern.name}" if namespace and pattern.name else pattern.name
            yield prefix + str(pattern.pattern), name, pattern


# Pages anyone may see: the login page, logout (which only ends a session), the language
# switch (a POST with CSRF that only sets the language cookie; the login page has it too)
# and the bare root, which redirects to /admin/.
PUBLIC = {"admin:login", "admin:logout", "set_language"}
# Query strings that make another page of the same view (the report's download).
VARIANTS = {"reports:conversions": ["", "?format=csv"]}


@pytest.fixture
def objects(django_user_model):
    """A real object of every registered model, for its change, history and delete URLs."""
    run = SyncRunFactory(status=SyncRun.Status.PARTIAL, error="Brevo error: 503")
    SyncRunItemFactory(run=run, action=SyncRunItem.Action.SKIPPED, reason="invalid_email",
                       email="not-an-email")
    entry = FunnelEntryFactory(sync_status=SyncStatus.FAILED, sync_last_error="503")
    return {
        **_audit_and_proof_objects(),
        "funnels.funnelentry": entry,
        "funnels.syncrun": run,
        "funnels.funnel": funnel_get("language"),
        "funnels.syncstate": SyncState.objects.create(key="test_results", last_id=1),
        "auth.user": django_user_model.objects.create_user("someone", password="pw-x-123456"),
        "auth.group": Group.objects.create(name="operators"),
    }


def _audit_and_proof_objects() -> dict:
    from funnels.models import BrevoAudit, ProofCheck, ProofDifference

    moment = SyncRun.objects.order_by("id").values_list("started_at", flat=True).first()
    proof = ProofCheck.objects.create(started_at=moment, window_from=moment, window_to=moment)
    return {
        "funnels.brevoaudit": BrevoAudit.objects.create(started_at=moment, kind="full"),
        "funnels.proofcheck": proof,
        "funnels.proofdifference": ProofDifference.objects.create(
            proof=proof, kind="should_be_in", email="lost@example.com", funnel_type="language"
        ),
    }


def every_url(objects: dict) -> list[tuple[str, str]]:
    """(name, url) of every admin and report page, built from the URLconf; the admin
    registry supplies the objects."""
    registered = {f"{m._meta.app_label}.{m._meta.model_name}" for m in admin_site._registry}
    assert registered == set(objects), "a model was registered without an object here"
    entry_type = ContentType.objects.get_for_model(FunnelEntry)
    urls: list[tuple[str, str]] = []
    for route, name, _pattern in _routes():
        if route == "" or name in PUBLIC:
            continue
        if not route.startswith("admin/"):
            raise AssertionError(f"a page outside /admin/ that this test does not know: {route}")
        if name == "admin:app_list":
            labels = sorted({key.split(".")[0] for key in objects})
            urls += [(name, reverse(name, kwargs={"app_label": label})) for label in labels]
            continue
        if "(?P<url>" in route:
            urls.append(("admin:catch_all", "/admin/no-such-page/"))
            continue
        path = route
        model = re.match(r"admin/(\w+)/(\w+)/", route)
        if name == "admin:view_on_site":
            path = (route.replace("<path:content_type_id>", str(entry_type.pk))
                    .replace("<path:object_id>", str(objects["funnels.funnelentry"].pk)))
        elif model and f"{model[1]}.{model[2]}" in objects:
            pk = str(objects[f"{model[1]}.{model[2]}"].pk)
            path = route.replace("<path:object_id>", pk).replace("<id>", pk)
        assert "<" not in path and "(?P" not in path, f"unfilled route {route}"
        for query in VARIANTS.get(name, [""]):
            urls.append((name or route, "/" + path + query))
    changelists = {name for name, _ in urls if name and name.endswith("_changelist")}
    for key in registered:
        assert f"admin:{key.replace('.', '_')}_changelist" in changelists, key
    return urls


def test_the_url_list_covers_the_admin_registry_and_the_reports(objects):
    names = {name for name, _ in every_url(objects)}
    assert {"admin:index", "admin:funnels_dry_run", "admin:funnels_syncrun_change",
            "admin:funnels_funnelentry_changelist"} <= names
    if "reports:conversions" in {n for _, n, _ in _routes()}:
        assert "reports:conversions" in names


def test_anonymous_visitors_are_sent_to_the_login_page_everywhere(client, objects):
    login = reverse("admin:login")
    for name, url in every_url(objects):
        response = client.get(url)
        assert response.status_code == 302, (name, url, response.status_code)
        assert response["Location"].startswith(login), (name, url, response["Location"])
    assert client.get("/")["Location"] == "/admin/"


def test_signed_in_non_staff_are_refused_everywhere(django_user_model, objects):
    user = django_user_model.objects.create_user("customer", password="pw-for-tests-1")
    client = Client()
    client.force_login(user)
    login = reverse("admin:login")
    for name, url in every_url(objects):
        response = client.get(url)
        refused = response.status_code == 403 or (
            response.status_code == 302 and response["Location"].startswith(login)
        )
        assert refused, (name, url, response.status_code)
        assert b"funnels-mode" not in response.content  # nothing about the job either


def test_every_url_is_a_real_page_for_a_superuser(admin_client, objects,
                                                  django_assert_max_num_queries):
    """The list above is made of working pages (so the refusals above mean something),
    and none of them errs or costs more than a bounded number of queries."""
    statuses = {}
    for name, url in every_url(objects):
        with django_assert_max_num_queries(MAX_QUERIES_PER_PAGE):
            response = admin_client.get(url)
        statuses[url] = response.status_code
        assert response.status_code in (200, 302, 403, 404, 405), (name, url)
        if response.status_code == 200 and response["Content-Type"].startswith("text/html"):
            # The operator always sees which mode the job is in, on every page.
            assert 'id="funnels-mode"' in response.content.decode(), (name, url)
    pages = [url for name, url in every_url(objects)
             if name and (name.endswith(("_changelist", "_change", "_history"))
                          or name in ("admin:index", "admin:app_list", "reports:conversions"))]
    assert pages and all(statuses[url] == 200 for url in pages), {
        url: statuses[url] for url in pages if statuses[url] != 200
    }


@pytest.fixture
def staff_without_permissions(django_user_model):
    """Staff who may look at entries and runs, but not change anything."""
    user = django_user_model.objects.create_user("viewer", password="pw-viewer-123", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(
        codename__in=["view_funnelentry", "view_syncrun", "view_funnel", "view_runtimesettings"]
    ))
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("start_dry, ask", [(True, "live"), (False, "dry")])
def test_staff_without_the_permission_cannot_switch_the_dry_run(
    staff_without_permissions, settings, start_dry, ask
):
    settings.BREVO_API_KEY = "xkeysib-security-test-0123456789"
    RuntimeSettings.objects.filter(id=1).update(dry_run=start_dry)
    logged = LogEntry.objects.count()
    response = staff_without_permissions.post(
        reverse("admin:funnels_dry_run"), {"mode": ask, "confirm": "on"}
    )
    assert response.status_code == 403
    assert runtime_settings_get().dry_run is start_dry
    assert LogEntry.objects.count() == logged


def test_staff_without_the_permission_cannot_retry_syncs(staff_without_permissions, admin_client):
    failed = [FunnelEntryFactory(sync_status=SyncStatus.FAILED, sync_attempts=3,
                                 sync_last_error="400 invalid_parameter") for _ in range(3)]
    before = list(FunnelEntry.objects.order_by("id").values_list(
        "sync_status", "sync_revision", "sync_next_attempt_at", "sync_attempts"))
    url = reverse("admin:funnels_funnelentry_changelist")
    assert staff_without_permissions.get(url).status_code == 200  # may look
    form = {"action": "retry_brevo_sync", "_selected_action": [e.pk for e in failed],
            "select_across": "0", "index": "0"}
    response = staff_without_permissions.post(url, form)
    assert response.status_code in (200, 302, 403)
    after = list(FunnelEntry.objects.order_by("id").values_list(
        "sync_status", "sync_revision", "sync_next_attempt_at", "sync_attempts"))
    assert after == before
    # The same request from someone allowed does change them: the refusal was real.
    admin_client.post(url, form)
    assert set(FunnelEntry.objects.values_list("sync_status", flat=True)) == {"pending"}


def test_staff_without_the_permission_cannot_change_a_funnel(staff_without_permissions):
    funnel = funnel_get("language")
    response = staff_without_permissions.post(
        reverse("admin:funnels_funnel_change", args=[funnel.pk]),
        {"name": "Hijacked", "test_kind": "language", "certificate_type": 1,
         "reentry": "once", "active": "on", "test_ids": ""},
    )
    assert response.status_code == 403
    funnel.refresh_from_db()
    assert funnel.name != "Hijacked"


# --- no secret anywhere -------------------------------------------------------------------

BREVO_KEY = "xkeysib-PROOF-" + uuid.uuid4().hex + "-SECRET"
WRONG_KEY = "xkeysib-PROOF-WRONG-" + uuid.uuid4().hex
DB_PASSWORD = "Pw-PROOF-" + uuid.uuid4().hex[:16] + "-db"
MODX_PASSWORD = "Pw-PROOF-MODX-" + uuid.uuid4().hex[:16]
SECRETS = (BREVO_KEY, WRONG_KEY, DB_PASSWORD, MODX_PASSWORD)


@pytest.fixture
def password_user():
    """MariaDB: a user with a password, allowed into this run's two test databases."""
    if connections["default"].vendor != "mysql":
        yield None
        return
    user = f"proof_{uuid.uuid4().hex[:8]}"
    names = [connections[a].settings_dict["NAME"] for a in ("default", "modx")]
    admin = mariadb_connect()
    try:
        with admin.cursor() as cursor:
            for host in ("127.0.0.1", "localhost"):
                cursor.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY %s", [DB_PASSWORD])
                for name in names:
                    cursor.execute(f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{user}'@'{host}'")
        yield user
    finally:
        with admin.cursor() as cursor:
            for host in ("127.0.0.1", "localhost"):
                cursor.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")
        admin.close()


def _with_password(url: str, user: str, password: str) -> str:
    return re.sub(r"^mysql://[^@]*@", f"mysql://{user}:{quote(password, safe='')}@", url)


@pytest.mark.django_db(databases=["default", "modx"], transaction=True)
def test_no_secret_reaches_a_log_an_output_a_page_or_a_run_record(
    password_user, tmp_path, settings, django_user_model
):
    default_rows_restore()
    modx_catalogue()
    for n in range(4):
        modx_result(f"s{n}@example.com", LANG_TEST if n % 2 else OTHER_TEST)
    log = tmp_path / "app.log"
    outputs: list[str] = []
    try:
        with FakeBrevo(api_key=BREVO_KEY, requests_per_second=None,
                       process_requests_per_hour=None) as fake:
            env = subprocess_env(fake=fake, log_file=log, APP_LOG_LEVEL="DEBUG",
                                 BREVO_MAX_RETRIES="1")
            if password_user:
                env["DATABASE_URL"] = _with_password(database_url("default"), password_user,
                                                     DB_PASSWORD)
                env["MODX_DATABASE_URL"] = _with_password(database_url("modx"), password_user,
                                                          DB_PASSWORD)

            # 1. The wrong key: Brevo answers 401 and, worse, echoes the key it got.
            fake.faults.add("401", count=None, message=f"Key not found: {WRONG_KEY}")
            done = manage_run("run_funnels", "--live", "--since", "2026-10-01",
                              env={**env, "BREVO_API_KEY": WRONG_KEY})
            outputs += [done.stdout, done.stderr]
            assert done.returncode == 1 and "401" in done.stdout, done.stdout + done.stderr

            # 2. The right key, then a 5xx streak longer than the retries, echoing the key
            #    in an error body and in a proxy's text page.
            fake.faults.clear()
            fake.faults.add("500", count=3, message=f"upstream rejected api-key {BREVO_KEY}")
            fake.faults.add("524", count=None)
            done = manage_run("run_funnels", "--live", env=env)
            outputs += [done.stdout, done.stderr]
            # Partial: exit 4 for cron and monitoring (README "Commands").
            assert done.returncode == 4 and "partial (live)" in done.stdout, (
                done.stdout + done.stderr)

            # 3. MODX refuses the password: the run fails on the database.
            modx_url = _with_password(
                database_url("modx") if password_user else "mysql://root@127.0.0.1:3306/x",
                "proof_nobody", MODX_PASSWORD,
            )
            done = manage_run("run_funnels", "--live", env={**env, "MODX_DATABASE_URL": modx_url})
            outputs += [done.stdout, done.stderr]
            assert done.returncode == 75, done.stdout + done.stderr  # database unavailable

            # 4. The health command, which prints the state of all of the above.
            done = manage_run("funnels_health", env=env)
            outputs += [done.stdout, done.stderr]
    finally:
        modx_rows_delete()

    texts = {"log file": log.read_text(), **{f"output {n}": t for n, t in enumerate(outputs)}}
    assert SyncRun.objects.filter(status=SyncRun.Status.FAILED).count() == 2
    for run in SyncRun.objects.all():
        texts[f"run #{run.pk}"] = " ".join(
            str(getattr(run, f.attname)) for f in SyncRun._meta.fields)
    for item in SyncRunItem.objects.all():
        texts[f"item #{item.pk}"] = " ".join(
            str(getattr(item, f.attname)) for f in SyncRunItem._meta.fields)
    for entry in FunnelEntry.objects.all():
        texts[f"entry #{entry.pk}"] = entry.sync_last_error

    # Every admin page, with the key configured, as an operator sees them.
    settings.BREVO_API_KEY = BREVO_KEY
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw-x-1234567")
    client = Client()
    client.force_login(admin)
    objects = {
        "funnels.funnelentry": FunnelEntry.objects.order_by("id").first(),
        "funnels.syncrun": SyncRun.objects.filter(status="failed").first(),
        "funnels.funnel": funnel_get("language"),
        "funnels.syncstate": SyncState.objects.first(),
        "auth.user": admin,
        "auth.group": Group.objects.create(name="ops"),
        **_audit_and_proof_objects(),
    }
    for run in SyncRun.objects.all():
        texts[f"page run #{run.pk}"] = client.get(
            reverse("admin:funnels_syncrun_change", args=[run.pk])).content.decode()
    for name, url in every_url(objects):
        texts[f"page {url}"] = client.get(url).content.decode(errors="replace")

    assert "401" in " ".join(texts.values())  # the failures are there to be read ...
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret[:14]}... leaked into {where}"
    # Brevo's echo of the key was there, and was cut out before it was stored.
    assert any("api-key [redacted]" in text for where, text in texts.items() if where.startswith("entry"))
    logged = log.read_text()
    assert "401" in logged and "error code: 524" in logged  # ... only the secrets are not


# --- escaping ------------------------------------------------------------------------------

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'


def test_html_in_addresses_and_names_is_escaped_on_every_page(admin_client, objects, now):
    """Rows as the job records them (skipped items keep the address as typed) and as a
    legacy table might hold them."""
    run = SyncRunFactory(status=SyncRun.Status.SUCCESS, error=f"error near {SCRIPT}")
    for raw in (f"{SCRIPT}@x.com", IMG, f"<b>bold</b>@example.com"):
        SyncRunItemFactory(run=run, action=SyncRunItem.Action.SKIPPED, reason="invalid_email",
                           email=raw, detail=f"detail {IMG}")
    entry = FunnelEntryFactory(email=f"{SCRIPT}@x.com", funnel_type=f"lang{IMG}",
                               sync_status=SyncStatus.FAILED, sync_last_error=f"Brevo: {SCRIPT}")
    Funnel.objects.create(slug="evil", name=f"Evil {SCRIPT}", test_kind="any",
                          certificate_type=1)
    # A slug the admin would refuse, written to the table directly: the report shows slugs.
    Funnel.objects.create(slug=f"x{IMG}", name="slug with HTML", test_kind="any",
                          certificate_type=1)
    FunnelEntryFactory(email="slug@example.com", funnel_type=f"x{IMG}",
                       entered_at=now - dt.timedelta(days=2))
    pages = [
        reverse("admin:index"),
        reverse("admin:funnels_funnelentry_changelist"),
        reverse("admin:funnels_funnelentry_changelist") + "?q=" + quote(SCRIPT),
        reverse("admin:funnels_funnelentry_change", args=[entry.pk]),
        reverse("admin:funnels_syncrun_changelist"),
        reverse("admin:funnels_syncrun_change", args=[run.pk]),
        reverse("admin:funnels_funnel_changelist"),
    ]
    reports = "reports:conversions" in {n for _, n, _ in _routes()}
    if reports:
        pages.append(reverse("reports:conversions"))
        pages.append(reverse("reports:conversions") + "?from_date=2026-11-01&to_date="
                     + now.date().isoformat() + "&group_by=funnel")
    seen_escaped = 0
    for url in pages:
        html = admin_client.get(url).content.decode()
        assert SCRIPT not in html, url
        assert "<img src=x" not in html, url
        assert "<b>bold</b>" not in html, url
        seen_escaped += "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        if "reports" in url:
            assert "&lt;img src=x onerror=alert(1)&gt;" in html, url  # shown, escaped
    assert seen_escaped >= 4  # the rows were on the pages, escaped


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_cells(text: str) -> list[list[str]]:
    import csv
    import io

    assert text.startswith("\ufeff")
    return list(csv.reader(io.StringIO(text[1:])))


def test_csv_cells_can_never_be_spreadsheet_formulas(admin_client, now):
    """Funnel slugs and test ids are the text cells of the report; a slug written to the
    table by hand (or by the earlier tool) and a negative MODX test id start like a
    formula. The admin's download and the command's CSV both neutralise them."""
    from django.core.management import call_command
    import io

    hostile = ["=HYPERLINK(\"http://x\",\"y\")", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)"]
    day = now - dt.timedelta(days=3)
    for n, slug in enumerate(hostile):
        Funnel.objects.create(slug=slug, name=f"hostile {n}", test_kind="any", certificate_type=1)
        FunnelEntryFactory(email=f"f{n}@example.com", funnel_type=slug, test_id=-5 - n,
                           entered_at=day, certificate_purchased=True,
                           certificate_purchased_at=day + dt.timedelta(hours=2))
    period = {"from_date": (day - dt.timedelta(days=1)).date().isoformat(),
              "to_date": now.date().isoformat()}
    documents = []
    for group_by in ("funnel", "test"):
        response = admin_client.get(reverse("reports:conversions"),
                                    {**period, "group_by": group_by, "format": "csv"})
        assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
        documents.append(response.content.decode("utf-8"))
        out = io.StringIO()
        call_command("report_conversions", "--from-date", period["from_date"], "--to-date",
                     period["to_date"], "--group-by", group_by, "--format", "csv", stdout=out)
        documents.append(out.getvalue())
    neutralised = 0
    for text in documents:
        for row in _csv_cells(text)[1:]:
            for cell in row:
                assert not cell.startswith(FORMULA_STARTS), (cell, row)
                neutralised += cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS)
    # Every hostile slug (by funnel) and every negative test id (by test), in both files.
    assert neutralised >= 2 * (len(hostile) + len(hostile))
