# idx_fe_report (funnel_type, entered_at, certificate_purchased_at, email) served the
# report before idx_fe_cohort; no query reads it any more (idx_fe_cohort has the same
# leading columns), and every insert and purchase update of funnel_entries paid for it:
# with idx_fe_lift and idx_fe_brevo added, the purchase sync had gone over its 5 s target
# on the benchmark (docs/benchmarks.md).

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('funnels', '0015_brevo_audit'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='funnelentry',
            name='idx_fe_report',
        ),
    ]
