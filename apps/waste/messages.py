"""What a notification says: the context every channel renders from, so an e-mail, a webhook
post and the findings page show the same numbers."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.conf import settings
from django.urls import reverse

from apps.waste.links import action_url_make
from apps.waste.models import Finding, Rule, Status

RULE_EXPLAINED = {
    Rule.IDLE_ALLOCATION: "its GPUs have been idle (activity below the idle threshold)",
    Rule.MEMORY_HELD_IDLE: "its GPUs hold memory (a loaded model) but do no work",
    Rule.LOW_EFFICIENCY: "its efficiency over the trailing window is below the policy's floor",
    Rule.PARTIAL_USE: "some of its GPUs sit idle while the others work",
    Rule.OVERSIZED_GPU: "it uses a small part of a large GPU (a smaller GPU would do)",
    Rule.SILENT_GPU: "the GPU has stopped reporting",
}
# A project-level finding judges the project as a whole: its jobs pooled, independently of
# the findings a job may have of its own (see ``detectors.ProjectWalk``); the text says so, so
# that an owner who also got an alert about one of its jobs knows why there are two.
PROJECT_RULE_EXPLAINED = {
    Rule.LOW_EFFICIENCY: (
        "its jobs together, pooled over their GPU-hours, are below the policy's efficiency "
        "floor over the trailing window. This is about the project as a whole, however small "
        "each job; a single job can have a finding of its own as well, and this one stays open "
        "(without a new alert) while the project's window stays low"
    ),
}


def _project_numbers(finding: Finding) -> str:
    """ "12 % efficient over the last 7 days (64.0 GPU-hours)" from a project finding's detail."""
    detail = finding.detail or {}
    if detail.get("efficiency") is None or detail.get("window_days") is None:
        return ""
    return (
        f"{detail['efficiency'] * 100:.0f} % efficient over the last {detail['window_days']} "
        f"days ({detail.get('window_gpu_hours', 0):.1f} GPU-hours)"
    )


def finding_url(*, finding: Finding) -> str:
    return settings.FLOPWATCH_BASE_URL + reverse("waste:finding", kwargs={"pk": finding.pk})


def finding_context(*, finding: Finding, user=None) -> dict:
    gpus = [
        {"host": g.node.hostname, "index": g.index, "model": g.model_name, "uuid": g.uuid}
        for g in finding.gpus.select_related("node").order_by("node__hostname", "index")
    ]
    allocation = finding.allocation
    subject = allocation.external_id if allocation else (gpus[0]["host"] if gpus else "-")
    explained = RULE_EXPLAINED.get(finding.rule, "")
    if finding.is_project_level:
        subject = "all jobs"
        explained = PROJECT_RULE_EXPLAINED.get(finding.rule, explained)
        numbers = _project_numbers(finding)
        if numbers:
            explained = f"{numbers}: {explained}"
    project = finding.project
    context = {
        "finding": finding,
        "rule": finding.get_rule_display(),
        "explained": explained,
        "project": project.name if project else "(no project)",
        "team": project.team.name if project else "",
        "job": allocation.external_id if allocation else "",
        "job_user": allocation.user_name if allocation else "",
        "gpus": gpus,
        "started": finding.started,
        "last_seen": finding.last_seen,
        "ended": finding.ended,
        "wasted_gpu_hours": f"{finding.wasted_gpu_hours:.1f}",
        "wasted_cost": finding.wasted_cost,
        "currency": settings.FLOPWATCH_CURRENCY,
        "severity": finding.get_severity_display(),
        "url": finding_url(finding=finding),
        "headline": f"{finding.get_rule_display()}: {subject} in {project.name if project else 'the fleet'}",
        "reminder": False,
    }
    if user is not None and finding.status != Status.RESOLVED:
        context["acknowledge_url"] = action_url_make(
            finding_id=finding.pk, user_id=user.pk, action="acknowledge"
        )
        context["snooze_url"] = action_url_make(
            finding_id=finding.pk, user_id=user.pk, action="snooze"
        )
    return context


def digest_context(*, user, since: dt.datetime | None) -> dict:
    from apps.waste.selectors import findings_visible_to

    visible = findings_visible_to(user=user).prefetch_related("gpus")
    open_findings = list(
        visible.filter(status__in=(Status.OPEN, Status.ACKNOWLEDGED, Status.SNOOZED)).order_by(
            "-wasted_cost", "-started"
        )
    )
    late = list(visible.filter(detected_late=True, detected_at__gte=since)) if since else []
    total = sum((f.wasted_cost for f in open_findings), Decimal("0.00"))
    return {
        "open_findings": open_findings,
        "open_count": len(open_findings),
        "late_findings": late,
        "late_cost": sum((f.wasted_cost for f in late), Decimal("0.00")),
        "total_cost": total,
        "currency": settings.FLOPWATCH_CURRENCY,
        "since": since,
        "url": settings.FLOPWATCH_BASE_URL + reverse("waste:findings"),
        "base_url": settings.FLOPWATCH_BASE_URL,
    }


def webhook_payload(*, context: dict) -> dict:
    """Slack's incoming-webhook format: ``text`` with mrkdwn; understood by its clones."""
    gpus = ", ".join(f"{g['host']}/{g['index']}" for g in context["gpus"]) or "-"
    lines = [
        f"*<{context['url']}|{context['headline']}>* ({context['severity']})",
        f"{context['project']} ({context['team']}): {context['explained']}.",
        f"Job {context['job'] or '-'} · GPUs {gpus} · since {context['started']:%Y-%m-%d %H:%M} UTC",
        f"Wasted so far: {context['wasted_gpu_hours']} GPU-h, "
        f"{context['wasted_cost']} {context['currency']}",
    ]
    return {"text": "\n".join(lines)}
