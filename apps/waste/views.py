"""The findings pages and the signed e-mail action links. Views parse input and call the
services; what a user sees comes from ``findings_visible_to``, what they may do from
``user_can_act_on_project`` (inside the services)."""

from __future__ import annotations

from decimal import Decimal

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.db.models import Count, Sum
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from apps.tenancy.selectors import teams_visible_to, user_can_act_on_project, user_is_fleet_admin
from apps.waste import services
from apps.waste.forms import AcknowledgeForm, FindingFilterForm, ResolveForm, SnoozeForm
from apps.waste.links import LinkError, action_token_read
from apps.waste.models import Channel, Finding, NotificationPreference, Status
from apps.waste.selectors import findings_visible_to

ACTIVE = (Status.OPEN, Status.ACKNOWLEDGED, Status.SNOOZED)


def _can_act(user, finding: Finding) -> bool:
    if finding.project is None:
        return user_is_fleet_admin(user=user)
    return user_can_act_on_project(user=user, project=finding.project)


def findings(request):
    form = FindingFilterForm(request.GET or {"status": "active"})
    if not form.is_valid():
        return render(
            request, "waste/findings.html", {"form": form, "errors": form.errors}, status=400
        )
    data = form.cleaned_data
    qs = findings_visible_to(user=request.user).prefetch_related("gpus", "gpus__node")
    if data["rule"]:
        qs = qs.filter(rule=data["rule"])
    if data["severity"]:
        qs = qs.filter(severity=data["severity"])
    if data["status"] == "active" or "status" not in request.GET:
        qs = qs.filter(status__in=ACTIVE)
    elif data["status"]:
        qs = qs.filter(status=data["status"])
    teams = teams_visible_to(user=request.user)
    if data["team"]:
        qs = qs.filter(project__team__slug=data["team"])
    totals = qs.aggregate(n=Count("id"), cost=Sum("wasted_cost"), hours=Sum("wasted_gpu_hours"))
    # SQLite sums decimals as floats; the sum of cents is shown as cents.
    totals["cost"] = Decimal(str(totals["cost"] or 0)).quantize(Decimal("0.01"))
    rows = list(qs[:500])
    for finding in rows:
        finding.can_act = _can_act(request.user, finding)
    broken = Channel.objects.filter(broken=True, team__in=teams).select_related("team")
    return render(
        request,
        "waste/findings.html",
        {
            "form": form,
            "findings": rows,
            "totals": totals,
            "teams": teams,
            "broken_channels": broken,
            "snooze_form": SnoozeForm(),
            "opted_out": NotificationPreference.objects.filter(
                user=request.user, email_opt_out=True
            ).exists(),
        },
    )


@require_POST
def preferences(request):
    """Opt out of (or back into) waste e-mails: owner alerts, reminders, the digest."""
    opt_out = request.POST.get("email_opt_out") == "1"
    NotificationPreference.objects.update_or_create(
        user=request.user, defaults={"email_opt_out": opt_out}
    )
    messages.success(
        request, "You will get no more waste e-mails." if opt_out else "Waste e-mails are on."
    )
    return redirect("waste:findings")


def finding(request, pk: int):
    finding = get_object_or_404(findings_visible_to(user=request.user), pk=pk)
    return render(
        request,
        "waste/finding.html",
        {
            "finding": finding,
            "gpus": finding.gpus.select_related("node"),
            "events": finding.events.select_related("actor"),
            "can_act": _can_act(request.user, finding),
            "ack_form": AcknowledgeForm(),
            "snooze_form": SnoozeForm(),
            "broken_channels": Channel.objects.filter(
                broken=True, team_id=finding.project.team_id if finding.project else None
            ),
        },
    )


def _perform(*, finding: Finding, user, action: str, post) -> str:
    """Run one action; returns the message to show. Raises FindingActionError."""
    now = timezone.now()
    if action == "acknowledge":
        form = AcknowledgeForm(post)
        form.is_valid()
        services.finding_acknowledge(
            finding=finding, user=user, comment=form.cleaned_data.get("comment", ""), now=now
        )
        return "Finding acknowledged."
    if action == "snooze":
        form = SnoozeForm(post)
        if not form.is_valid():
            raise services.FindingActionError(
                "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items())
            )
        until = form.until_value(now=now)
        services.finding_snooze(finding=finding, user=user, until=until, now=now)
        return f"Finding snoozed until {until:%Y-%m-%d %H:%M} UTC."
    if action == "resolve":
        form = ResolveForm(post)
        form.is_valid()
        services.finding_resolve(
            finding=finding, user=user, comment=form.cleaned_data.get("comment", ""), now=now
        )
        return "Finding resolved."
    raise Http404("unknown action")


@require_POST
def finding_act(request, pk: int, action: str):
    finding = get_object_or_404(findings_visible_to(user=request.user), pk=pk)
    try:
        message = _perform(finding=finding, user=request.user, action=action, post=request.POST)
    except services.FindingActionError as exc:
        messages.error(request, str(exc))
        return redirect("waste:finding", pk=pk)
    messages.success(request, message)
    # Back to the list the action came from (with its filters), never to another site.
    target = request.POST.get("next", "")
    if target.startswith("/findings/") and "//" not in target:
        return redirect(target)
    return redirect("waste:finding", pk=pk)


@require_http_methods(["GET", "POST"])
def act_by_link(request, token: str):
    """GET shows what the link will do (mail scanners follow links); POST does it."""
    try:
        link = action_token_read(token=token)
    except LinkError as exc:
        return render(request, "waste/act.html", {"error": str(exc)}, status=400)
    user = get_user_model().objects.filter(pk=link.user_id, is_active=True).first()
    finding = (
        Finding.objects.select_related("project", "allocation").filter(pk=link.finding_id).first()
    )
    if user is None or finding is None:
        return render(
            request, "waste/act.html", {"error": "this link is no longer valid"}, status=400
        )
    if not _can_act(user, finding):
        return render(
            request,
            "waste/act.html",
            {"error": f"{user.get_username()} may not act on this project's findings"},
            status=403,
        )
    context = {
        "finding": finding,
        "action": link.action,
        "link_user": user,
        "snooze_form": SnoozeForm(),
    }
    if request.method == "POST":
        try:
            context["done"] = _perform(
                finding=finding, user=user, action=link.action, post=request.POST
            )
        except services.FindingActionError as exc:
            context["error"] = str(exc)
            return render(request, "waste/act.html", context, status=400)
    return render(request, "waste/act.html", context)
