# Ingest (issue 4): raw samples range-partitioned by day on PostgreSQL, and the table that
# remembers when an allocation's job was last seen in samples.
#
# The Django model state of RawSample does not change: same columns, same composite primary
# key (gpu_id, ts), same ``rawsample_ts_idx``. On PostgreSQL the table created by 0001 is
# replaced by a partitioned table of the same name (rows copied over); the separate gpu_id
# index Django made for the foreign key is not recreated, because the primary key already
# starts with gpu_id and a third index per row would only slow COPY down. A DEFAULT partition
# takes rows of days that have no partition yet (see apps/telemetry/storage.py). SQLite keeps
# the plain table.
import django.db.models.deletion
from django.db import migrations, models

PARTITION_SQL = """
ALTER TABLE telemetry_rawsample RENAME TO telemetry_rawsample_unpartitioned;
ALTER INDEX IF EXISTS rawsample_ts_idx RENAME TO rawsample_ts_idx_unpartitioned;
CREATE TABLE telemetry_rawsample (
    gpu_id bigint NOT NULL,
    ts bigint NOT NULL,
    util_pct double precision NULL,
    sm_active double precision NULL,
    sm_occupancy double precision NULL,
    tensor_active double precision NULL,
    dram_active double precision NULL,
    gr_engine_active double precision NULL,
    mem_used_mib double precision NULL,
    power_w double precision NULL,
    temp_c double precision NULL,
    sm_clock_mhz double precision NULL,
    energy_mj double precision NULL,
    xid integer NULL,
    PRIMARY KEY (gpu_id, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX rawsample_ts_idx ON telemetry_rawsample (ts);
CREATE TABLE telemetry_rawsample_default PARTITION OF telemetry_rawsample DEFAULT;
"""

UNPARTITION_SQL = """
ALTER TABLE telemetry_rawsample RENAME TO telemetry_rawsample_partitioned;
ALTER INDEX rawsample_ts_idx RENAME TO rawsample_ts_idx_partitioned;
CREATE TABLE telemetry_rawsample (LIKE telemetry_rawsample_partitioned INCLUDING DEFAULTS);
ALTER TABLE telemetry_rawsample ADD PRIMARY KEY (gpu_id, ts);
CREATE INDEX rawsample_ts_idx ON telemetry_rawsample (ts);
INSERT INTO telemetry_rawsample SELECT * FROM telemetry_rawsample_partitioned;
DROP TABLE telemetry_rawsample_partitioned;
"""


def partition(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    from apps.telemetry.storage import raw_partitions_ensure

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relkind FROM pg_class c WHERE c.relname = 'telemetry_rawsample' "
            "AND c.relnamespace = current_schema()::regnamespace"
        )
        row = cursor.fetchone()
        if row and row[0] == "p":
            return  # already partitioned
        cursor.execute(PARTITION_SQL)
        cursor.execute("SELECT min(ts), max(ts) FROM telemetry_rawsample_unpartitioned")
        low, high = cursor.fetchone()
    if low is not None:
        raw_partitions_ensure(start_ts=low, end_ts=high, connection=connection)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO telemetry_rawsample SELECT gpu_id, ts, util_pct, sm_active, "
            "sm_occupancy, tensor_active, dram_active, gr_engine_active, mem_used_mib, power_w, "
            "temp_c, sm_clock_mhz, energy_mj, xid FROM telemetry_rawsample_unpartitioned"
        )
        cursor.execute("DROP TABLE telemetry_rawsample_unpartitioned")


def unpartition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(UNPARTITION_SQL)


class Migration(migrations.Migration):
    dependencies = [
        ("telemetry", "0002_rollups"),
        ("tenancy", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(partition, unpartition, elidable=False),
        migrations.CreateModel(
            name="AllocationSeen",
            fields=[
                (
                    "allocation",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="seen",
                        serialize=False,
                        to="tenancy.allocation",
                    ),
                ),
                (
                    "last_ts",
                    models.BigIntegerField(help_text="Latest sample timestamp, epoch seconds."),
                ),
                (
                    "closed_by_grace",
                    models.BooleanField(
                        default=False,
                        help_text="Closed because the job stopped appearing (re-opened if seen).",
                    ),
                ),
            ],
            options={
                "verbose_name": "allocation last seen in samples",
            },
        ),
    ]
