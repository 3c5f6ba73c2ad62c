"""Waste detection: policies, findings and their state changes, and the notification outbox.

A finding is one stretch of waste of one kind (a rule) on one subject (an allocation, a GPU for
``silent_gpu``, or a whole project for the project-level ``low_efficiency``). Detection walks the
rollups forward and keeps its place per allocation in ``DetectionCursor`` (per project in
``ProjectDetectionCursor``); every state change of a finding is a ``FindingEvent`` row; every message
to be sent is a ``Notification`` row that exactly one worker claims.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q


class Rule(models.TextChoices):
    IDLE_ALLOCATION = "idle_allocation", "Idle allocation"
    MEMORY_HELD_IDLE = "memory_held_idle", "Memory held while idle"
    LOW_EFFICIENCY = "low_efficiency", "Low efficiency"
    PARTIAL_USE = "partial_use", "Partial use of a multi-GPU allocation"
    OVERSIZED_GPU = "oversized_gpu", "Oversized GPU"
    SILENT_GPU = "silent_gpu", "Silent GPU"


# Every threshold of the rule table, with its default. A policy row leaves a field empty to
# inherit it from the next broader policy (project > team > cluster > global > these).
POLICY_DEFAULTS: dict[str, object] = {
    "idle_allocation_enabled": True,
    "idle_activity_pct": 1.0,
    "idle_minutes": 60,
    "memory_held_idle_enabled": True,
    "memory_held_mib": 1024,
    "memory_held_idle_minutes": 30,
    "low_efficiency_enabled": True,
    "low_efficiency_pct": 25.0,
    "low_efficiency_window_days": 7,
    "low_efficiency_min_gpu_hours": 50.0,
    "partial_use_enabled": True,
    "partial_use_minutes": 60,
    "oversized_gpu_enabled": True,
    "oversized_activity_pct": 15.0,
    "oversized_memory_mib": 10240,
    "oversized_large_gpu_mib": 40000,
    "oversized_min_gpu_hours": 24.0,
    "silent_gpu_enabled": True,
    "silent_intervals": 3,
}


class Policy(models.Model):
    """Thresholds of the waste rules for the whole fleet, a cluster, a team or a project.

    The policy without cluster, team and project is the global default. An override names
    exactly one scope; each empty field inherits, and the most specific policy that sets a
    field wins: project > team > cluster > global (see ``selectors.policy_resolve``).
    """

    class Scope(models.TextChoices):
        GLOBAL = "global", "Global default"
        CLUSTER = "cluster", "Cluster"
        TEAM = "team", "Team"
        PROJECT = "project", "Project"

    scope = models.CharField(max_length=10, choices=Scope.choices, default=Scope.GLOBAL)
    cluster = models.OneToOneField(
        "fleet.Cluster", on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    team = models.OneToOneField(
        "tenancy.Team", on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    project = models.OneToOneField(
        "tenancy.Project", on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )

    idle_allocation_enabled = models.BooleanField(null=True, blank=True)
    idle_activity_pct = models.FloatField(
        null=True, blank=True, help_text="Activity below this (percent) counts as idle."
    )
    idle_minutes = models.PositiveIntegerField(
        null=True, blank=True, help_text="Minutes in a row idle before idle_allocation fires."
    )
    memory_held_idle_enabled = models.BooleanField(null=True, blank=True)
    memory_held_mib = models.PositiveIntegerField(
        null=True, blank=True, help_text="Memory above this (MiB) counts as held."
    )
    memory_held_idle_minutes = models.PositiveIntegerField(null=True, blank=True)
    low_efficiency_enabled = models.BooleanField(null=True, blank=True)
    low_efficiency_pct = models.FloatField(null=True, blank=True)
    low_efficiency_window_days = models.PositiveIntegerField(null=True, blank=True)
    low_efficiency_min_gpu_hours = models.FloatField(null=True, blank=True)
    partial_use_enabled = models.BooleanField(null=True, blank=True)
    partial_use_minutes = models.PositiveIntegerField(null=True, blank=True)
    oversized_gpu_enabled = models.BooleanField(null=True, blank=True)
    oversized_activity_pct = models.FloatField(null=True, blank=True)
    oversized_memory_mib = models.PositiveIntegerField(null=True, blank=True)
    oversized_large_gpu_mib = models.PositiveIntegerField(
        null=True, blank=True, help_text="GPUs with at least this much memory count as large."
    )
    oversized_min_gpu_hours = models.FloatField(null=True, blank=True)
    silent_gpu_enabled = models.BooleanField(null=True, blank=True)
    silent_intervals = models.PositiveIntegerField(
        null=True, blank=True, help_text="Expected sample intervals without data before alerting."
    )

    class Meta:
        verbose_name_plural = "policies"
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(scope="global", cluster__isnull=True, team__isnull=True, project__isnull=True)
                    | Q(
                        scope="cluster",
                        cluster__isnull=False,
                        team__isnull=True,
                        project__isnull=True,
                    )
                    | Q(
                        scope="team", cluster__isnull=True, team__isnull=False, project__isnull=True
                    )
                    | Q(
                        scope="project",
                        cluster__isnull=True,
                        team__isnull=True,
                        project__isnull=False,
                    )
                ),
                name="policy_scope_matches_target",
            ),
            models.UniqueConstraint(
                fields=["scope"], condition=Q(scope="global"), name="policy_one_global"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.scope_label} policy"

    @property
    def scope_label(self) -> str:
        if self.project_id:
            return f"project {self.project}"
        if self.team_id:
            return f"team {self.team}"
        if self.cluster_id:
            return f"cluster {self.cluster}"
        return "global"


class Severity(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


class Status(models.TextChoices):
    OPEN = "open", "Open"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    SNOOZED = "snoozed", "Snoozed"
    RESOLVED = "resolved", "Resolved"


class Finding(models.Model):
    """One stretch of waste of one rule on one subject, with what it has cost so far.

    ``subject`` is ``alloc:<id>``, ``gpu:<id>`` or ``project:<id>`` (a project-level finding:
    ``project`` set, no ``allocation``, no GPUs); at most one unresolved finding exists per
    rule and subject (a partial unique constraint, so two detectors cannot both open one).
    ``ended`` is set when the condition cleared or the allocation ended; the totals stay.
    ``detected_late`` marks findings that had already ended when detection first saw them
    (history imported, an agent back from an outage): they go to the digest only.
    """

    rule = models.CharField(max_length=30, choices=Rule.choices)
    subject = models.CharField(max_length=50)
    allocation = models.ForeignKey(
        "tenancy.Allocation",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="findings",
    )
    project = models.ForeignKey(
        "tenancy.Project",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="findings",
    )
    gpus = models.ManyToManyField("fleet.Gpu", blank=True, related_name="findings")
    started = models.DateTimeField()
    last_seen = models.DateTimeField()
    ended = models.DateTimeField(null=True, blank=True)
    detected_at = models.DateTimeField()
    detected_late = models.BooleanField(default=False)
    wasted_gpu_hours = models.FloatField(default=0)
    wasted_cost_exact = models.DecimalField(
        max_digits=20,
        decimal_places=8,
        default=Decimal(0),
        help_text="Unrounded sum; wasted_cost is this rounded to cents once.",
    )
    wasted_cost = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal(0))
    severity = models.CharField(max_length=10, choices=Severity.choices, default=Severity.INFO)
    status = models.CharField(max_length=15, choices=Status.choices, default=Status.OPEN)
    detail = models.JSONField(default=dict, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    comment = models.TextField(blank=True)
    snoozed_until = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "subject"],
                condition=~Q(status="resolved"),
                name="finding_one_unresolved_per_rule_subject",
            )
        ]
        indexes = [
            models.Index(fields=["status", "rule"]),
            models.Index(fields=["project", "status"]),
        ]

    def __str__(self) -> str:
        return f"{self.get_rule_display()} on {self.subject} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status != Status.RESOLVED

    @property
    def is_project_level(self) -> bool:
        """About a whole project (its jobs pooled), not one allocation or GPU."""
        return self.allocation_id is None and self.subject.startswith("project:")

    @property
    def subject_label(self) -> str:
        """What the finding is about, in a few words: the job, "whole project" or the subject."""
        if self.allocation_id is not None:
            return self.allocation.external_id
        if self.is_project_level:
            return "whole project"
        return self.subject


class FindingEvent(models.Model):
    """One state change of a finding (opened, acknowledged, snoozed, woke, resolved...)."""

    finding = models.ForeignKey(Finding, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField()
    kind = models.CharField(max_length=20)
    old_status = models.CharField(max_length=15, blank=True)
    new_status = models.CharField(max_length=15)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"finding {self.finding_id}: {self.kind} at {self.at:%Y-%m-%d %H:%M}"


class DetectionCursor(models.Model):
    """Where detection stands for one allocation: the next 5-minute bucket to evaluate and
    the runs in progress (below threshold or attached to a finding), so that each run of
    ``detect_waste`` continues exactly where the last stopped."""

    allocation = models.OneToOneField(
        "tenancy.Allocation", on_delete=models.CASCADE, related_name="+"
    )
    next_bucket = models.BigIntegerField(help_text="Epoch seconds of the next bucket.")
    next_hour = models.BigIntegerField(help_text="Epoch seconds of the next hour (low_efficiency).")
    state = models.JSONField(default=dict, blank=True)
    done = models.BooleanField(default=False, help_text="Allocation ended and fully evaluated.")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"allocation {self.allocation_id} at {self.next_bucket}"


class ProjectDetectionCursor(models.Model):
    """Where the project-level ``low_efficiency`` rule stands for one project: the next hour
    to evaluate and its run in progress. An hour is evaluated once, when the allocation
    cursors of the project's reporting jobs have passed it (see
    ``services.project_low_efficiency_detect``), so running detection twice changes nothing."""

    project = models.OneToOneField("tenancy.Project", on_delete=models.CASCADE, related_name="+")
    next_hour = models.BigIntegerField(help_text="Epoch seconds of the next hour to evaluate.")
    state = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"project {self.project_id} at {self.next_hour}"


class Channel(models.Model):
    """A team's Slack-compatible incoming webhook. A permanent failure (4xx) marks it broken
    until someone fixes the URL in the admin and clears the flag."""

    team = models.ForeignKey("tenancy.Team", on_delete=models.CASCADE, related_name="channels")
    kind = models.CharField(max_length=20, default="webhook")
    url = models.URLField(max_length=500)
    enabled = models.BooleanField(default=True)
    broken = models.BooleanField(default=False)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["team__name", "id"]

    def __str__(self) -> str:
        return f"{self.kind} for {self.team}"


class NotificationPreference(models.Model):
    """A user's opt-out from waste e-mails (owner alerts, reminders, the admin digest)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="waste_preference"
    )
    email_opt_out = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"{self.user}: {'opted out' if self.email_opt_out else 'subscribed'}"


class Notification(models.Model):
    """The outbox: one message to one recipient. ``key`` makes enqueueing idempotent; a
    sender claims a row with a conditional UPDATE that must change exactly one row, so two
    workers never send the same message."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    class Kind(models.TextChoices):
        OPENED = "opened", "Finding opened"
        REMINDER = "reminder", "Reminder"
        DIGEST = "digest", "Digest"

    key = models.CharField(max_length=200, unique=True)
    channel = models.CharField(max_length=20, help_text="Transport: email or webhook.")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    recipient = models.CharField(max_length=500)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="+",
    )
    webhook = models.ForeignKey(
        Channel, on_delete=models.CASCADE, null=True, blank=True, related_name="notifications"
    )
    finding = models.ForeignKey(
        Finding, on_delete=models.CASCADE, null=True, blank=True, related_name="notifications"
    )
    digest_since = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    claimed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.kind} via {self.channel} to {self.recipient} ({self.state})"
