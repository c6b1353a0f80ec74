"""The pre-flight check of the switch-over from the earlier tool (switch_over_check).

Each check reads, decides one level and says it in one line; nothing is written here
(a Brevo list is read, never changed). docs/switch-over.md is the path these checks
follow, in the same order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import connections
from django.utils import timezone
from django.utils.translation import gettext as _

from funnels.brevo.client import BrevoClient
from funnels.brevo.errors import BrevoAuthError, BrevoError
from funnels.brevo.factory import brevo_client_build
from funnels.logging_filters import redact
from funnels.models import FunnelEntry, SyncRun
from funnels.codes import Source
from funnels.selectors.candidates import (
    KindResolver,
    candidates_start_id,
    candidates_stream,
)
from funnels.selectors.funnels import (
    funnel_entries_unusable_count,
    funnel_entry_usable_q,
    funnel_list_id,
    funnel_list_ids,
    funnels_all,
    watermark_get,
)
from funnels.selectors.outbox import outbox_due_q
from funnels.services.entries import EntryPlanner
from funnels.services.results import candidate_waiting
from funnels.adoption.legacy import LegacyAdoptionRefused, legacy_adoption_status
from funnels.services.runtime import runtime_settings_get
from funnels.routers import MODX_ALIAS

OK, WARN, FAIL = "OK", "WARN", "FAIL"
EXIT_CODES = {OK: 0, WARN: 1, FAIL: 2}
# The earlier tool re-read the results of the last 30 days on every run: a first run that
# looks back less than that never adds the people it had not reached yet.
EARLIER_WINDOW_DAYS = 30
_STRICT = ("STRICT_TRANS_TABLES", "STRICT_ALL_TABLES")


@dataclass(frozen=True)
class Check:
    name: str
    level: str
    message: str

    @property
    def line(self) -> str:
        return f"{self.level:<4} {self.name}: {self.message}"


@dataclass(frozen=True)
class FirstRunForecast:
    since: dt.date
    results: int  # MODX results the first run reads
    entries: int  # entries it would add
    contacts: int  # distinct emails it would send to Brevo (new and adopted pending)


def _same_database(a: str, b: str) -> bool:
    one, two = connections[a].settings_dict, connections[b].settings_dict
    return all(str(one.get(k) or "") == str(two.get(k) or "")
               for k in ("ENGINE", "HOST", "PORT", "NAME"))


def check_configuration() -> Check:
    dotenv = settings.DOTENV
    mode = _("dry run") if settings.APP_DRY_RUN else _("live")
    if dotenv.bom_stripped:
        return Check("configuration", WARN, _(
            "%(path)s starts with a byte-order mark (it was stripped, so the first line "
            "counts: APP_ENV=%(env)s, APP_DRY_RUN gives %(mode)s); save it as UTF-8 "
            "without BOM"
        ) % {"path": dotenv.path, "env": settings.APP_ENV, "mode": mode})
    where = str(dotenv.path) if dotenv.found else _("the environment only (no .env file)")
    return Check("configuration", OK, _("parsed from %(where)s: APP_ENV=%(env)s, "
                                        "APP_DRY_RUN gives %(mode)s")
                 % {"where": where, "env": settings.APP_ENV, "mode": mode})


def check_databases() -> Check:
    names = []
    for alias in ("default", MODX_ALIAS):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
        names.append(f"{alias} ({connections[alias].settings_dict.get('NAME')})")
    return Check("databases", OK, _("both reachable: %(names)s") % {"names": ", ".join(names)})


def sql_mode_global(alias: str) -> str | None:
    """The server's default sql_mode: what a session of another writer gets (ours sets
    its own in init_command). None on SQLite."""
    connection = connections[alias]
    if connection.vendor != "mysql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@GLOBAL.sql_mode")
        return str(cursor.fetchone()[0] or "")


def check_sql_mode(*, read: Callable[[str], str | None] | None = None) -> Check:
    mode = (read or sql_mode_global)("default")
    if mode is None:
        return Check("sql mode", OK, _("SQLite: no SQL mode to check"))
    if any(flag in mode.upper().split(",") for flag in _STRICT):
        return Check("sql mode", OK, _("the server of our tables is strict (%(mode)s)")
                     % {"mode": mode})
    return Check("sql mode", FAIL, _(
        "the server of our tables is not strict (sql_mode=%(mode)s): another writer's "
        "session can store zero dates and empty values in our tables; add "
        "STRICT_TRANS_TABLES to sql_mode in the server configuration"
    ) % {"mode": mode or "''"})


def check_our_tables() -> Check:
    # Before our migrations, funnel_entries may still be the earlier tool's own table.
    unusable = funnel_entries_unusable_count() if _our_tables_exist() else 0
    if _same_database("default", MODX_ALIAS):
        return Check("our tables", FAIL, _(
            "our tables are in the MODX database, where the earlier tool (or anything "
            "else writing there) can write to funnel_entries; give them a database of "
            "their own (DATABASE_URL) and adopt from there%(rows)s"
        ) % {"rows": _("; %(n)s rows there were not written by this job") % {"n": unusable}
             if unusable else ""})
    if unusable:
        return Check("our tables", FAIL, _(
            "%(n)s rows in funnel_entries were not written by this job: another writer "
            "uses our database (see the admin, filter \"Not usable\")"
        ) % {"n": unusable})
    return Check("our tables", OK, _("a database of their own (%(name)s), no rows of "
                                     "another writer")
                 % {"name": connections["default"].settings_dict.get("NAME")})


def check_earlier_table_and_cron() -> list[Check]:
    try:
        status = legacy_adoption_status()
    except LegacyAdoptionRefused as exc:
        return [Check("earlier table", FAIL, str(exc))]
    if status.source is None:
        return [Check("earlier table", OK, _("none in our database or the MODX database"))]
    where = f"{status.source.alias}.{status.source.table}"
    if status.adopted_at is None:
        adopted = Check("earlier table", FAIL, _(
            "%(where)s found (%(rows)s rows), not adopted: run adopt_legacy_entries"
        ) % {"where": where, "rows": status.rows})
    elif status.missing:
        adopted = Check("earlier table", FAIL, _(
            "%(where)s adopted, but %(n)s of its %(entries)s entries are missing (rows "
            "written since): remove its cron, then run adopt_legacy_entries again"
        ) % {"where": where, "n": status.missing, "entries": status.entries})
    else:
        adopted = Check("earlier table", OK, _(
            "%(where)s adopted: %(rows)s rows, %(entries)s entries"
        ) % {"where": where, "rows": status.rows, "entries": status.entries})
    if status.adopted_at is None:
        return [adopted]
    unusable = funnel_entries_unusable_count()
    signs = status.rows_after + status.jobs_after + unusable
    when = timezone.localtime(status.adopted_at).isoformat(timespec="minutes")
    if signs:
        cron = Check("earlier cron", FAIL, _(
            "apparently still active: since the adoption (%(when)s) it wrote %(rows)s "
            "rows to its table, %(jobs)s outbox jobs, and %(ours)s rows into our "
            "funnel_entries; remove its line from the crontab before the first live run"
        ) % {"when": when, "rows": status.rows_after, "jobs": status.jobs_after,
             "ours": unusable})
    else:
        cron = Check("earlier cron", OK, _("nothing written by it since the adoption (%(when)s)")
                     % {"when": when})
    return [adopted, cron]


def first_run_forecast(*, now: dt.datetime, since: dt.date | None = None) -> FirstRunForecast:
    """What the first live run would do: a dry run's reading without its run record."""
    since = since or (timezone.localtime(now).date()
                      - dt.timedelta(days=settings.FUNNELS_INITIAL_LOOKBACK_DAYS))
    funnels = funnels_all()
    planner = EntryPlanner(funnels=funnels, list_ids=funnel_list_ids(funnels=funnels))
    scratch = SyncRun(dry_run=True, status=SyncRun.Status.RUNNING, started_at=now)
    results = entries = 0
    emails: set[str] = set()
    kinds = KindResolver()
    skew = dt.timedelta(minutes=settings.FUNNELS_CLOCK_SKEW_MINUTES)
    for chunk in candidates_stream(after_id=candidates_start_id(since=since),
                                   chunk_size=settings.FUNNELS_CHUNK_SIZE, kinds=kinds):
        # As the run does: results that cannot be decided yet wait, the rest are planned.
        ready = [c for c in chunk if candidate_waiting(c, now=now, skew=skew) is None]
        _, items, outcome = planner.plan_chunk(run=scratch, candidates=ready, now=now)
        results += len(chunk)
        entries += outcome.added
        emails.update(i.email for i in items if i.action == "would_add")
    emails.update(
        FunnelEntry.objects.filter(outbox_due_q(now=now), funnel_entry_usable_q())
        .values_list("email", flat=True).distinct()
    )
    return FirstRunForecast(since=since, results=results, entries=entries,
                            contacts=len(emails))


