"""Seed the GPU models most fleets run, with the spellings drivers and exporters report.

Only missing rows are created, so editing or deleting them in the admin sticks; no prices are
seeded (a rate card is an organisation's own decision).
"""

from django.db import migrations

DEFAULT_GPU_MODELS = {
    "h100": (
        "NVIDIA H100",
        [
            "NVIDIA H100",
            "H100",
            "NVIDIA H100 80GB HBM3",
            "H100 80GB HBM3",
            "H100-SXM5-80GB",
            "NVIDIA H100-SXM5-80GB",
            "H100 SXM5 80GB",
            "NVIDIA H100 PCIe",
            "H100-PCIE-80GB",
            "NVIDIA H100 NVL",
        ],
    ),
    "h200": (
        "NVIDIA H200",
        [
            "NVIDIA H200",
            "H200",
            "NVIDIA H200 141GB HBM3e",
            "NVIDIA H200 NVL",
            "H200-SXM5-141GB",
        ],
    ),
    "a100": (
        "NVIDIA A100",
        [
            "NVIDIA A100",
            "A100",
            "NVIDIA A100-SXM4-80GB",
            "NVIDIA A100-SXM4-40GB",
            "NVIDIA A100 80GB PCIe",
            "NVIDIA A100-PCIE-40GB",
            "A100-SXM4-80GB",
            "A100-SXM4-40GB",
            "A100-PCIE-40GB",
        ],
    ),
    "l40s": ("NVIDIA L40S", ["NVIDIA L40S", "L40S"]),
}


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
