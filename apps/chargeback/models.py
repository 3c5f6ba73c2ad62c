"""The rate card: what one GPU-hour of each GPU model costs, from which date, where."""

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
            models.UniqueConstraint(
                fields=["gpu_model", "cluster", "effective_from"],
                name="rate_model_cluster_from_unique",
                nulls_distinct=False,
            ),
            models.CheckConstraint(
                condition=models.Q(price_per_gpu_hour__gte=0), name="rate_price_not_negative"
            ),
        ]

    def __str__(self) -> str:
        where = self.cluster.slug if self.cluster_id else "fleet"
        return f"{self.gpu_model} {where} from {self.effective_from}: {self.price_per_gpu_hour}"