def _our_tables_exist() -> bool:
    connection = connections["default"]
    with connection.cursor() as cursor:
        return SyncRun._meta.db_table in connection.introspection.table_names(cursor)


def check_look_back(*, now: dt.datetime) -> Check:
    days = settings.FUNNELS_INITIAL_LOOKBACK_DAYS
    if not _our_tables_exist():
        return Check("look-back", FAIL if days < EARLIER_WINDOW_DAYS else WARN, _(
            "FUNNELS_INITIAL_LOOKBACK_DAYS=%(days)s; our tables do not exist yet, so the "
            "first run cannot be counted (run adopt_legacy_entries)%(short)s"
        ) % {"days": days, "short": _(
            "; shorter than the earlier tool's %(window)s days: people it had not reached "
            "yet are never added; set FUNNELS_INITIAL_LOOKBACK_DAYS=%(window)s"
        ) % {"window": EARLIER_WINDOW_DAYS} if days < EARLIER_WINDOW_DAYS else ""})
    last_id = watermark_get(key=Source.RESULTS)
    if last_id is not None:
        due = (FunnelEntry.objects.filter(outbox_due_q(now=now), funnel_entry_usable_q())
               .values_list("email", flat=True).distinct().count())
        return Check("look-back", OK, _(
            "the first run is done (watermark at result #%(id)s); %(n)s contacts are due "
            "for Brevo"
        ) % {"id": last_id, "n": due})
    forecast = first_run_forecast(now=now)
    said = _(
        "FUNNELS_INITIAL_LOOKBACK_DAYS=%(days)s: the first run reads %(results)s results "
        "completed since %(since)s, adds %(entries)s entries and sends %(contacts)s "
        "contacts (adopted ones included)"
    ) % {"days": days, "results": forecast.results, "since": forecast.since.isoformat(),
         "entries": forecast.entries, "contacts": forecast.contacts}
    if days < EARLIER_WINDOW_DAYS:
        return Check("look-back", FAIL, said + _(
            "; shorter than the earlier tool's %(window)s days: people it had not reached "
            "yet are never added; set FUNNELS_INITIAL_LOOKBACK_DAYS=%(window)s"
        ) % {"window": EARLIER_WINDOW_DAYS})
    return Check("look-back", OK, said)


