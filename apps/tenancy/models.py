"""Who uses the GPUs: teams, their projects and members, and allocations (jobs, pods,
reservations) that hold GPUs for a project over a span of time."""

from django.conf import settings
from django.db import models
from django.db.models import F, Q


class Team(models.Model):
    """A group that pays for GPUs: the unit of chargeback."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    cost_center = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Project(models.Model):
    """A body of work of one team; the unit of efficiency reports and waste alerts.

    Slugs are unique fleet-wide because agents and schedulers name projects by slug alone.
    """

    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="projects")
    slug = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    owners = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="owned_projects"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["team__name", "name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user's place in a team. Members see their teams' projects; managers also act on
    every finding of the team's projects."""

    class Role(models.TextChoices):
        MEMBER = "member", "Member"
        MANAGER = "manager", "Manager"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        ordering = ["team__name", "user__username"]
        constraints = [
            models.UniqueConstraint(fields=["user", "team"], name="membership_user_team_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"


class Allocation(models.Model):
    """GPUs held by a project from ``start`` until ``end`` (None while still held).

    ``external_id`` is the scheduler's own name for it (``slurm:123456``,
    ``k8s:ns/pod``); together with ``source`` it is unique, which makes every
    open/close call idempotent.
    """

    source = models.CharField(max_length=20)
    external_id = models.CharField(max_length=255)
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="allocations")
    user_name = models.CharField(max_length=150, blank=True)
    start = models.DateTimeField()
    end = models.DateTimeField(null=True, blank=True)
    gpus = models.ManyToManyField(
        "fleet.Gpu", through="AllocationGpu", related_name="allocations", blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-start"]
        constraints = [
            models.UniqueConstraint(
                fields=["source", "external_id"], name="allocation_source_external_id_unique"
            ),
            models.CheckConstraint(
                condition=Q(end__isnull=True) | Q(end__gte=F("start")),
                name="allocation_end_after_start",
            ),
        ]
        indexes = [
            models.Index(fields=["project", "start"]),
            models.Index(fields=["end"]),
        ]

    def __str__(self) -> str:
        return self.external_id

    @property
    def is_open(self) -> bool:
        return self.end is None


class AllocationGpu(models.Model):
    """One GPU held by an allocation (for the allocation's whole span)."""

    allocation = models.ForeignKey(
        Allocation, on_delete=models.CASCADE, related_name="allocation_gpus"
    )
    gpu = models.ForeignKey("fleet.Gpu", on_delete=models.PROTECT, related_name="allocation_gpus")

    class Meta:
        verbose_name = "allocation GPU"
        constraints = [
            models.UniqueConstraint(fields=["allocation", "gpu"], name="allocation_gpu_unique")
        ]

    def __str__(self) -> str:
        return f"{self.allocation} on {self.gpu.uuid}"


class ApiToken(models.Model):
    """A personal token for reading the API from scripts; it sees what its user sees."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    token_prefix = models.CharField(max_length=16, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["user__username", "name"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.user})"
