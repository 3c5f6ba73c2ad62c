"""The rate card (what one GPU-hour of each GPU model costs, from which date, where) and the
closed months whose chargeback statements are frozen."""

from django.conf import settings
from django.db import models


class GpuModel(models.Model):
    """A priced GPU model. Drivers and exporters spell one model many ways ("NVIDIA H100 80GB
    HBM3", "H100-SXM5-80GB"); its aliases map those names to it."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)

    class Meta:
        ordering = ["name"]
        verbose_name = "GPU model"

    def __str__(self) -> str:
        return self.name


class GpuModelAlias(models.Model):
    """A reported model name that means this GPU model (matched case- and space-insensitively)."""

    gpu_model = models.ForeignKey(GpuModel, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=200, unique=True, help_text="Stored normalised.")

    class Meta:
        ordering = ["name"]
        verbose_name = "GPU model alias"
        verbose_name_plural = "GPU model aliases"

    def __str__(self) -> str:
        return f"{self.name} → {self.gpu_model}"

    def save(self, *args, **kwargs):
        # Look-ups compare normalised names; storing anything else would make the alias dead.
        self.clean()
        super().save(*args, **kwargs)

    def clean(self) -> None:
        # Before the admin's uniqueness check, so "NVIDIA  H100" collides with "nvidia h100"
        # as a form error rather than a database error.
        from apps.chargeback.selectors import gpu_model_name_normalise

        self.name = gpu_model_name_normalise(self.name)


class Rate(models.Model):
    """The price of one GPU-hour of a model from ``effective_from`` (inclusive) until the next
    rate of the same model and cluster; a cluster-specific rate overrides the fleet-wide one."""

    gpu_model = models.ForeignKey(GpuModel, on_delete=models.CASCADE, related_name="rates")
    cluster = models.ForeignKey(
        "fleet.Cluster",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="rates",
        help_text="Leave empty for the fleet-wide rate.",
    )
    effective_from = models.DateField()
    price_per_gpu_hour = models.DecimalField(max_digits=12, decimal_places=4)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["gpu_model__name", "cluster__slug", "-effective_from"]
        constraints = [
            # Two partial constraints rather than NULLS NOT DISTINCT, which SQLite lacks:
            # one fleet-wide rate per model and day, one per model, cluster and day.
            models.UniqueConstraint(
                fields=["gpu_model", "cluster", "effective_from"],
                condition=models.Q(cluster__isnull=False),
                name="rate_model_cluster_from_unique",
            ),
            models.UniqueConstraint(
                fields=["gpu_model", "effective_from"],
                condition=models.Q(cluster__isnull=True),
                name="rate_model_fleet_from_unique",
            ),
            models.CheckConstraint(
                condition=models.Q(price_per_gpu_hour__gte=0), name="rate_price_not_negative"
            ),
        ]

    def __str__(self) -> str:
        where = self.cluster.slug if self.cluster_id else "fleet"
        return f"{self.gpu_model} {where} from {self.effective_from}: {self.price_per_gpu_hour}"


class MonthClose(models.Model):
    """Finance closed a billing month: from then on its statement is the frozen copy in
    ``Statement``, not a live computation, so late samples and new rates no longer move it.

    A reopen fills ``reopened_*`` and keeps the row as history; closing again adds a new row.
    At most one close per month is in force (``reopened_at`` empty).
    """

    month = models.DateField(help_text="First day of the billing month.")
    closed_at = models.DateTimeField()
    closed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True
    )
    reopened_at = models.DateTimeField(null=True, blank=True)
    reopened_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="+",
        null=True,
        blank=True,
    )
    reopen_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-month", "-closed_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["month"],
                condition=models.Q(reopened_at__isnull=True),
                name="monthclose_one_in_force",
            ),
            models.CheckConstraint(
                condition=models.Q(reopened_at__isnull=True) | ~models.Q(reopen_reason=""),
                name="monthclose_reopen_has_reason",
            ),
        ]

    def __str__(self) -> str:
        state = "reopened" if self.reopened_at else "closed"
        return f"{self.month:%Y-%m} {state}"

    @property
    def in_force(self) -> bool:
        return self.reopened_at is None


class Statement(models.Model):
    """The chargeback statement of a month as it stood when the month was closed.

    ``rows`` is the list of statement rows (money and hours as decimal strings, team and
    project ids for visibility filtering); ``total_cost`` is the sum of the rounded rows.
    """

    month_close = models.OneToOneField(
        MonthClose, on_delete=models.CASCADE, related_name="statement"
    )
    currency = models.CharField(max_length=10)
    billing_time_zone = models.CharField(max_length=64)
    spread_unallocated = models.BooleanField()
    total_cost = models.DecimalField(max_digits=18, decimal_places=2)
    rows = models.JSONField()
    computed_at = models.DateTimeField()

    class Meta:
        ordering = ["-month_close__month"]

    def __str__(self) -> str:
        return f"statement {self.month_close}: {self.total_cost} {self.currency}"