def check_dry_run() -> Check:
    completed = SyncRun.objects.filter(
        dry_run=True, status__in=(SyncRun.Status.SUCCESS, SyncRun.Status.PARTIAL)
    ).order_by("-id").first()
    mode = _("dry run") if runtime_settings_get().dry_run else _("live")
    if completed is None:
        return Check("dry run", WARN, _(
            "no dry run has completed on this database yet (mode: %(mode)s): run "
            "run_funnels --dry-run --plan and read it before going live"
        ) % {"mode": mode})
    return Check("dry run", OK, _("run #%(id)s was a completed dry run (mode now: %(mode)s)")
                 % {"id": completed.pk, "mode": mode})


def check_brevo(*, client_factory: Callable[[], BrevoClient] = brevo_client_build) -> Check:
    if not settings.BREVO_API_KEY:
        return Check("Brevo", FAIL, _("BREVO_API_KEY is not set"))
    found, problems = [], []
    with client_factory() as client:
        for funnel in funnels_all():
            if not funnel.active:
                continue
            list_id = funnel_list_id(funnel=funnel)
            if not list_id:
                problems.append(_("funnel %(slug)s has no list id") % {"slug": funnel.slug})
                continue
            brevo_list = client.get_list(list_id=list_id)
            if brevo_list is None:
                problems.append(_("list %(id)s (funnel %(slug)s) does not exist in this "
                                  "Brevo account") % {"id": list_id, "slug": funnel.slug})
            else:
                found.append(f"{funnel.slug} -> {list_id} \"{brevo_list.get('name', '')}\"")
    if problems:
        return Check("Brevo", FAIL, "; ".join(problems))
    return Check("Brevo", OK, _("the key is accepted; lists: %(lists)s")
                 % {"lists": ", ".join(found)})


def switch_over_checks(
    *, now: dt.datetime, brevo_client_factory: Callable[[], BrevoClient] = brevo_client_build
) -> list[Check]:
    """Every check, in the order of docs/switch-over.md. A check that cannot be made
    (a database down, Brevo unreachable) is a FAIL line of its own; the others still run."""
    checks = [check_configuration()]
    try:
        checks.append(check_databases())
        reachable = True
    except Exception as exc:  # noqa: BLE001 - said in one line, never a traceback
        checks.append(Check("databases", FAIL, _describe(exc)))
        reachable = False
    steps: list[tuple[str, Callable[[], Check | list[Check]]]] = []
    if reachable:
        steps += [
            ("sql mode", check_sql_mode),
            ("our tables", check_our_tables),
            ("earlier table", check_earlier_table_and_cron),
            ("look-back", lambda: check_look_back(now=now)),
            ("dry run", check_dry_run),
        ]
    steps.append(("Brevo", lambda: check_brevo(client_factory=brevo_client_factory)))
    for name, step in steps:
        try:
            result = step()
        except BrevoAuthError:
            result = Check(name, FAIL, _("Brevo rejected the API key (401)"))
        except Exception as exc:  # noqa: BLE001
            result = Check(name, FAIL, _describe(exc))
        checks.extend(result if isinstance(result, list) else [result])
    return checks


def _describe(exc: Exception) -> str:
    text = redact(str(exc)).splitlines()[0][:300] if str(exc) else ""
    kind = "Brevo" if isinstance(exc, BrevoError) else type(exc).__name__
    return _("could not check: %(kind)s: %(text)s") % {"kind": kind, "text": text}
