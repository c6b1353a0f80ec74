"""FunnelEntry.previous_entered_at, filled for existing rows, and idx_fe_cohort.

The report counts each person's first entry in a period from that entry alone
(docs/reports.md), so idx_fe_person, which served the per-person grouping, has no reader
left and goes.
"""

from django.db import migrations, models

# The same ordering as the writers use (services.entries): ties on entered_at by id.
_PREVIOUS = (
    "SELECT id, LAG(entered_at) OVER (PARTITION BY funnel_type, email"
    " ORDER BY entered_at, id) AS previous FROM funnel_entries"
)


def previous_fill(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor == "mysql":
        sql = (
            "UPDATE funnel_entries fe JOIN (" + _PREVIOUS + ") p ON p.id = fe.id"
            " SET fe.previous_entered_at = p.previous WHERE p.previous IS NOT NULL"
        )
    elif connection.vendor == "sqlite":
        # UPDATE ... FROM needs SQLite 3.33; Python 3.11 ships a newer one.
        sql = (
            "UPDATE funnel_entries SET previous_entered_at = p.previous FROM ("
            + _PREVIOUS + ") AS p WHERE p.id = funnel_entries.id AND p.previous IS NOT NULL"
        )
    else:
        raise NotImplementedError(f"no previous_entered_at fill for {connection.vendor}")
    with connection.cursor() as cursor:
        cursor.execute(sql)


class Migration(migrations.Migration):

    dependencies = [
        ("funnels", "0007_verbose_names"),
    ]

    operations = [
        migrations.AddField(
            model_name="funnelentry",
            name="previous_entered_at",
            field=models.DateTimeField(blank=True, null=True, verbose_name="previous entry at"),
        ),
        migrations.RunPython(previous_fill, migrations.RunPython.noop, elidable=False),
        migrations.AddIndex(
            model_name="funnelentry",
            index=models.Index(
                fields=[
                    "funnel_type", "entered_at", "previous_entered_at",
                    "certificate_purchased_at", "test_id",
                ],
                name="idx_fe_cohort",
            ),
        ),
        migrations.RemoveIndex(
            model_name="funnelentry",
            name="idx_fe_person",
        ),
    ]
