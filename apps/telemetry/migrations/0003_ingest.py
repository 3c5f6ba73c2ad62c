# Placeholder owned by the ingest work (issue 4): raw sample partitioning and ingest state.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("telemetry", "0002_rollups"),
    ]

    operations = []
