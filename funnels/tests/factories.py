"""factory_boy factories for our rows and for MODX rows (written with the router's leave)."""

from __future__ import annotations

import datetime as dt

import factory
from django.utils import timezone

from funnels.models import Funnel, FunnelEntry, SyncRun, SyncRunItem
from funnels.modx import models as modx
from funnels.services.entries import entries_previous_refresh
from funnels.routers import MODX_ALIAS, modx_writes_allowed

BASE_TIME = dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.timezone.utc)


class ModxFactory(factory.django.DjangoModelFactory):
    class Meta:
        abstract = True
        database = MODX_ALIAS

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        with modx_writes_allowed():
            return super()._create(model_class, *args, **kwargs)


class TestLanguageFactory(ModxFactory):
    class Meta:
        model = modx.TestLanguage

    id = factory.Sequence(lambda n: n + 1)


class TestFactory(ModxFactory):
    class Meta:
        model = modx.Test

    test_id = factory.Sequence(lambda n: n + 100)
    lang_id = 0


class TestResultFactory(ModxFactory):
    class Meta:
        model = modx.TestResult

    email = factory.Sequence(lambda n: f"taker{n}@example.com")
    test_id = 100
    completed_at = factory.Sequence(lambda n: BASE_TIME + dt.timedelta(minutes=n))
    status = 1


class CertUserFactory(ModxFactory):
    class Meta:
        model = modx.CertUser

    email = factory.Sequence(lambda n: f"buyer{n}@example.com")


class CertTestFactory(ModxFactory):
    class Meta:
        model = modx.CertTest

    type = modx.CERT_TYPE_LANGUAGE


class CertResultFactory(ModxFactory):
    class Meta:
        model = modx.CertResult

    user = factory.SubFactory(CertUserFactory)
    test = factory.SubFactory(CertTestFactory)


class CertPaymentFactory(ModxFactory):
    class Meta:
        model = modx.CertPayment

    result = factory.SubFactory(CertResultFactory)
    status_id = modx.PAYMENT_STATUS_PAID
    paid_at = factory.Sequence(lambda n: BASE_TIME + dt.timedelta(hours=n + 1))


def funnel_get(slug: str) -> Funnel:
    return Funnel.objects.get(slug=slug)


class SyncRunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SyncRun

    started_at = factory.LazyFunction(timezone.now)
    finished_at = factory.LazyAttribute(lambda o: o.started_at + dt.timedelta(seconds=3))
    status = SyncRun.Status.SUCCESS
    dry_run = False


class FunnelEntryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = FunnelEntry

    email = factory.Sequence(lambda n: f"entry{n}@example.com")
    funnel_type = "language"
    user_id = factory.Sequence(lambda n: n + 1)
    test_id = 100
    entered_at = factory.Sequence(lambda n: BASE_TIME + dt.timedelta(minutes=n))
    test_completed_at = factory.LazyAttribute(lambda o: o.entered_at)

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        entry = super()._create(model_class, *args, **kwargs)
        # Entries made one by one, in any order, link up as the sync engine's would.
        entries_previous_refresh(keys=[(entry.funnel_type, entry.email)])
        entry.refresh_from_db(fields=["previous_entered_at"])
        return entry


class SyncRunItemFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SyncRunItem

    run = factory.SubFactory(SyncRunFactory)
    action = SyncRunItem.Action.WOULD_ADD
    email = factory.Sequence(lambda n: f"item{n}@example.com")
    funnel_type = "language"
    test_id = 100
