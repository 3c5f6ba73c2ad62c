# Placeholder owned by the Prometheus import work (issue 9): per-cluster Prometheus source.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("fleet", "0001_initial"),
    ]

    operations = []
