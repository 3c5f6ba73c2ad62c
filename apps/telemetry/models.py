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


class AllocationSeen(models.Model):
    """When the samples last named an allocation's job (written by ingest).

    An allocation the agents discover from job labels has no epilog to close it: the ingest
    task closes it once its job has not appeared for ``FLOPWATCH_ALLOCATION_GRACE_S``.
    Allocations opened through the API and never seen in samples have no row here and are
    closed only by the API.
    """

    allocation = models.OneToOneField(
        "tenancy.Allocation", on_delete=models.CASCADE, primary_key=True, related_name="seen"
    )
    last_ts = models.BigIntegerField(help_text="Latest sample timestamp, epoch seconds.")
    closed_by_grace = models.BooleanField(
        default=False, help_text="Closed because the job stopped appearing (re-opened if seen)."
    )

    class Meta:
        verbose_name = "allocation last seen in samples"

    def __str__(self) -> str:
        return f"allocation {self.allocation_id} seen @ {self.last_ts}"


# --- Rollups ----------------------------------------------------------------------------------
# Every rollup row is a bucket replaced whole on recompute (delete + insert in one transaction),
# never incremented, so running a rollup twice, or after a crash, gives the same rows.
# GPU-seconds are floats: activity x time is fractional; money is computed from them in
# Decimal and rounded once, at the end.


class RollupPending(models.Model):
    """A 5-minute bucket of one GPU that must be (re)computed.

    Written by every path that stores samples (in the same transaction as the samples) and by
    allocation changes; the rollup task claims and deletes rows as it recomputes them.
    """

    pk = models.CompositePrimaryKey("gpu_id", "bucket")
    gpu = models.ForeignKey("fleet.Gpu", on_delete=models.CASCADE, related_name="+")
    bucket = models.BigIntegerField(help_text="Bucket start, epoch seconds, a multiple of 300.")
    marked_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"gpu {self.gpu_id} bucket {self.bucket}"


class RollupPendingDay(models.Model):
    """A UTC day whose daily rows (``UsageDaily``, ``CapacityDaily``) must be rewritten.

    A rollup split over several connections commits its parts one by one and rewrites the
    days they touched afterwards: it marks those days first, in a transaction of their own,
    so that a run killed after a part committed leaves them for the next run (which
    rewrites and deletes them like any other work).
    """

    day = models.DateField(primary_key=True)
    marked_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "pending daily rollup"

    def __str__(self) -> str:
        return f"day {self.day}"


class GpuRollup5m(models.Model):
    """One GPU over one 5-minute bucket, whoever held it."""

    # Keyed by (GPU, bucket) like the raw samples, with no surrogate id: a full rollup writes
    # a few hundred thousand rows at once, and a third index (plus a sequence) on them cost
    # about 0.7 s per 334,000 rows. The admin cannot list a composite key; the efficiency API
    # and the GPU pages show these rows.
    pk = models.CompositePrimaryKey("gpu_id", "bucket")

    # No database constraint and no index of its own, like RawSample's: the rollup writes a
    # few hundred thousand rows at a time from GPU ids it has just read from fleet_gpu, and
    # the constraint's check of every row at commit cost as much as 2 s per 334,000 rows;
    # lookups by GPU use the (gpu, bucket) key. Deleting a GPU in Django still
    # deletes its rows.
    gpu = models.ForeignKey(
        "fleet.Gpu",
        on_delete=models.CASCADE,
        related_name="rollups_5m",
        db_constraint=False,
        db_index=False,
    )
    bucket = models.BigIntegerField(help_text="Bucket start, epoch seconds, a multiple of 300.")
    samples = models.IntegerField()
    covered_s = models.FloatField(help_text="Seconds with data (each sample up to 2 intervals).")
    missing_s = models.FloatField(help_text="Seconds of the bucket without data.")
    allocated_s = models.FloatField(default=0, help_text="Seconds held by any allocation.")
    busy_s = models.FloatField(help_text="Sum of activity x seconds over covered time.")
    idle_s = models.FloatField(help_text="Covered seconds with activity below the idle threshold.")
    mem_held_idle_s = models.FloatField(help_text="Idle seconds while holding > 1 GiB.")
    util_mean = models.FloatField(null=True)
    util_max = models.FloatField(null=True)
    sm_active_mean = models.FloatField(null=True)
    mem_used_mean_mib = models.FloatField(null=True)
    mem_used_max_mib = models.FloatField(null=True)
    power_mean_w = models.FloatField(null=True)
    energy_j = models.FloatField(null=True)
    activity_source = models.CharField(
        max_length=10, blank=True, help_text="sm_active, util or mixed: where activity came from."
    )

    # No index by bucket either: every rollup writes these rows by the hundred thousand, and
    # a second index cost about as much as the key itself (0.3 s of 1.0 per 164,000 rows).
    # The few reads over a time range of many GPUs name the GPUs (``gpu_id IN ...``), so
    # they take the key one GPU at a time, a short range each.
    class Meta:
        verbose_name = "GPU 5-minute rollup"

    def __str__(self) -> str:
        return f"gpu {self.gpu_id} @ {self.bucket}"


