from django.db import migrations


class Migration(migrations.Migration):
    # Reads over a time range name their GPUs and take the (gpu, bucket) key instead; the
    # rollup no longer keeps a second index up to date for every row it writes.
    dependencies = [
        ("telemetry", "0010_rolluppendingday"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="gpurollup5m", name="gpurollup5m_bucket_idx"),
    ]
