"""UsageDaily keeps MIG instances apart (``mig_profile``), so whole days of a range can be
priced from it exactly as from the hourly rows (an instance costs its fraction of the parent).

Days whose hourly rows include MIG instances are re-derived from those hourly rows; other
days only gain the empty profile. Days whose hourly rows were already pruned keep their merged
rows (there is nothing left to split them by).
"""

from django.db import migrations, models
from django.db.models import F, Sum
from django.db.models.functions import Coalesce

DAY_S = 86400


def usage_daily_split_mig(apps, schema_editor):
    import datetime as dt

    hourly = apps.get_model("telemetry", "AllocationGpuHourly")
    usage = apps.get_model("telemetry", "UsageDaily")
    days = sorted(
        {
            int(hour) // DAY_S
            for hour in hourly.objects.filter(gpu__mig_parent__isnull=False)
            .values_list("hour", flat=True)
            .distinct()
        }
    )
    for day_number in days:
        lo = day_number * DAY_S
        date = dt.date(1970, 1, 1) + dt.timedelta(days=day_number)
        grouped = (
            hourly.objects.filter(hour__gte=lo, hour__lt=lo + DAY_S)
            .annotate(model=Coalesce(F("gpu__mig_parent__model_name"), F("gpu__model_name")))
            .values(
                "allocation__project_id",
                "allocation__project__team_id",
                "gpu__node__cluster_id",
                "model",
                "gpu__mig_profile",
            )
            .annotate(
                allocated=Sum("allocated_s"),
                observed=Sum("observed_s"),
                busy=Sum("busy_s"),
                idle=Sum("idle_s"),
                held=Sum("mem_held_idle_s"),
            )
            .order_by()
        )
        rows = [
            usage(
                day=date,
                team_id=g["allocation__project__team_id"],
                project_id=g["allocation__project_id"],
                cluster_id=g["gpu__node__cluster_id"],
                gpu_model=g["model"],
                mig_profile=g["gpu__mig_profile"] or "",
                allocated_s=g["allocated"] or 0.0,
                observed_s=g["observed"] or 0.0,
                busy_s=g["busy"] or 0.0,
                idle_s=g["idle"] or 0.0,
                mem_held_idle_s=g["held"] or 0.0,
            )
            for g in grouped
        ]
        usage.objects.filter(day=date).delete()
        usage.objects.bulk_create(rows, batch_size=1000)


class Migration(migrations.Migration):
    dependencies = [
        ("fleet", "0002_prometheus_source"),
        ("telemetry", "0003_ingest"),
        ("tenancy", "0001_initial"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="usagedaily",
            name="usagedaily_unique",
        ),
        migrations.AddField(
            model_name="usagedaily",
            name="mig_profile",
            field=models.CharField(
                blank=True,
                db_default="",
                default="",
                help_text="MIG instances apart (priced at their fraction of the parent); "
                "'' = whole GPUs.",
                max_length=50,
            ),
        ),
        migrations.AlterField(
            model_name="usagedaily",
            name="gpu_model",
            field=models.CharField(help_text="A MIG instance's parent model.", max_length=200),
        ),
        migrations.AddConstraint(
            model_name="usagedaily",
            constraint=models.UniqueConstraint(
                fields=("day", "project", "cluster", "gpu_model", "mig_profile"),
                name="usagedaily_unique_mig",
            ),
        ),
        migrations.RunPython(usage_daily_split_mig, migrations.RunPython.noop),
    ]
