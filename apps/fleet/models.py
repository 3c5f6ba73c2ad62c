"""The GPU fleet: clusters, the nodes in them, the GPUs in the nodes, and tokens for programs."""

from django.db import models
from django.db.models import Q


class Cluster(models.Model):
    """A group of nodes run as one (a Slurm cluster, a Kubernetes cluster, a region).

    A cluster may also name a Prometheus that scrapes dcgm-exporter on its nodes: the periodic
    import (``apps.telemetry.prometheus``) then pulls its GPU series, resuming from
    ``prometheus_watermark``.
    """

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    # --- Import from Prometheus (dcgm-exporter) ---------------------------------------------
    prometheus_url = models.URLField(
        "Prometheus URL",
        blank=True,
        help_text="e.g. http://prometheus.monitoring:9090; empty = no import for this cluster.",
    )
    prometheus_username = models.CharField(
        max_length=200, blank=True, help_text="Basic auth user (optional)."
    )
    # Secrets are stored as given (the import must send them); the admin never shows them.
    prometheus_password = models.CharField(max_length=500, blank=True)
    prometheus_bearer_token = models.CharField(max_length=2000, blank=True)
    prometheus_verify_tls = models.BooleanField(
        "verify TLS", default=True, help_text="Check the server's certificate (https)."
    )
    prometheus_selector = models.CharField(
        max_length=500,
        blank=True,
        help_text='Label matchers added to every query, e.g. cluster="a100-east" when one '
        "Prometheus scrapes several clusters.",
    )
    prometheus_step_s = models.PositiveIntegerField(
        "step (s)",
        default=30,
        help_text="Seconds between imported samples (the scrape interval is a good choice).",
    )
    namespace_projects = models.JSONField(
        default=dict,
        blank=True,
        help_text='Kubernetes namespace -> project slug, e.g. {"ray-llm": "llm-pretrain"}; '
        "a namespace not listed is its own project.",
    )
    project_label = models.CharField(
        max_length=100,
        blank=True,
        help_text="A series label whose value names the project (wins over the namespace).",
    )
    prometheus_watermark = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Imported up to here; the next run resumes from it. Clear it to start over.",
    )
    prometheus_last_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    prometheus_last_error = models.TextField(blank=True, editable=False)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.name or self.slug


class Node(models.Model):
    """A machine with GPUs and an agent (or a Prometheus source) reporting for it.

    The hostname is unique across the fleet: agents and exporters identify nodes by hostname,
    and two clusters sharing a name would make every import ambiguous.
    """

    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="nodes")
    hostname = models.CharField(max_length=253, unique=True)
    token_hash = models.CharField(max_length=64, unique=True, null=True, blank=True, editable=False)
    token_prefix = models.CharField(max_length=16, blank=True, editable=False)
    token_created_at = models.DateTimeField(null=True, blank=True, editable=False)
    agent_version = models.CharField(max_length=50, blank=True)
    agent_source = models.CharField(max_length=20, blank=True)
    sample_interval_s = models.PositiveIntegerField(
        default=10, help_text="Expected seconds between two samples of one GPU."
    )
    is_active = models.BooleanField(
        default=True, help_text="Inactive nodes are not expected to report (no silence alerts)."
    )
    last_seen_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["hostname"]
        indexes = [models.Index(fields=["cluster", "hostname"])]

    def __str__(self) -> str:
        return self.hostname

    @property
    def has_token(self) -> bool:
        return bool(self.token_hash)


class Gpu(models.Model):
    """One GPU, or one MIG instance of a GPU, identified by its UUID for life."""

    uuid = models.CharField(max_length=100, unique=True)
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="gpus")
    index = models.PositiveSmallIntegerField(help_text="Index on its node (nvidia-smi order).")
    model_name = models.CharField(max_length=200)
    mem_total_mib = models.PositiveIntegerField(null=True, blank=True)
    mig_parent = models.ForeignKey(
        "self", on_delete=models.CASCADE, null=True, blank=True, related_name="mig_instances"
    )
    mig_profile = models.CharField(max_length=50, blank=True, help_text="e.g. 1g.10gb")
    first_seen_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["node__hostname", "index", "uuid"]
        verbose_name = "GPU"
        constraints = [
            models.CheckConstraint(
                condition=Q(mig_parent__isnull=True) | ~Q(mig_profile=""),
                name="gpu_mig_instance_has_profile",
            )
        ]

    def __str__(self) -> str:
        return f"{self.node.hostname}/{self.index} {self.model_name}"

    @property
    def is_mig_instance(self) -> bool:
        return self.mig_parent_id is not None


class ServiceToken(models.Model):
    """A token for schedulers and controllers (Slurm prolog/epilog, Kubernetes) to post
    allocations; unlike a node token it is not tied to one machine."""

    name = models.CharField(max_length=100, unique=True)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    token_prefix = models.CharField(max_length=16, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