class AllocationGpuHourly(models.Model):
    """One GPU of one allocation over one hour: the basis of per-job numbers and chargeback."""

    # As GpuRollup5m's: no database constraints on rows the rollup writes by the ten
    # thousand from ids it has just read (their checks at commit cost 0.15-0.2 s per 22,000
    # rows); Django still deletes them with their allocation or GPU. Lookups by allocation
    # use the unique (allocation, gpu, hour) index, which leads with it.
    allocation = models.ForeignKey(
        "tenancy.Allocation",
        on_delete=models.CASCADE,
        related_name="hourly",
        db_constraint=False,
        db_index=False,
    )
    gpu = models.ForeignKey(
        "fleet.Gpu", on_delete=models.CASCADE, related_name="+", db_constraint=False
    )
    hour = models.BigIntegerField(help_text="Hour start, epoch seconds, a multiple of 3600.")
    allocated_s = models.FloatField()
    observed_s = models.FloatField(help_text="Allocated seconds with data.")
    busy_s = models.FloatField()
    idle_s = models.FloatField()
    mem_held_idle_s = models.FloatField()

    class Meta:
        verbose_name = "allocation GPU hourly rollup"
        constraints = [
            models.UniqueConstraint(
                fields=["allocation", "gpu", "hour"], name="allocgpuhourly_unique"
            )
        ]
        indexes = [models.Index(fields=["hour"], name="allocgpuhourly_hour_idx")]

    def __str__(self) -> str:
        return f"allocation {self.allocation_id} gpu {self.gpu_id} @ {self.hour}"


class UsageDaily(models.Model):
    """GPU-seconds of one project on one GPU model (and MIG profile) in one cluster over one
    UTC day: the sums of that day's ``AllocationGpuHourly`` rows, so whole days of a range
    can be read here instead of hour by hour (``apps.telemetry.selectors.efficiency_by``).

    Team totals are sums over the team's projects (a project belongs to one team); the
    ``team`` column is stored so team pages need no join.
    """

    day = models.DateField()
    team = models.ForeignKey("tenancy.Team", on_delete=models.CASCADE, related_name="+")
    project = models.ForeignKey("tenancy.Project", on_delete=models.CASCADE, related_name="+")
    cluster = models.ForeignKey("fleet.Cluster", on_delete=models.CASCADE, related_name="+")
    gpu_model = models.CharField(max_length=200, help_text="A MIG instance's parent model.")
    mig_profile = models.CharField(
        max_length=50,
        blank=True,
        default="",
        db_default="",
        help_text="MIG instances apart (priced at their fraction of the parent); '' = whole GPUs.",
    )
    allocated_s = models.FloatField()
    observed_s = models.FloatField()
    busy_s = models.FloatField()
    idle_s = models.FloatField()
    mem_held_idle_s = models.FloatField()

    class Meta:
        verbose_name = "daily usage rollup"
        constraints = [
            models.UniqueConstraint(
                fields=["day", "project", "cluster", "gpu_model", "mig_profile"],
                name="usagedaily_unique_mig",
            )
        ]
        indexes = [
            models.Index(fields=["day", "team"], name="usagedaily_day_team_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.project_id} {self.gpu_model} {self.day}"


class UsageHourly(models.Model):
    """GPU-seconds of one project on one GPU model (and MIG profile) in one cluster over one
    hour: the sums of that hour's ``AllocationGpuHourly`` rows, replaced with them by the
    rollup and pruned with them. Hourly charts and the partial days at the ends of a range
    read a few rows per project here instead of one per allocated GPU."""

    hour = models.BigIntegerField(help_text="Hour start, epoch seconds, a multiple of 3600.")
    project = models.ForeignKey("tenancy.Project", on_delete=models.CASCADE, related_name="+")
    cluster = models.ForeignKey("fleet.Cluster", on_delete=models.CASCADE, related_name="+")
    gpu_model = models.CharField(max_length=200, help_text="A MIG instance's parent model.")
    mig_profile = models.CharField(max_length=50, blank=True, default="")
    allocated_s = models.FloatField()
    observed_s = models.FloatField()
    busy_s = models.FloatField()
    idle_s = models.FloatField()
    mem_held_idle_s = models.FloatField()

    class Meta:
        verbose_name = "hourly usage rollup"
        constraints = [
            models.UniqueConstraint(
                fields=["hour", "project", "cluster", "gpu_model", "mig_profile"],
                name="usagehourly_unique",
            )
        ]

    def __str__(self) -> str:
        return f"{self.project_id} {self.gpu_model} @ {self.hour}"


class CapacityDaily(models.Model):
    """Fleet capacity of one GPU model in one cluster over one UTC day, and how much of it
    nobody held (capacity planning, platform cost)."""

    day = models.DateField()
    cluster = models.ForeignKey("fleet.Cluster", on_delete=models.CASCADE, related_name="+")
    gpu_model = models.CharField(max_length=200)
    capacity_s = models.FloatField(help_text="GPU-seconds of GPUs that existed that day.")
    allocated_s = models.FloatField()
    unallocated_s = models.FloatField()
    busy_s = models.FloatField(default=0)

    class Meta:
        verbose_name = "daily capacity rollup"
        constraints = [
            models.UniqueConstraint(
                fields=["day", "cluster", "gpu_model"], name="capacitydaily_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.cluster_id} {self.gpu_model} {self.day}"
