import pytest
from django.db import connections

from funnels.models import FunnelEntry
from funnels.modx.models import TestResult
from funnels.tests.factories import TestResultFactory
from funnels.routers import ModxRouter, ModxWriteRefused, modx_writes_allowed

pytestmark = pytest.mark.django_db(databases=["default", "modx"])


def test_modx_models_read_from_the_modx_alias():
    router = ModxRouter()
    assert router.db_for_read(TestResult) == "modx"
    assert router.db_for_read(FunnelEntry) == "default"


def test_writing_a_modx_row_is_refused():
    with pytest.raises(ModxWriteRefused, match="read only"):
        TestResult.objects.create(email="x@example.com", test_id=1)
    assert TestResult.objects.count() == 0


def test_bulk_and_queryset_writes_to_modx_are_refused():
    TestResultFactory(email="a@example.com")
    with pytest.raises(ModxWriteRefused):
        TestResult.objects.filter(email="a@example.com").update(status=9)
    with pytest.raises(ModxWriteRefused):
        TestResult.objects.filter(email="a@example.com").delete()
    assert TestResult.objects.get().status == 1


def test_writes_allowed_only_inside_the_context():
    with modx_writes_allowed():
        TestResult.objects.create(email="ok@example.com", test_id=1)
    with pytest.raises(ModxWriteRefused):
        TestResult.objects.create(email="again@example.com", test_id=1)
    assert list(TestResult.objects.values_list("email", flat=True)) == ["ok@example.com"]


def test_no_migration_may_touch_the_modx_database():
    router = ModxRouter()
    assert router.allow_migrate("modx", "funnels") is False
    assert router.allow_migrate("modx", "auth") is False
    assert router.allow_migrate("default", "modx", model_name="testresult") is False
    assert router.allow_migrate("default", "funnels") is True


def test_modx_test_database_holds_only_modx_tables():
    with connections["modx"].cursor() as cursor:
        tables = set(connections["modx"].introspection.table_names(cursor))
    assert "funnel_entries" not in tables
    assert "django_migrations" not in tables
    assert {"simpletest_users", "modx_cert_payment"} <= tables
