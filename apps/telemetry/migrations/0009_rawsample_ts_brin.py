# Raw samples' time index as BRIN on PostgreSQL (issue 5).
#
# Samples are stored in arrival order, which is time order but for late data, so a block
# range index (the lowest and highest ts of every 32 pages) finds a time range's pages about
# as well as the B-tree did, at a few pages per day partition instead of ~8 bytes a sample,
# and an insert no longer descends a second B-tree. A large rollup is split by time over
# several connections, each reading its range of a day partition through it (a lossy bitmap
# heap scan: whole pages in order) instead of a sequential scan of the whole partition. The
# primary key (gpu_id, ts) still serves every lookup by GPU.
#
# The index keeps its name and Django's model state (a plain index on ts); only its access
# method differs on PostgreSQL. SQLite keeps the B-tree.
from django.db import migrations

BRIN_SQL = """
DROP INDEX IF EXISTS rawsample_ts_idx;
CREATE INDEX rawsample_ts_idx ON telemetry_rawsample USING brin (ts)
    WITH (pages_per_range = 32, autosummarize = on);
"""

BTREE_SQL = """
DROP INDEX IF EXISTS rawsample_ts_idx;
CREATE INDEX rawsample_ts_idx ON telemetry_rawsample (ts);
"""


def _run(sql: str):
    def apply(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            with schema_editor.connection.cursor() as cursor:
                cursor.execute(sql)

    return apply


class Migration(migrations.Migration):
    dependencies = [
        ("telemetry", "0008_allocationgpuhourly_no_constraints"),
    ]

    operations = [migrations.RunPython(_run(BRIN_SQL), _run(BTREE_SQL), elidable=False)]
