"""UsageHourly: per project x cluster x model x MIG profile x hour sums of the hourly rows,
filled here from the hourly rows already stored (one INSERT ... SELECT, in hour order so
that an hour range is a few heap pages, as when the rollup writes them); the rollup keeps it
in step from then on."""

import django.db.models.deletion
from django.db import migrations, models


def usage_hourly_fill(apps, schema_editor):
    table = apps.get_model("telemetry", "UsageHourly")._meta.db_table
    hourly = apps.get_model("telemetry", "AllocationGpuHourly")._meta.db_table
    allocation = apps.get_model("tenancy", "Allocation")._meta.db_table
    gpu = apps.get_model("fleet", "Gpu")._meta.db_table
    node = apps.get_model("fleet", "Node")._meta.db_table
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {table} (hour, project_id, cluster_id, gpu_model, mig_profile,
                                 allocated_s, observed_s, busy_s, idle_s, mem_held_idle_s)
            SELECT h.hour, a.project_id, n.cluster_id, COALESCE(p.model_name, g.model_name),
                   g.mig_profile, SUM(h.allocated_s), SUM(h.observed_s), SUM(h.busy_s),
                   SUM(h.idle_s), SUM(h.mem_held_idle_s)
            FROM {hourly} h
            JOIN {allocation} a ON a.id = h.allocation_id
            JOIN {gpu} g ON g.id = h.gpu_id
            LEFT JOIN {gpu} p ON p.id = g.mig_parent_id
            JOIN {node} n ON n.id = g.node_id
            GROUP BY h.hour, a.project_id, n.cluster_id, COALESCE(p.model_name, g.model_name),
                     g.mig_profile
            ORDER BY h.hour
            """  # noqa: S608 - only table names are formatted in
        )


class Migration(migrations.Migration):
    dependencies = [
        ("fleet", "0002_prometheus_source"),
        ("telemetry", "0004_usagedaily_mig_profile"),
        ("tenancy", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="UsageHourly",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "hour",
                    models.BigIntegerField(
                        help_text="Hour start, epoch seconds, a multiple of 3600."
                    ),
                ),
                (
                    "gpu_model",
                    models.CharField(help_text="A MIG instance's parent model.", max_length=200),
                ),
                ("mig_profile", models.CharField(blank=True, default="", max_length=50)),
                ("allocated_s", models.FloatField()),
                ("observed_s", models.FloatField()),
                ("busy_s", models.FloatField()),
                ("idle_s", models.FloatField()),
                ("mem_held_idle_s", models.FloatField()),
                (
                    "cluster",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="fleet.cluster",
                    ),
                ),
                (
                    "project",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="tenancy.project",
                    ),
                ),
            ],
            options={
                "verbose_name": "hourly usage rollup",
                "constraints": [
                    models.UniqueConstraint(
                        fields=("hour", "project", "cluster", "gpu_model", "mig_profile"),
                        name="usagehourly_unique",
                    )
                ],
            },
        ),
        migrations.RunPython(usage_hourly_fill, migrations.RunPython.noop),
    ]
