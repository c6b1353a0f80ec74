"""Properties that must hold for every input, not just the examples we thought of.

Email normalisation (funnels.emails) decides who a person is; the test-kind resolver and
the entry planner decide which funnel they go to and whether they go there twice.
Hypothesis generates the inputs; a failing example is shrunk and printed.
"""

from __future__ import annotations

import datetime as dt
import re
import string

import pytest
from django.db import transaction
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from funnels.emails import MAX_LENGTH, Reason, email_check, email_normalize
from funnels.models import Funnel, FunnelEntry, SyncRun
from funnels.modx import models as modx
from funnels.selectors.candidates import (
    KIND_LANGUAGE,
    KIND_NON_LANGUAGE,
    Candidate,
    KindResolver,
)
from funnels.services.entries import EntryPlanner
from funnels.services.results import candidate_waiting
from funnels.routers import MODX_ALIAS, modx_writes_allowed

# CI runs the suite twice within a time budget: enough examples to find the usual
# mistakes, no deadline because a shared 2-core machine has slow moments.
PURE = settings(max_examples=300, deadline=None)
WITH_DB = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# What an accepted address looks like, written independently of funnels.emails: a dot-atom
# local part of the RFC 5322 atext characters, then two or more LDH labels (ASCII only,
# punycode included), the last one not all digits.
_ATEXT = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
ACCEPTED_SHAPE = re.compile(
    rf"{_ATEXT}+(?:\.{_ATEXT}+)*@(?:{_LABEL}\.)+{_LABEL}", re.ASCII
)

# Characters from every corner that addresses typed into a web form contain.
HOSTILE_CHARS = (
    string.ascii_letters + string.digits + "@.-_+'\"<>()[];:,\\ \t\r\n\x00"
    + "üßİıﬀЖжпримеррф😀\u200b\u00ad\u202e\u00a0\u3000ｅｘ"
)
WHITESPACE = st.text(alphabet=" \t\r\n\u00a0\u3000\u2003", max_size=4)

local_parts = st.from_regex(
    re.compile(rf"{_ATEXT}{{1,20}}(?:\.{_ATEXT}{{1,10}}){{0,2}}", re.ASCII), fullmatch=True
)
ascii_labels = st.from_regex(re.compile(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?"), fullmatch=True)
unicode_labels = st.sampled_from(["пример", "münchen", "straße", "例え", "ελλάδα", "bücher"])
domains = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(st.one_of(ascii_labels, unicode_labels), min_size=1, max_size=3),
    st.sampled_from(["com", "org", "de", "рф", "xn--p1ai", "co"]),
)
plausible_emails = st.one_of(
    st.builds(lambda local, domain: f"{local}@{domain}", local_parts, domains),
    st.emails(),
)
any_text = st.one_of(
    st.text(alphabet=HOSTILE_CHARS, max_size=40),
    st.text(max_size=40),
    plausible_emails,
    st.builds(lambda a, b: a + b, plausible_emails, st.text(alphabet=HOSTILE_CHARS, max_size=5)),
    st.builds(lambda a, b: a + b, st.text(alphabet=HOSTILE_CHARS, max_size=5), plausible_emails),
)


def ascii_case_flipped(draw_flags: list[bool], text: str) -> str:
    """Flip the case of ASCII letters only: str.upper() on other scripts is not a
    change of case but of spelling (ß -> SS), which is another address."""
    flags = iter(draw_flags + [False] * len(text))
    return "".join(
        (c.swapcase() if next(flags) else c) if c.isascii() and c.isalpha() else c
        for c in text
    )


# --- email normalisation -----------------------------------------------------------------


@PURE
@given(any_text)
# Found while writing this file: `$` in the patterns matched before a trailing newline,
# so "a\n@x.com" was accepted and stored with the newline in it.
@example("a\n@example.com")
@example("a@example\n.com")
@example("  Anna@Example.COM \t")
@example("A@ПРИМЕР.РФ")
def test_a_valid_result_has_the_accepted_shape(raw):
    result = email_check(raw)
    if not result.ok:
        assert result.reason in {Reason.EMPTY, Reason.INVALID, Reason.TOO_LONG}
        return
    email = result.email
    assert ACCEPTED_SHAPE.fullmatch(email), email
    assert len(email) <= MAX_LENGTH
    assert len(email.rpartition("@")[0]) <= 64
    assert email.isascii()
    assert email == email.lower()
    assert not email.rpartition(".")[2].isdigit()


@PURE
@given(any_text)
@example("a\n@example.com")
@example("x@ｅｘａｍｐｌｅ.com")
def test_checking_a_checked_address_changes_nothing(raw):
    result = email_check(raw)
    if result.ok:
        assert email_check(result.email) == result


@PURE
@given(plausible_emails, st.lists(st.booleans(), max_size=80), WHITESPACE, WHITESPACE)
def test_case_of_ascii_letters_and_surrounding_space_do_not_matter(email, flips, before, after):
    typed = before + ascii_case_flipped(flips, email) + after
    assert email_check(typed) == email_check(email)
    assert email_normalize(typed) == email_normalize(email)


@PURE
@given(plausible_emails)
def test_an_internationalised_domain_and_its_punycode_are_one_person(email):
    result = email_check(email)
    if result.ok:
        local, _, domain = email.rpartition("@")
        assert email_check(f"{local}@{result.email.rpartition('@')[2]}").email == result.email


@PURE
@given(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=64),
       st.integers(min_value=MAX_LENGTH - 20, max_value=400))
