"""Unmanaged models of the MODX tables the funnel job reads.

Only the columns we use are modelled (production tables have more). Column names keep
MODX's spelling through db_column; table names come from settings so that a site with
another prefix can be read. Relations are declared without database constraints: MODX
has none, and rows may point at rows that do not exist.

Datetimes here are naive in the MODX server's zone; DATABASES["modx"]["TIME_ZONE"] makes
Django read them as aware datetimes in that zone.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

SIMPLETEST = settings.SIMPLETEST_TABLE_PREFIX
MODX = settings.MODX_TABLE_PREFIX

CERT_TYPE_LANGUAGE = 1
CERT_TYPE_NON_LANGUAGE = 2
PAYMENT_STATUS_PAID = 2


class TestLanguage(models.Model):
    id = models.AutoField(primary_key=True, db_column="Id")

    class Meta:
        managed = False
        db_table = f"{SIMPLETEST}lang"


class Test(models.Model):
    newid = models.AutoField(primary_key=True, db_column="newid")
    test_id = models.IntegerField(db_column="Id", db_index=True)
    lang_id = models.IntegerField(db_column="LangId", null=True, default=0, db_index=True)

    class Meta:
        managed = False
        db_table = f"{SIMPLETEST}test"


class TestResult(models.Model):
    """One row per test taken (MODX calls the table "users")."""

    id = models.AutoField(primary_key=True, db_column="Id")
    email = models.CharField(max_length=255, null=True, db_column="Email")
    test_id = models.IntegerField(null=True, db_column="TestId", db_index=True)
    completed_at = models.DateTimeField(null=True, db_column="Datep", db_index=True)
    status = models.IntegerField(null=True, db_column="Status")

    class Meta:
        managed = False
        db_table = f"{SIMPLETEST}users"


class CertUser(models.Model):
    id = models.AutoField(primary_key=True)
    email = models.CharField(max_length=255, null=True, db_index=True)

    class Meta:
        managed = False
        db_table = f"{MODX}cert_users"


class CertTest(models.Model):
    id = models.AutoField(primary_key=True)
    type = models.IntegerField()

    class Meta:
        managed = False
        db_table = f"{MODX}cert_test"


class CertResult(models.Model):
    id = models.AutoField(primary_key=True)
    user = models.ForeignKey(
        CertUser, db_column="id_user", db_constraint=False,
        on_delete=models.DO_NOTHING, related_name="+",
    )
    test = models.ForeignKey(
        CertTest, db_column="id_test", db_constraint=False,
        on_delete=models.DO_NOTHING, related_name="+",
    )

    class Meta:
        managed = False
        db_table = f"{MODX}cert_result"


class CertPayment(models.Model):
    id = models.AutoField(primary_key=True)
    result = models.ForeignKey(
        CertResult, db_column="id_result", db_constraint=False,
        on_delete=models.DO_NOTHING, related_name="+",
    )
    status_id = models.IntegerField(db_column="id_status")
    paid_at = models.DateTimeField(null=True, db_column="datetime_payment")

    class Meta:
        managed = False
        db_table = f"{MODX}cert_payment"

    @property
    def is_paid(self) -> bool:
        return self.status_id == PAYMENT_STATUS_PAID and self.paid_at is not None


MODX_MODELS = (TestLanguage, Test, TestResult, CertUser, CertTest, CertResult, CertPayment)
