"""Our own tables. Plain data: the behaviour lives in services and selectors."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.core.validators import MaxValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from funnels.brevo.attributes import (
    DEFAULT_FUNNEL_TYPE,
    DEFAULT_PURCHASED,
    DEFAULT_PURCHASED_AT,
    attribute_name_validate,
)


class Funnel(models.Model):
    class TestKind(models.TextChoices):
        LANGUAGE = "language", _("Language tests")
        NON_LANGUAGE = "non_language", _("Non-language tests")
        ANY = "any", _("Any test")

    class Reentry(models.TextChoices):
        ONCE = "once", _("Once per person")
        PER_TEST = "per_test", _("Once per person and test")

    slug = models.SlugField(_("slug"), max_length=50, unique=True)
    name = models.CharField(_("name"), max_length=200)
    brevo_list_id = models.PositiveIntegerField(_("Brevo list id"), null=True, blank=True)
    test_kind = models.CharField(
        _("qualifying tests"), max_length=20, choices=TestKind.choices
    )
    # Empty means every test of the kind; otherwise only these MODX test ids qualify.
    test_ids = models.JSONField(_("only these test ids"), default=list, blank=True)
    certificate_type = models.PositiveSmallIntegerField(
        _("certificate type"),
        help_text=_("modx_cert_test.type that counts as a conversion (1 language, 2 other)"),
    )
    reentry = models.CharField(
        _("re-entry rule"), max_length=20, choices=Reentry.choices, default=Reentry.ONCE
    )
    active = models.BooleanField(_("active"), default=True)
    # Someone who took a test long ago has not "just finished a test": older results
    # (an import, a re-inserted row, a wrong date) are not entered.
    max_age_days = models.PositiveIntegerField(
        _("maximum age of a result (days)"), null=True, blank=True,
        help_text=_("Results completed longer ago are not entered. Empty: "
                    "FUNNELS_MAX_AGE_DAYS."),
    )
    # The Brevo contact attributes this funnel writes (funnels/brevo/attributes.py): a
    # funnel with names of its own gives a person in two funnels a true value for each.
    attribute_funnel_type = models.CharField(
        _("funnel attribute"), max_length=50, default=DEFAULT_FUNNEL_TYPE,
        validators=[attribute_name_validate],
        help_text=_("Brevo text attribute that gets the funnel's slug."),
    )
    attribute_purchased = models.CharField(
        _("purchase attribute"), max_length=50, default=DEFAULT_PURCHASED,
        validators=[attribute_name_validate],
        help_text=_("Brevo yes/no attribute: has the person bought this funnel's certificate."),
    )
    attribute_purchased_at = models.CharField(
        _("purchase date attribute"), max_length=50, default=DEFAULT_PURCHASED_AT,
        validators=[attribute_name_validate],
        help_text=_("Brevo date attribute: when; emptied in Brevo when the purchase is "
                    "withdrawn."),
    )
    # Control group (services/control_groups.py): this percentage of the people entered
    # is held out from Brevo, to measure what the emails add. Changed only through
    # funnel_control_share_set, which starts a new period (ControlPeriod) each time.
    control_share = models.PositiveSmallIntegerField(
        _("control group, %"), default=0, validators=[MaxValueValidator(50)],
        help_text=_("Share of new entries held out from Brevo to measure the funnel's "
                    "lift (0-50). 0: everyone gets the emails."),
    )
    control_period = models.PositiveIntegerField(_("control period"), default=0)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        ordering = ["slug"]
        verbose_name = _("funnel")
        verbose_name_plural = _("funnels")
        permissions = [
            ("change_control_share", _("Can change a funnel's control group share")),
        ]

    def __str__(self) -> str:
        from funnels.labels import funnel_name_display  # labels needs no model

        return funnel_name_display(self.name)


class SyncStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    SYNCED = "synced", _("Synced")
    FAILED = "failed", _("Failed")
    # Recorded, but kept from Brevo by the flood guard until somebody releases it.
    HELD = "held", _("Held back (flood guard)")
    # In the funnel's control group: recorded, purchases tracked, never sent to Brevo.
    # No writer ever moves a row out of it (the outbox only reads pending and failed).
    CONTROL = "control", _("Not sent (control group)")
    # Not sent, never again: the Brevo audit found the person blacklisted, or unsubscribed
    # from this funnel's list (a person's opt-out always wins).
    OPTED_OUT = "opted_out", _("Not sent: opted out in Brevo")


class ExperimentGroup(models.TextChoices):
    TREATMENT = "treatment", _("Treatment")
    CONTROL = "control", _("Control")


class ControlPeriod(models.Model):
    """One share of a funnel's control group, from when it was set until the next change.
    Period 0 (share 0) is implicit: a funnel has rows only once someone set a share."""

    funnel = models.ForeignKey(
        Funnel, on_delete=models.CASCADE, related_name="control_periods",
        verbose_name=_("funnel"),
    )
    number = models.PositiveIntegerField(_("period"))
    share = models.PositiveSmallIntegerField(_("control group, %"))
    started_at = models.DateTimeField(_("started at"))
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+", verbose_name=_("started by"),
    )

    class Meta:
        ordering = ["funnel", "number"]
        verbose_name = _("control period")
        verbose_name_plural = _("control periods")
        constraints = [
            models.UniqueConstraint(fields=["funnel", "number"], name="uk_control_period"),
        ]

    def __str__(self) -> str:
        return f"{self.funnel_id}#{self.number}: {self.share}%"


class BrevoState(models.TextChoices):
    """A person's place in a funnel's Brevo list, as the last audit read it
    (services/brevo_audit.py). Empty: not audited yet (or never sent)."""

    IN_LIST = "in_list", _("In the list")
    UNSUBSCRIBED = "unsubscribed_from_list", _("Unsubscribed from the list")
    BLACKLISTED = "blacklisted", _("Blacklisted (unsubscribed from all emails)")
    MISSING = "missing", _("Missing from the list")


# A person's opt-out always wins: entries in these states are never sent to their list again.
OPTED_OUT_STATES = (BrevoState.UNSUBSCRIBED, BrevoState.BLACKLISTED)


class FunnelEntry(models.Model):
    """A person's entry into a funnel; the table keeps the earlier tool's name and columns.

    `email` is normalised (trimmed, lower-case). `user_id` is the MODX simpletest_users.Id
    the entry came from. `test_id` is the MODX test id; it is never NULL in rows we write
    (0 marks a row adopted from the earlier tool whose test was unknown).

    Brevo state is an outbox on the row: every change that Brevo must hear about bumps
    `sync_revision` and sets `sync_status` to pending; a send marks the row synced only if
    the revision it sent is still the current one (compare-and-set), so a purchase that
    arrives during a send is never lost.
    """

    email = models.CharField(_("email"), max_length=255)
    funnel_type = models.CharField(_("funnel"), max_length=50)
    user_id = models.IntegerField(_("MODX result id"), null=True, blank=True)
    test_id = models.IntegerField(_("test id"), null=True)
    entered_at = models.DateTimeField(_("entered at"))
    certificate_purchased = models.BooleanField(_("certificate purchased"), default=False)
    certificate_purchased_at = models.DateTimeField(
        _("certificate purchased at"), null=True, blank=True
    )
    # The entered_at of the same person's previous entry in the same funnel (NULL for
    # their first), kept by the writers (services.entries, adoption.legacy): a report then
    # finds each person's first entry in a period from that entry alone, without grouping
    # every entry of the period per person.
    previous_entered_at = models.DateTimeField(_("previous entry at"), null=True, blank=True)

    # Added by Testizer Funnels.
    test_completed_at = models.DateTimeField(_("test completed at"), null=True, blank=True)
    payment_id = models.IntegerField(_("payment id"), null=True, blank=True)
    sync_status = models.CharField(
        _("Brevo sync"), max_length=10, choices=SyncStatus.choices, default=SyncStatus.PENDING
    )
    sync_revision = models.PositiveIntegerField(_("sync revision"), default=1)
    synced_revision = models.PositiveIntegerField(_("synced revision"), default=0)
    sync_attempts = models.PositiveIntegerField(_("sync attempts"), default=0)
    sync_last_error = models.TextField(_("last sync error"), blank=True, default="")
    sync_next_attempt_at = models.DateTimeField(_("next attempt at"), null=True, blank=True)
    synced_at = models.DateTimeField(_("synced at"), null=True, blank=True)
    # The experiment (services/control_groups.py): the group and the funnel's control
    # period the entry was assigned in, and when the funnel started for this entry (the
    # first confirmation by Brevo for treatment, the assigning run for control).
    # Database defaults too: a row another writer inserts (the earlier tool, the
    # benchmark's loader) without these columns is treatment in period 0.
    experiment_group = models.CharField(
        _("group"), max_length=10, choices=ExperimentGroup.choices,
        default=ExperimentGroup.TREATMENT, db_default=ExperimentGroup.TREATMENT,
    )
    control_period = models.PositiveIntegerField(
        _("control period"), default=0, db_default=0
    )
    funnel_started_at = models.DateTimeField(_("funnel started at"), null=True, blank=True)
    # What the Brevo audit last read for this person in this funnel's list, and when.
    # A database default too: a writer that only knows the earlier tool's columns (the
    # benchmark's loader, the earlier tool's cron) still inserts.
    brevo_state = models.CharField(
        _("Brevo state"), max_length=30, choices=BrevoState.choices, blank=True, default="",
        db_default="",
    )
    brevo_seen_at = models.DateTimeField(_("Brevo state seen at"), null=True, blank=True)
    run = models.ForeignKey(
        "SyncRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        verbose_name=_("created by run"),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        db_table = "funnel_entries"
        ordering = ["-entered_at", "-id"]
        verbose_name = _("funnel entry")
        verbose_name_plural = _("funnel entries")
        constraints = [
            models.UniqueConstraint(
                fields=["email", "funnel_type", "test_id"],
                name="uk_funnel_entry_email_type_test",
            ),
        ]
        indexes = [
            models.Index(fields=["email", "funnel_type"], name="idx_email_funnel"),
            models.Index(fields=["user_id", "test_id"], name="idx_user_test"),
            # The outbox: failed entries whose next attempt has come...
            models.Index(
                fields=["sync_status", "sync_next_attempt_at", "id"], name="idx_fe_outbox"
            ),
            # ...and pending entries in id order (a range on this index stays cheap even
            # right after a run marked many rows synced, when InnoDB's statistics make the
            # optimiser give up on idx_fe_outbox).
            models.Index(fields=["sync_status", "id"], name="idx_fe_due"),
            models.Index(fields=["entered_at"], name="idx_fe_entered"),
            models.Index(fields=["payment_id"], name="idx_fe_payment"),
            # Dashboard: purchases today / this week.
            models.Index(fields=["certificate_purchased_at"], name="idx_fe_purchased"),
            # Reports: a period's first entries per person, everything the count needs
            # read from the index (docs/reports.md), the funnel's start included (counting
            # from it, and "bought before the funnel started").
            models.Index(
                fields=[
                    "funnel_type", "entered_at", "previous_entered_at",
                    "certificate_purchased_at", "test_id", "funnel_started_at",
                ],
                name="idx_fe_cohort",
            ),
            # The lift (reports/lift.py): a funnel's period, its groups and both origins,
            # counted from the index alone.
            models.Index(
                fields=[
                    "funnel_type", "control_period", "entered_at", "experiment_group",
                    "previous_entered_at", "funnel_started_at", "certificate_purchased_at",
                ],
                name="idx_fe_lift",
            ),
            # The audit's per-page lookups and counts, the admin filter, the drift count.
            models.Index(fields=["funnel_type", "brevo_state", "email"], name="idx_fe_brevo"),
        ]

    def __str__(self) -> str:
        return f"{self.funnel_type}:{self.test_id}"


class SyncRun(models.Model):
    class Status(models.TextChoices):
        RUNNING = "running", _("Running")
        SUCCESS = "success", _("Success")
        PARTIAL = "partial", _("Finished with failures")
        FAILED = "failed", _("Failed")
        CRASHED = "crashed", _("Crashed (found dead)")
        # The flood guard held this run's new contacts back from Brevo (release by hand).
        HELD = "held", _("Held: too many new contacts")
        # A scheduled run found the schedule paused in the admin and did nothing.
        PAUSED = "paused", _("Skipped: schedule paused")

    class Trigger(models.TextChoices):
        CRON = "cron", _("Schedule")
        MANUAL = "manual", _("By hand")
        ADMIN = "admin", _("Admin")

    started_at = models.DateTimeField(_("started at"), db_index=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    heartbeat_at = models.DateTimeField(_("last heartbeat"), null=True, blank=True)
    status = models.CharField(
        _("status"), max_length=10, choices=Status.choices, default=Status.RUNNING
    )
    dry_run = models.BooleanField(_("dry run"))
    trigger = models.CharField(
        _("trigger"), max_length=10, choices=Trigger.choices, default=Trigger.MANUAL
    )
    hostname = models.CharField(_("host"), max_length=255, blank=True, default="")
    pid = models.PositiveIntegerField(_("process id"), null=True, blank=True)
    as_of = models.DateTimeField(_("as of"), null=True, blank=True)

    results_read = models.PositiveIntegerField(_("test results read"), default=0)
    entries_added = models.PositiveIntegerField(_("entries added"), default=0)
    skipped = models.PositiveIntegerField(_("skipped"), default=0)
    skipped_by_reason = models.JSONField(_("skipped by reason"), default=dict, blank=True)
    contacts_sent = models.PositiveIntegerField(_("contacts sent"), default=0)
    contacts_failed = models.PositiveIntegerField(_("contacts failed"), default=0)
    payments_read = models.PositiveIntegerField(_("payments read"), default=0)
    purchases_found = models.PositiveIntegerField(_("purchases found"), default=0)
    purchases_revoked = models.PositiveIntegerField(_("purchases revoked"), default=0)
    # Contacts this run kept from Brevo (flood guard); their entries wait, status held.
    contacts_held = models.PositiveIntegerField(_("contacts held"), default=0)
    # MODX rows this run put on a recheck list, by reason ("payment:" for payments), and
    # rows it dropped from one after the recheck period (in skipped_by_reason).
    waiting_by_reason = models.JSONField(_("waiting by reason"), default=dict, blank=True)
    brevo_requests = models.PositiveIntegerField(_("Brevo requests"), default=0)
    ratelimit_remaining = models.IntegerField(_("rate-limit headroom"), null=True, blank=True)
    ratelimit_limit = models.IntegerField(_("rate limit"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True, default="")

    class Meta:
        ordering = ["-started_at", "-id"]
        verbose_name = _("sync run")
        verbose_name_plural = _("sync runs")
        indexes = [models.Index(fields=["status", "started_at"], name="idx_run_status")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.get_status_display()}"

    @property
    def duration(self):
        if self.finished_at is None:
            return None
        return self.finished_at - self.started_at


class SyncRunItem(models.Model):
    """One line of a run's plan (dry run) or outcome (live run)."""

    class Action(models.TextChoices):
        WOULD_ADD = "would_add", _("Would add")
        ADDED = "added", _("Added")
        SKIPPED = "skipped", _("Skipped")
        SENT = "sent", _("Sent to Brevo")
        FAILED = "failed", _("Brevo failed")
        PURCHASE = "purchase", _("Purchase")
        WOULD_PURCHASE = "would_purchase", _("Would mark purchase")
        PURCHASE_REVOKED = "purchase_revoked", _("Purchase revoked")
        # Could not be decided yet: on the recheck list (reason says why).
        WAITING = "waiting", _("Waiting for a recheck")
        HELD = "held", _("Held back (flood guard)")
        # Due for Brevo but not sent by this run (it stopped, or Brevo did not confirm):
        # the next run sends them.
        DEFERRED = "deferred", _("Left for a later run")

    run = models.ForeignKey(SyncRun, on_delete=models.CASCADE, related_name="items")
    action = models.CharField(_("action"), max_length=20, choices=Action.choices)
    reason = models.CharField(_("reason"), max_length=50, blank=True, default="")
    email = models.CharField(_("email"), max_length=255, blank=True, default="")
    funnel_type = models.CharField(_("funnel"), max_length=50, blank=True, default="")
    test_id = models.IntegerField(_("test id"), null=True, blank=True)
    source_id = models.IntegerField(_("MODX row id"), null=True, blank=True)
    entry = models.ForeignKey(
        FunnelEntry, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    detail = models.TextField(_("detail"), blank=True, default="")

    class Meta:
        ordering = ["id"]
        verbose_name = _("run item")
        verbose_name_plural = _("run items")
        # explain_funnel looks up what runs decided about a person's MODX results.
        indexes = [models.Index(fields=["source_id"], name="idx_runitem_source")]


class SyncState(models.Model):
    """Watermarks: the last MODX row id each incremental reader has fully handled, and the
    ids below it that were missing when it moved past them (see services/watermarks.py)."""

    key = models.CharField(_("key"), max_length=50, unique=True)
    last_id = models.BigIntegerField(_("last MODX id"), default=0)
    # {first seen missing (ISO time, UTC): [MODX ids]}: grouped by time because every gap
    # a run finds shares that run's time, which keeps a long list small to rewrite.
    gaps = models.JSONField(_("gaps"), default=dict, blank=True)
    run = models.ForeignKey(
        SyncRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        verbose_name=_("run"),
    )
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        # "Watermark" is the code's word; the operator reads how far the job has read.
        verbose_name = _("MODX reading position")
        verbose_name_plural = _("MODX reading positions")

    def __str__(self) -> str:
        return f"{self.key}={self.last_id}"


class RecheckRow(models.Model):
    """A MODX row that could not be decided when it was read (no or invalid email, no
    completion time, a missing joined row, ...) and is read again by every run until it
    can be, or until `recheck_until` (services/recheck.py)."""

    source = models.CharField(_("source"), max_length=50)  # the reader's watermark key
    modx_id = models.BigIntegerField(_("MODX row id"))
    reason = models.CharField(_("reason"), max_length=50)
    # As MODX has it now, trimmed and lower-cased (not validated): explain_funnel finds a
    # person's waiting rows by it.
    email = models.CharField(_("email"), max_length=255, blank=True, default="")
    # A digest of the columns the decision reads: a re-read that finds the same digest
    # (and no time-dependent reason) changes nothing and costs nothing more.
    fingerprint = models.CharField(max_length=32)
    # MODX's own digest of the same columns (funnels/modx/digests.py), read in the statement
    # that gave `fingerprint`; NULL until known (and always on SQLite). A run compares the
    # list's count and sum of digests with MODX's in one query, and reads the rows only when
    # they differ.
    digest = models.BigIntegerField(null=True, blank=True)
    first_seen_at = models.DateTimeField(_("first seen at"))
    recheck_until = models.DateTimeField(_("recheck until"))
    run = models.ForeignKey(
        SyncRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        verbose_name=_("run"),
    )

    class Meta:
        verbose_name = _("row waiting for a recheck")
        verbose_name_plural = _("rows waiting for a recheck")
        constraints = [
            models.UniqueConstraint(fields=["source", "modx_id"], name="uk_recheck_source_id"),
        ]
        indexes = [
            models.Index(fields=["source", "reason"], name="idx_recheck_reason"),
            models.Index(fields=["email"], name="idx_recheck_email"),
        ]

    def __str__(self) -> str:
        return f"{self.source}#{self.modx_id}: {self.reason}"


class RuntimeSettings(models.Model):
    """The one row of settings the admin may change while the job runs."""

    SINGLETON_ID = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON_ID)
    dry_run = models.BooleanField(_("dry run"), default=True)
    # The admin's pause switch: scheduled runs (--trigger cron) record a `paused` run and
    # stop at once; runs by hand with --ignore-pause still work.
    schedule_paused = models.BooleanField(_("schedule paused"), default=False)
    schedule_paused_at = models.DateTimeField(_("schedule paused at"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )

    class Meta:
        verbose_name = _("runtime settings")
        verbose_name_plural = _("runtime settings")
        permissions = [
            ("change_dry_run", _("Can switch between dry run and live")),
            ("release_held", _("Can release contacts held by the flood guard")),
            ("pause_schedule", _("Can pause and resume the schedule")),
        ]

    def __str__(self) -> str:
        return str(_("Mode: dry run") if self.dry_run else _("Mode: live"))


class PaymentWatch(models.Model):
    """Payments seen unpaid (to notice when they become paid) or matched as paid (to notice
    when they stop being paid), re-read by primary key until they age out."""

    payment_id = models.IntegerField(unique=True)
    paid = models.BooleanField(default=False)
    first_seen_at = models.DateTimeField()
    recheck_until = models.DateTimeField(db_index=True)
    # When the purchase sync may read the payment again: young payments often, old ones
    # rarely, so a run re-reads only the few that are due. A row written without one (before
    # the column existed, or by a tool that does not know it) gets the database default,
    # long past: due now. Not NULL, so that "due" is one index range on every database.
    next_check_at = models.DateTimeField(
        _("next check at"), db_default=dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    )

    class Meta:
        verbose_name = _("watched payment")
        verbose_name_plural = _("watched payments")
        indexes = [
            # The due rows, most overdue first, read as one index range. It also holds what
            # the purchase sync reads of them, so the read never goes to the table and no
            # optimizer finds a full scan cheaper, however much of the list is due.
            models.Index(
                fields=["next_check_at", "payment_id", "paid", "recheck_until"],
                name="idx_watch_due",
            ),
        ]


class BrevoAudit(models.Model):
    """One read of the funnels' Brevo lists (services/brevo_audit.py), recorded like a run."""

    class Status(models.TextChoices):
        RUNNING = "running", _("Running")
        SUCCESS = "success", _("Success")
        PARTIAL = "partial", _("Stopped part-way (Brevo)")
        FAILED = "failed", _("Failed")
        CRASHED = "crashed", _("Crashed (found dead)")

    class Kind(models.TextChoices):
        FULL = "full", _("Full")
        INCREMENTAL = "incremental", _("Changes only")

    started_at = models.DateTimeField(_("started at"), db_index=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    status = models.CharField(
        _("status"), max_length=10, choices=Status.choices, default=Status.RUNNING
    )
    # Full when every list was read whole; a list whose count disagreed is read whole
    # inside an incremental audit too (see `lists`).
    kind = models.CharField(_("kind"), max_length=12, choices=Kind.choices)
    trigger = models.CharField(
        _("trigger"), max_length=10, choices=SyncRun.Trigger.choices,
        default=SyncRun.Trigger.MANUAL,
    )
    modified_since = models.DateTimeField(_("changes since"), null=True, blank=True)
    contacts_read = models.PositiveIntegerField(_("contacts read"), default=0)
    pages = models.PositiveIntegerField(_("pages read"), default=0)
    brevo_requests = models.PositiveIntegerField(_("Brevo requests"), default=0)
    states_changed = models.PositiveIntegerField(_("states changed"), default=0)
    in_list = models.PositiveIntegerField(_("in the list"), default=0)
    unsubscribed = models.PositiveIntegerField(_("unsubscribed from the list"), default=0)
    blacklisted = models.PositiveIntegerField(_("blacklisted"), default=0)
    missing = models.PositiveIntegerField(_("missing from the list"), default=0)
    # Contacts in a funnel's list that we never put there.
    strangers = models.PositiveIntegerField(_("contacts we did not add"), default=0)
    strangers_sample = models.JSONField(_("some of them"), default=list, blank=True)
    # {funnel slug: {list_id, kind, brevo_count, our_count, pages, strangers, error}}
    lists = models.JSONField(_("lists"), default=dict, blank=True)
    error = models.TextField(_("error"), blank=True, default="")

    class Meta:
        ordering = ["-started_at", "-id"]
        verbose_name = _("Brevo audit")
        verbose_name_plural = _("Brevo audits")
        permissions = [
            ("restore_missing", _("Can put people missing from their Brevo list back")),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.get_status_display()}"


class ProofCheck(models.Model):
    """The daily proof that nobody is lost (services/nobody_lost.py): MODX, our table and
    Brevo compared over the last FUNNELS_RECHECK_DAYS; one row per check."""

    class Status(models.TextChoices):
        RUNNING = "running", _("Running")
        SUCCESS = "success", _("Success")
        FAILED = "failed", _("Failed")

    started_at = models.DateTimeField(_("started at"), db_index=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    status = models.CharField(
        _("status"), max_length=10, choices=Status.choices, default=Status.RUNNING
    )
    window_from = models.DateTimeField(_("from"))
    window_to = models.DateTimeField(_("to"))
    results_read = models.PositiveIntegerField(_("test results read"), default=0)
    entries_read = models.PositiveIntegerField(_("entries read"), default=0)
    # {difference class: count}; all zero (or empty) is the goal, every day.
    counts = models.JSONField(_("differences by class"), default=dict, blank=True)
    error = models.TextField(_("error"), blank=True, default="")

    class Meta:
        ordering = ["-started_at", "-id"]
        verbose_name = _("proof that nobody is lost")
        verbose_name_plural = _("proofs that nobody is lost")

    def __str__(self) -> str:
        return f"#{self.pk} {self.get_status_display()}"

    @property
    def differences_total(self) -> int:
        return sum((self.counts or {}).values())


class ProofDifference(models.Model):
    """One difference a proof found, with the person's explanation (explain_funnel's)."""

    class Kind(models.TextChoices):
        SHOULD_BE_IN = "should_be_in", _("Should be in the funnel, is not")
        SHOULD_NOT_BE_IN = "should_not_be_in", _("Is in the funnel, should not be")
        NOT_SENT = "not_sent", _("In our table, never confirmed by Brevo")
        MISSING_IN_BREVO = "missing_in_brevo", _("In our table, missing in Brevo")
        BUYER_NOT_MARKED = "buyer_not_marked", _("Buyer not marked")
        MARKED_NOT_BUYER = "marked_not_buyer", _("Marked as a buyer, no paid certificate")

    proof = models.ForeignKey(ProofCheck, on_delete=models.CASCADE, related_name="differences")
    kind = models.CharField(_("class"), max_length=20, choices=Kind.choices)
    email = models.CharField(_("email"), max_length=255)
    funnel_type = models.CharField(_("funnel"), max_length=50)
    test_id = models.IntegerField(_("test id"), null=True, blank=True)
    modx_id = models.BigIntegerField(_("MODX row id"), null=True, blank=True)
    entry = models.ForeignKey(
        FunnelEntry, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    explanation = models.TextField(_("explanation"), blank=True, default="")

    class Meta:
        ordering = ["id"]
        verbose_name = _("difference")
        verbose_name_plural = _("differences")

    def __str__(self) -> str:
        return f"{self.kind}: {self.funnel_type}"


# --- The conversion report's rollup (services/report_rollup.py, reports/rollup.py) -------


class ReportRollup(models.Model):
    """Entries counted by everything the common conversion report asks of them: one row
    per funnel, local day of entry, local day of the person's previous entry, control
    period and group, whole hours to purchase and funnel phase. A year of a million
    entries is a few hundred thousand index rows less to read per report. Days are
    numbered from 1970-01-01 in the time zone of ReportRollupState (the site's)."""

    funnel_type = models.CharField(max_length=50)
    day = models.IntegerField()
    # NULL: the person's first entry in the funnel.
    previous_day = models.IntegerField(null=True)
    control_period = models.PositiveIntegerField()
    experiment_group = models.CharField(max_length=10)
    # Whole hours from entry to a purchase at or after it and at most 365 days (the
    # longest window) later; NULL otherwise.
    hours = models.PositiveIntegerField(null=True)
    # The purchase came a whole number of days after the entry: it counts on the last
    # day of a window of hours / 24 days ("exactly at the end still counts").
    whole_day = models.BooleanField()
    # 0 bought at or after the funnel's start or not at all, 1 bought before it, 2 the
    # funnel never started (reports/lift.py's phases).
    phase = models.PositiveSmallIntegerField()
    entries = models.PositiveIntegerField()

    class Meta:
        db_table = "report_rollup"
        indexes = [
            models.Index(
                fields=["funnel_type", "day", "previous_day", "hours", "whole_day", "phase",
                        "control_period", "experiment_group", "entries"],
                name="idx_rollup_report",
            ),
            # A refresh deletes days, whatever the funnel.
            models.Index(fields=["day"], name="idx_rollup_day"),
        ]


class ReportRollupDirty(models.Model):
    """A local day (numbered as ReportRollup.day) whose entries changed since the rollup
    counted them: the report counts it from the entries until the next refresh."""

    day = models.IntegerField(primary_key=True)

    class Meta:
        db_table = "report_rollup_dirty"


class ReportRollupState(models.Model):
    """One row once the rollup was built: the zone its days are in. Without it, or in
    another zone, the report counts everything from the entries."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    time_zone = models.CharField(max_length=64)
    built_at = models.DateTimeField()

    class Meta:
        db_table = "report_rollup_state"