def test_addresses_longer_than_254_are_refused_as_too_long(local, total):
    label = "d" * 50
    domain = ".".join([label] * (total // 51 + 1))
    email = f"{local}@{domain}.com"
    result = email_check(email)
    if len(email) > MAX_LENGTH:
        assert result.reason in {Reason.TOO_LONG, Reason.INVALID}
        assert not result.ok
    elif result.ok:
        assert len(result.email) <= MAX_LENGTH


# --- test kinds: language iff LangId is a simpletest_lang id -----------------------------

lang_ids = st.one_of(st.none(), st.integers(min_value=-2, max_value=8))
catalogues = st.tuples(
    st.sets(st.integers(min_value=1, max_value=6), max_size=4),  # simpletest_lang ids
    st.lists(st.tuples(st.integers(min_value=0, max_value=12), lang_ids), max_size=15),
    st.sets(st.integers(min_value=0, max_value=15), min_size=1, max_size=10),  # asked about
)


@pytest.mark.django_db(databases=["default", "modx"])
@WITH_DB
@given(catalogues)
def test_a_test_is_a_language_test_iff_one_of_its_rows_names_a_known_language(catalogue):
    languages, rows, asked = catalogue
    with transaction.atomic(using=MODX_ALIAS), modx_writes_allowed():
        modx.TestLanguage.objects.using(MODX_ALIAS).bulk_create(
            modx.TestLanguage(id=lang) for lang in sorted(languages)
        )
        modx.Test.objects.using(MODX_ALIAS).bulk_create(
            modx.Test(test_id=test_id, lang_id=lang_id) for test_id, lang_id in rows
        )
        kinds = KindResolver().kinds_for(asked)
        transaction.set_rollback(True, using=MODX_ALIAS)
    for test_id in asked:
        is_language = any(t == test_id and lang in languages for t, lang in rows)
        assert kinds[test_id] == (KIND_LANGUAGE if is_language else KIND_NON_LANGUAGE), (
            test_id, rows, languages,
        )


# --- the planner: never two entries for one person and funnel ---------------------------

NOW = dt.datetime(2026, 11, 28, 15, 30, tzinfo=dt.UTC)
PEOPLE = ["anna@example.com", "boris@example.org", "vera@xn--e1afmkfd.xn--p1ai", "gleb@example.de"]


@st.composite
def spellings(draw):
    """How a person of PEOPLE (or garbage) might appear in simpletest_users.Email."""
    person = draw(st.sampled_from(PEOPLE))
    if person.endswith("xn--p1ai") and draw(st.booleans()):
        person = "vera@пример.рф"
    choice = draw(st.integers(min_value=0, max_value=9))
    if choice == 0:
        return draw(st.sampled_from([None, "", "   ", "not-an-email", "<b>@x.com"]))
    flips = draw(st.lists(st.booleans(), max_size=40))
    return draw(WHITESPACE) + ascii_case_flipped(flips, person) + draw(WHITESPACE)


SKEW = dt.timedelta(minutes=10)


@st.composite
def batches(draw):
    size = draw(st.integers(min_value=0, max_value=30))
    candidates = []
    for result_id in range(1, size + 1):
        test_id = draw(st.one_of(st.none(), st.sampled_from([1, 2, 21, 22])))
        kinds = st.sampled_from([KIND_LANGUAGE, KIND_NON_LANGUAGE])
        kind = None if test_id is None else draw(kinds)
        completed = draw(st.one_of(
            st.none(),
            st.just(NOW - dt.timedelta(hours=result_id)),
            st.just(NOW + dt.timedelta(minutes=5)),  # within the clock skew
            st.just(NOW + dt.timedelta(days=3)),
        ))
        candidates.append(Candidate(result_id=result_id, raw_email=draw(spellings()),
                                    test_id=test_id, completed_at=completed, kind=kind))
    cuts = sorted(draw(st.sets(st.integers(min_value=1, max_value=max(size, 1)), max_size=5)))
    chunks, start = [], 0
    for cut in [*cuts, size]:
        if cut > start:
            chunks.append(candidates[start:cut])
            start = cut
    return chunks


funnel_sets = st.lists(
    st.tuples(
        st.sampled_from(list(Funnel.TestKind)),
        st.sampled_from([Funnel.Reentry.ONCE, Funnel.Reentry.PER_TEST]),
        st.sampled_from([[], [1], [21, 22]]),
        st.booleans(),  # active
    ),
    min_size=1, max_size=3,
)
existing_entries = st.lists(
    st.tuples(st.sampled_from(PEOPLE), st.integers(min_value=0, max_value=2),
              st.sampled_from([1, 2, 21, 22])),
    max_size=4,
)


@pytest.mark.django_db
@WITH_DB
@given(batches(), funnel_sets, existing_entries)
def test_the_planner_never_adds_a_person_twice_to_a_funnel(chunks, funnel_specs, existing):
    funnels = [
        Funnel(slug=f"f{n}", name=f"f{n}", test_kind=kind, reentry=reentry, test_ids=ids,
               active=active, certificate_type=1)
        for n, (kind, reentry, ids, active) in enumerate(funnel_specs)
    ]
    run = SyncRun(started_at=NOW, dry_run=False)
    planner = EntryPlanner(funnels=funnels, list_ids={f.slug: 7 for f in funnels})
    with transaction.atomic():
        FunnelEntry.objects.bulk_create(
            FunnelEntry(email=email, funnel_type=f"f{funnel}", test_id=test_id, entered_at=NOW)
            for email, funnel, test_id in set(existing)
        )
        planned = []
        for chunk in chunks:
            # As the results source does: what cannot be decided yet waits, with a reason;
            # the planner decides the rest.
            waiting = {c.result_id: candidate_waiting(c, now=NOW, skew=SKEW) for c in chunk}
            assert all(w is None or w.reason for w in waiting.values())
            ready = [c for c in chunk if waiting[c.result_id] is None]
            entries, items, outcome = planner.plan_chunk(
                run=run, candidates=ready, now=NOW
            )
            planned += entries
            # Every decidable candidate is accounted for: added or skipped with a reason.
            assert all(i.reason for i in items if i.action == "skipped")
            assert {i.source_id for i in items} == {c.result_id for c in ready}
            assert outcome.results_read == len(ready)
        transaction.set_rollback(True)

    by_slug = {f.slug: f for f in funnels}
    seen: set[tuple] = set()
    prior = {(email, f"f{funnel}") for email, funnel, _ in existing}
    prior_per_test = {(email, f"f{funnel}", test_id) for email, funnel, test_id in existing}
    for entry in planned:
        funnel = by_slug[entry.funnel_type]
        assert funnel.active
        assert email_check(entry.email).email == entry.email
        assert entry.entered_at <= NOW
        assert entry.test_completed_at is not None
        if funnel.reentry == Funnel.Reentry.ONCE:
            key = (entry.email, entry.funnel_type)
            assert key not in prior, key
        else:
            key = (entry.email, entry.funnel_type, entry.test_id)
            assert key not in prior_per_test, key
        assert key not in seen, key
        seen.add(key)
