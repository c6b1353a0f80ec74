"""A generated MODX data set of hostile rows: what a public web form and a CMS without
constraints leave in the tables the funnel job reads.

`hostile_generate` is pure (seed, clock and database vendor in, rows out); `hostile_load`
writes the rows into the (test) MODX database. Every hand-written row carries a label and
the outcome the job must reach for it, so a test can say which row went wrong and
docs/proof.md can list what was tried. The seeded part mixes the same ingredients at
random; its outcomes follow from the rules (first valid result per person and funnel).
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field

from django.db import connections

from funnels.emails import email_check
from funnels.modx import models as modx
from funnels.routers import MODX_ALIAS, modx_writes_allowed

# simpletest_test: Id -> LangId rows (Id 3 twice: MODX does not make it unique).
LANG_A, LANG_B = 1, 2
TEST_LANG, TEST_LANG_B, TEST_DUPLICATE_ID = 1, 2, 3
TEST_OTHER, TEST_NULL_LANG, TEST_UNKNOWN_LANG, TEST_NEGATIVE_LANG = 21, 22, 23, 24
TEST_NO_ROW, TEST_ZERO, TEST_NEGATIVE = 500, 0, -5
TEST_ROWS = [
    (TEST_LANG, LANG_A), (TEST_LANG_B, LANG_B),
    (TEST_DUPLICATE_ID, 0), (TEST_DUPLICATE_ID, LANG_A),
    (TEST_OTHER, 0), (TEST_NULL_LANG, None), (TEST_UNKNOWN_LANG, 99),
    (TEST_NEGATIVE_LANG, -1),
]
LANGUAGE_TESTS = {TEST_LANG, TEST_LANG_B, TEST_DUPLICATE_ID}

ZERO_DATE = "zero"  # MySQL's 0000-00-00 00:00:00, which MODX installations do contain
DUPLICATE = "skip:duplicate"  # duplicate_in_batch within a run, already_in_funnel across

LONG_LOCAL = "l" * 64
# 64 + 1 + 190 = 255 characters, every part well-formed: too long only as a whole.
DOMAIN_190 = ".".join(["d" * 62, "d" * 62, "d" * 60]) + ".com"
# 254 characters exactly: the longest address the job may send.
DOMAIN_189 = ".".join(["d" * 62, "d" * 62, "d" * 59]) + ".com"


@dataclass(frozen=True)
class HostileResult:
    label: str
    email: str | None
    test_id: int | None
    completed_at: dt.datetime | str | None  # ZERO_DATE on MySQL only
    outcome: str  # "entry:<funnel>", "skip:<reason>", "wait:<reason>" or DUPLICATE


@dataclass(frozen=True)
class HostilePayment:
    label: str
    status_id: int
    paid_at: dt.datetime | str | None
    buyer: str | None = None  # modx_cert_users.email; None with user_missing
    cert_type: int | None = modx.CERT_TYPE_LANGUAGE  # None: the cert test row is missing
    result_missing: bool = False
    user_missing: bool = False
    # "purchase:<email>:<funnel>", the run's payment skip reason, or "wait:<reason>" for a
    # payment put on the recheck list
    outcome: str = ""


@dataclass
class HostileData:
    languages: list[int] = field(default_factory=list)
    tests: list[tuple[int, int | None]] = field(default_factory=list)
    results: list[HostileResult] = field(default_factory=list)
    payments: list[HostilePayment] = field(default_factory=list)

    def by_label(self, label: str) -> HostileResult:
        return next(r for r in self.results if r.label == label)


def _entry(slug: str) -> str:
    return f"entry:{slug}"


def _hand_written_results(*, now: dt.datetime, vendor: str) -> list[HostileResult]:
    recent = now - dt.timedelta(days=2)

    def at(minutes: int) -> dt.datetime:
        return recent + dt.timedelta(minutes=minutes)

    rows = [
        # The first row has a normal time: the first run starts just below it.
        HostileResult("plain address", "anna@example.com", TEST_LANG, at(0), _entry("language")),
        HostileResult("same person, upper case", "ANNA@EXAMPLE.COM", TEST_LANG, at(1), DUPLICATE),
        HostileResult("same person, padded with tab", "  anna@example.com\t", TEST_LANG_B, at(2),
                      DUPLICATE),
        HostileResult("same person, other funnel, mixed case", "Anna@Example.Com", TEST_OTHER,
                      at(3), _entry("non_language")),
        HostileResult("NULL email", None, TEST_LANG, at(4), "wait:empty_email"),
        HostileResult("empty email", "", TEST_LANG, at(5), "wait:empty_email"),
        HostileResult("spaces only", "    ", TEST_LANG, at(6), "wait:empty_email"),
        HostileResult("tabs and newlines only", "\t\r\n", TEST_OTHER, at(7), "wait:empty_email"),
        HostileResult("no @", "not-an-email", TEST_LANG, at(8), "wait:invalid_email"),
        HostileResult("no domain dot", "anna@localhost", TEST_LANG, at(9), "wait:invalid_email"),
        HostileResult("no local part", "@example.com", TEST_LANG, at(10), "wait:invalid_email"),
        HostileResult("no domain", "anna@", TEST_LANG, at(11), "wait:invalid_email"),
        HostileResult("two @", "two@@example.com", TEST_LANG, at(12), "wait:invalid_email"),
        HostileResult("space inside", "a b@example.com", TEST_LANG, at(13), "wait:invalid_email"),
        HostileResult("newline before @", "nl\n@example.com", TEST_LANG, at(14),
                      "wait:invalid_email"),
        HostileResult("header injection", "x@example.com\nBcc: victim@example.com", TEST_LANG,
                      at(15), "wait:invalid_email"),
        HostileResult("trailing dot", "dot@example.com.", TEST_LANG, at(16), "wait:invalid_email"),
        HostileResult("double dot", "dd@example..com", TEST_LANG, at(17), "wait:invalid_email"),
        HostileResult("numeric top-level domain", "ip@127.0.0.1", TEST_LANG, at(18),
                      "wait:invalid_email"),
        HostileResult("local part over 64", "l" * 65 + "@example.com", TEST_LANG, at(19),
                      "wait:invalid_email"),
        HostileResult("255 characters", f"{LONG_LOCAL}@{DOMAIN_190}", TEST_LANG, at(20),
                      "wait:email_too_long"),
        HostileResult("300+ characters", "a" * 300 + "@example.com", TEST_LANG, at(21),
                      "wait:email_too_long"),
        HostileResult("600 characters of garbage", "<x>" * 200, TEST_LANG, at(22),
                      "wait:email_too_long"),
        HostileResult("254 characters exactly", f"{LONG_LOCAL}@{DOMAIN_189}", TEST_LANG, at(23),
                      _entry("language")),
        HostileResult("IDN domain", "ivan@пример.рф", TEST_LANG, at(24), _entry("language")),
        HostileResult("IDN domain, upper case", "IVAN@ПРИМЕР.РФ", TEST_LANG, at(25), DUPLICATE),
        HostileResult("IDN domain as punycode", "ivan@xn--e1afmkfd.xn--p1ai", TEST_LANG_B, at(26),
                      DUPLICATE),
        HostileResult("IDN in Latin script", "mueller@münchen.de", TEST_OTHER, at(27),
                      _entry("non_language")),
        HostileResult("ü in the local part", "jürgen@example.de", TEST_LANG, at(28),
                      "wait:invalid_email"),
        HostileResult("Cyrillic local part", "иван@пример.рф", TEST_LANG, at(29),
                      "wait:invalid_email"),
        HostileResult("emoji", "😀@example.com", TEST_LANG, at(30), "wait:invalid_email"),
        HostileResult("zero-width space", "zw\u200bsp@example.com", TEST_LANG, at(31),
                      "wait:invalid_email"),
        HostileResult("right-to-left override", "\u202eevil@example.com", TEST_LANG, at(32),
                      "wait:invalid_email"),
        HostileResult("NUL byte", "nul\x00@example.com", TEST_LANG, at(33), "wait:invalid_email"),
        HostileResult("SQL: ' OR 1=1 --", "' OR 1=1 --", TEST_LANG, at(34), "wait:invalid_email"),
        HostileResult("SQL: quote in an address", "' OR '1'='1'@example.com", TEST_LANG, at(35),
                      "wait:invalid_email"),
        HostileResult("SQL: DROP TABLE", "robert');DROP TABLE simpletest_users;--@example.com",
                      TEST_LANG, at(36), "wait:invalid_email"),
        # RFC 5322 allows ' and = in a local part: a real (if odd) address, sent as such.
        HostileResult("SQL-looking but valid", "x'or'1'='1@example.com", TEST_OTHER, at(37),
                      _entry("non_language")),
        HostileResult("apostrophe in a name", "o'brien@example.com", TEST_LANG, at(38),
                      _entry("language")),
        HostileResult("HTML: script", "<script>alert(1)</script>@x.com", TEST_LANG, at(39),
                      "wait:invalid_email"),
        HostileResult("HTML: attribute breakout", "\"><img src=x onerror=alert(1)>", TEST_LANG,
                      at(40), "wait:invalid_email"),
        HostileResult("HTML: bold", "<b>bold</b>@example.com", TEST_OTHER, at(41),
                      "wait:invalid_email"),
        HostileResult("CSV formula", "=HYPERLINK(\"http://x\")@example.com", TEST_LANG, at(42),
                      "wait:invalid_email"),
        # Valid addresses that start like a spreadsheet formula (+ and - are atext).
        HostileResult("leading plus", "+formula@example.com", TEST_OTHER, at(43),
                      _entry("non_language")),
        HostileResult("leading minus", "-cmd@example.com", TEST_LANG, at(44), _entry("language")),
        # Not completed (yet): waits until MODX sets the time.
        HostileResult("NULL date", "nodate@example.com", TEST_LANG, None,
                      "wait:no_completion_time"),
        HostileResult("date in the future", "future@example.com", TEST_OTHER,
                      now + dt.timedelta(days=30), "wait:completed_in_future"),
        HostileResult("date in 1970", "epoch@example.com", TEST_LANG,
                      dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.UTC),
                      "skip:completed_too_long_ago"),
        HostileResult("LangId NULL", "nulllang@example.com", TEST_NULL_LANG, at(45),
                      _entry("non_language")),
        HostileResult("LangId with no language row", "unknownlang@example.com",
                      TEST_UNKNOWN_LANG, at(46), _entry("non_language")),
        HostileResult("negative LangId", "neglang@example.com", TEST_NEGATIVE_LANG, at(47),
                      _entry("non_language")),
        HostileResult("test id with two rows, one a language", "duptest@example.com",
                      TEST_DUPLICATE_ID, at(48), _entry("language")),
        HostileResult("test id with no simpletest_test row", "norow@example.com", TEST_NO_ROW,
                      at(49), _entry("non_language")),
        HostileResult("test id 0", "zerotest@example.com", TEST_ZERO, at(50),
                      _entry("non_language")),
        HostileResult("negative test id", "negtest@example.com", TEST_NEGATIVE, at(51),
                      _entry("non_language")),
        HostileResult("NULL test id", "notest@example.com", None, at(52), "wait:no_test_id"),
        HostileResult("buyer of the future payment", "vera@example.com", TEST_LANG, at(53),
                      _entry("language")),
        HostileResult("buyer, other funnel", "boris@example.org", TEST_OTHER, at(54),
                      _entry("non_language")),
    ]
    if vendor == "mysql":
        rows.append(HostileResult("zero date 0000-00-00", "zerodate@example.com", TEST_LANG,
                                  ZERO_DATE, "wait:no_completion_time"))
    return rows


def _hand_written_payments(*, now: dt.datetime, vendor: str) -> list[HostilePayment]:
    anna_entered = now - dt.timedelta(days=2)
    boris_entered = anna_entered + dt.timedelta(minutes=54)
    language, other = modx.CERT_TYPE_LANGUAGE, modx.CERT_TYPE_NON_LANGUAGE
    payments = [
        HostilePayment("paid after entry, typed differently", 2,
                       anna_entered + dt.timedelta(hours=1),
                       buyer="  ANNA@Example.COM ", outcome="purchase:anna@example.com:language"),
        HostilePayment("paid before entry", 2, anna_entered - dt.timedelta(hours=2),
                       buyer="anna@example.com", outcome="purchase_before_entry"),
        HostilePayment("other funnel's certificate", 2, boris_entered + dt.timedelta(hours=3),
                       buyer="Boris@Example.org", cert_type=other,
                       outcome="purchase:boris@example.org:non_language"),
        HostilePayment("paid, NULL time", 2, None, buyer="anna@example.com",
                       outcome="payment_time_missing"),
        HostilePayment("unknown status 7", 7, now - dt.timedelta(hours=1), buyer="anna@example.com",
                       outcome="not_paid"),
        HostilePayment("negative status", -1, now - dt.timedelta(hours=1),
                       buyer="anna@example.com", outcome="not_paid"),
        HostilePayment("status 0 with a time", 0, now - dt.timedelta(hours=1),
                       buyer="anna@example.com", outcome="not_paid"),
        HostilePayment("result missing", 2, now - dt.timedelta(hours=1), result_missing=True,
                       outcome="wait:payment_result_missing"),
        HostilePayment("user missing", 2, now - dt.timedelta(hours=1), user_missing=True,
                       outcome="wait:payment_user_missing"),
        HostilePayment("certificate test missing", 2, now - dt.timedelta(hours=1),
                       buyer="anna@example.com", cert_type=None,
                       outcome="wait:payment_cert_test_missing"),
        HostilePayment("unknown certificate type 3", 2, now - dt.timedelta(hours=1),
                       buyer="anna@example.com", cert_type=3, outcome="wait:unknown_certificate_type"),
        HostilePayment("buyer email NULL", 2, now - dt.timedelta(hours=1), buyer=None,
                       outcome="wait:empty_email"),
        HostilePayment("buyer email HTML", 2, now - dt.timedelta(hours=1),
                       buyer="<script>alert(1)</script>@x.com", outcome="wait:invalid_email"),
        HostilePayment("buyer email 300+ characters", 2, now - dt.timedelta(hours=1),
                       buyer="b" * 300 + "@example.com", outcome="wait:email_too_long"),
        HostilePayment("buyer never took a test", 2, now - dt.timedelta(hours=1),
                       buyer="stranger@example.com", outcome="no_entry"),
        HostilePayment("paid in the future", 2, now + dt.timedelta(days=10),
                       buyer="vera@example.com", outcome="purchase:vera@example.com:language"),
    ]
    if vendor == "mysql":
        payments.append(HostilePayment("paid, zero date", 2, ZERO_DATE, buyer="anna@example.com",
                                       outcome="payment_time_missing"))
    return payments


# Ingredients of the seeded part.
_FRAGMENTS = ["", " ", "\t", "@", "@@", ".", "..", "<", ">", "\"", "'", ";", "--", "\x00",
              "ü", "пример", ".рф", "😀", "\u200b", "=", "+", "-", "\n"]
_PEOPLE = ["gleb@example.com", "dasha@example.net", "olga@пример.рф", "kim@example.co"]
_TESTS = [TEST_LANG, TEST_LANG_B, TEST_DUPLICATE_ID, TEST_OTHER, TEST_NULL_LANG,
          TEST_UNKNOWN_LANG, TEST_NO_ROW, None]


def _spelling(rng: random.Random, email: str) -> str:
    roll = rng.random()
    if roll < 0.3:
        return email.upper()
    if roll < 0.5:
        return rng.choice([" ", "\t", "  "]) + email + rng.choice(["", " ", "\n"])
    return email


def _kind(test_id: int | None) -> str:
    return "language" if test_id in LANGUAGE_TESTS else "non_language"


def hostile_generate(*, seed: int, now: dt.datetime, vendor: str, extra: int = 60) -> HostileData:
    """The hand-written rows, then `extra` seeded random ones built from the same parts."""
    rng = random.Random(seed)
    data = HostileData(languages=[LANG_A, LANG_B], tests=list(TEST_ROWS))
    data.results = _hand_written_results(now=now, vendor=vendor)
    seen = {
        (email_check(r.email).email, _kind(r.test_id))
        for r in data.results if r.outcome.startswith("entry:")
    }
    start = now - dt.timedelta(days=1)
    for n in range(extra):
        if rng.random() < 0.5:
            raw = _spelling(rng, rng.choice(_PEOPLE))
        else:
            base = rng.choice(_PEOPLE)
            cut = rng.randrange(len(base) + 1)
            raw = base[:cut] + rng.choice(_FRAGMENTS) + base[cut:]
        test_id = rng.choice(_TESTS)
        completed = rng.choice([start + dt.timedelta(minutes=n), None])
        check = email_check(raw)
        if not check.ok:
            outcome = f"wait:{check.reason}"
        elif test_id is None:
            outcome = "wait:no_test_id"
        elif completed is None:
            outcome = "wait:no_completion_time"
        elif (check.email, _kind(test_id)) in seen:
            outcome = DUPLICATE
        else:
            seen.add((check.email, _kind(test_id)))
            outcome = _entry(_kind(test_id))
        data.results.append(HostileResult(f"random #{n}", raw, test_id, completed, outcome))
    data.payments = _hand_written_payments(now=now, vendor=vendor)
    return data


# --- loading ---------------------------------------------------------------------------------

PAYMENT_IDS_FROM = 5_000_000

# Wide enough for the 300+ character addresses; short enough for an index on utf8mb4.
WIDE_EMAIL = 700


def modx_email_columns_widen(*, alias: str = MODX_ALIAS) -> None:
    """MariaDB only: the stand-in tables have VARCHAR(255) emails, which a strict server
    will not fill with 300 characters. A MODX installation with a wider column (or one
    that truncated silently) is what the long rows stand for. An ALTER commits, so only
    transactional tests may call this; modx_email_columns_restore undoes it."""
    if connections[alias].vendor != "mysql":
        return
    with connections[alias].cursor() as cursor:
        cursor.execute(f"ALTER TABLE {modx.TestResult._meta.db_table} "
                       f"MODIFY Email VARCHAR({WIDE_EMAIL}) NULL")
        cursor.execute(f"ALTER TABLE {modx.CertUser._meta.db_table} "
                       f"MODIFY email VARCHAR({WIDE_EMAIL}) NULL")


def modx_email_columns_restore(*, alias: str = MODX_ALIAS) -> None:
    if connections[alias].vendor != "mysql":
        return
    with connections[alias].cursor() as cursor:
        cursor.execute(f"ALTER TABLE {modx.TestResult._meta.db_table} "
                       "MODIFY Email VARCHAR(255) NULL")
        cursor.execute(f"ALTER TABLE {modx.CertUser._meta.db_table} "
                       "MODIFY email VARCHAR(255) NULL")


@dataclass
class Loaded:
    """MODX ids of what hostile_load wrote, by label."""

    result_ids: dict[str, int] = field(default_factory=dict)
    payment_ids: dict[str, int] = field(default_factory=dict)

    @property
    def first_result_id(self) -> int:
        return min(self.result_ids.values())


def hostile_load(data: HostileData, *, alias: str = MODX_ALIAS) -> Loaded:
    """Write the rows; zero dates through SQL, as the ORM cannot express them."""
    loaded = Loaded()
    zero_results: list[int] = []
    zero_payments: list[int] = []
    with modx_writes_allowed():
        modx.TestLanguage.objects.using(alias).bulk_create(
            modx.TestLanguage(id=lang) for lang in data.languages
        )
        modx.Test.objects.using(alias).bulk_create(
            modx.Test(test_id=test_id, lang_id=lang_id) for test_id, lang_id in data.tests
        )
        for row in data.results:
            result = modx.TestResult.objects.using(alias).create(
                email=row.email, test_id=row.test_id, status=1,
                completed_at=None if row.completed_at in (None, ZERO_DATE) else row.completed_at,
            )
            loaded.result_ids[row.label] = result.id
            if row.completed_at == ZERO_DATE:
                zero_results.append(result.id)

        cert_tests = {
            cert_type: modx.CertTest.objects.using(alias).create(type=cert_type)
            for cert_type in {p.cert_type for p in data.payments if p.cert_type is not None}
        }
        next_missing = 10_000_000
        # Payment ids far above the result ids: run items name both by source_id.
        next_payment_id = PAYMENT_IDS_FROM
        for payment in data.payments:
            next_payment_id += 1
            if payment.result_missing:
                result_id = next_missing
                next_missing += 1
            else:
                if payment.user_missing:
                    user_id = next_missing
                    next_missing += 1
                else:
                    user_id = modx.CertUser.objects.using(alias).create(email=payment.buyer).id
                if payment.cert_type is None:
                    test_id = next_missing
                    next_missing += 1
                else:
                    test_id = cert_tests[payment.cert_type].id
                result_id = modx.CertResult.objects.using(alias).create(
                    user_id=user_id, test_id=test_id
                ).id
            row = modx.CertPayment.objects.using(alias).create(
                id=next_payment_id, result_id=result_id, status_id=payment.status_id,
                paid_at=None if payment.paid_at in (None, ZERO_DATE) else payment.paid_at,
            )
            loaded.payment_ids[payment.label] = row.id
            if payment.paid_at == ZERO_DATE:
                zero_payments.append(row.id)

    if zero_results or zero_payments:
        with connections[alias].cursor() as cursor:
            for result_id in zero_results:
                cursor.execute(
                    f"UPDATE {modx.TestResult._meta.db_table} "
                    "SET Datep = '0000-00-00 00:00:00' WHERE Id = %s", [result_id]
                )
            for payment_id in zero_payments:
                cursor.execute(
                    f"UPDATE {modx.CertPayment._meta.db_table} "
                    "SET datetime_payment = '0000-00-00 00:00:00' WHERE id = %s", [payment_id]
                )
    return loaded
