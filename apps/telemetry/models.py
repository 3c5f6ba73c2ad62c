"""Raw GPU samples as they arrive from agents, imports and Prometheus."""

from django.db import models


class RawSample(models.Model):
    """One GPU at one instant. Keyed by (GPU, timestamp): the first value stored wins.

    ``ts`` is integer epoch seconds (UTC), not a datetime: bucketing is plain integer
    arithmetic (``ts - ts % 300``) that PostgreSQL and SQLite evaluate the same way, and day
    partitions are integer ranges. On PostgreSQL the table is range-partitioned by day (see
    the migrations); the GPU foreign key carries no database constraint, because a constraint
    check per row would halve COPY throughput and retention drops whole partitions anyway.
    """

    pk = models.CompositePrimaryKey("gpu_id", "ts")
    gpu = models.ForeignKey(
        "fleet.Gpu", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    ts = models.BigIntegerField(help_text="Epoch seconds, UTC.")
    util_pct = models.FloatField(null=True)
    sm_active = models.FloatField(null=True)
    sm_occupancy = models.FloatField(null=True)
    tensor_active = models.FloatField(null=True)
    dram_active = models.FloatField(null=True)
    gr_engine_active = models.FloatField(null=True)
    mem_used_mib = models.FloatField(null=True)
    power_w = models.FloatField(null=True)
    temp_c = models.FloatField(null=True)
    sm_clock_mhz = models.FloatField(null=True)
    energy_mj = models.FloatField(null=True)
    xid = models.IntegerField(null=True)

    class Meta:
        indexes = [models.Index(fields=["ts"], name="rawsample_ts_idx")]

    def __str__(self) -> str:
        return f"gpu {self.gpu_id} @ {self.ts}"
