"""Seed the GPU models most fleets run, with the spellings drivers and exporters report.

Only missing rows are created, so editing or deleting them in the admin sticks; no prices are
seeded (a rate card is an organisation's own decision).
"""

from django.db import migrations

from apps.chargeback.gpu_models import DEFAULT_GPU_MODELS


def normalise(name):
    return " ".join(name.split()).lower()


def seed(apps, schema_editor):
    GpuModel = apps.get_model("chargeback", "GpuModel")
    GpuModelAlias = apps.get_model("chargeback", "GpuModelAlias")
    for slug, (name, aliases) in DEFAULT_GPU_MODELS.items():
        gpu_model, _ = GpuModel.objects.get_or_create(slug=slug, defaults={"name": name})
        for alias in aliases:
            GpuModelAlias.objects.get_or_create(
                name=normalise(alias), defaults={"gpu_model": gpu_model}
            )


class Migration(migrations.Migration):
    dependencies = [("chargeback", "0002_month_close")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
