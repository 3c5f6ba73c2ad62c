"""The chargeback page, its CSV and the close/reopen actions: parse, call, render."""

from __future__ import annotations

import io
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from apps.chargeback import charts
from apps.chargeback.export import statement_csv_write
from apps.chargeback.selectors import (
    BillingMonth,
    MonthError,
    StatementNotVisible,
    chargeback_history,
    month_close_history,
    statement_for_month,
    statement_visible_to,
    user_can_close_months,
    user_can_reopen_months,
)
from apps.chargeback.services import MonthCloseError, month_close, month_reopen
from apps.tenancy.selectors import teams_visible_to

HISTORY_MONTHS = 6


def _visible(request, month: BillingMonth, team_slug: str | None):
    try:
        return statement_visible_to(
            statement=statement_for_month(month=month), user=request.user, team_slug=team_slug
        )
    except StatementNotVisible as exc:
        if exc.status == 404:
            raise Http404(str(exc)) from None
        raise PermissionDenied(str(exc)) from None


@require_GET
def statement(request):
    current = BillingMonth.containing(timezone.now())
    text = request.GET.get("month", "").strip()
    try:
        month = BillingMonth.parse(text) if text else current
    except MonthError as exc:
        return render(
            request,
            "chargeback/statement.html",
            {"month_error": str(exc), "current_month": current},
            status=400,
        )
    team_slug = request.GET.get("team", "").strip() or None
    data = _visible(request, month, team_slug)
    history = chargeback_history(
        user=request.user, last=month, months=HISTORY_MONTHS, team_slug=team_slug
    )
    csv_url = reverse("chargeback:csv", kwargs={"month": str(month)})
    if team_slug:
        csv_url += "?" + urlencode({"team": team_slug})
    context = {
        "month": month,
        "current_month": current,
        "previous_month": month.previous(),
        "next_month": month.next() if month < current else None,
        "statement": data,
        "totals": data.totals(),
        "team_slug": team_slug,
        "teams": teams_visible_to(user=request.user).order_by("name"),
        "history": history,
        "chart_json": charts.figure_json(
            charts.cost_vs_busy_figure(history=history, currency=data.currency)
        ),
        "uses_charts": bool(history["teams"]),
        "closes": month_close_history(month=month),
        "month_over": month.end() <= timezone.now(),
        "can_close": user_can_close_months(user=request.user),
        "can_reopen": user_can_reopen_months(user=request.user),
        "csv_url": csv_url,
        # Models used without a price cost nothing: say so rather than bill zero silently.
        "unpriced": sorted(
            {row.gpu_model for row in data.rows if row.rate == 0 and row.allocated_gpu_hours}
        ),
    }
    return render(request, "chargeback/statement.html", context)


@require_GET
def statement_csv(request, month: str):
    try:
        billing_month = BillingMonth.parse(month)
    except MonthError as exc:
        raise Http404(str(exc)) from None
    team_slug = request.GET.get("team", "").strip() or None
    data = _visible(request, billing_month, team_slug)
    buffer = io.StringIO()
    statement_csv_write(statement=data, out=buffer)
    response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    suffix = f"-{team_slug}" if team_slug else ""
    response["Content-Disposition"] = (
        f'attachment; filename="flopwatch-chargeback-{billing_month}{suffix}.csv"'
    )
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _month_or_404(month: str) -> BillingMonth:
    try:
        return BillingMonth.parse(month)
    except MonthError as exc:
        raise Http404(str(exc)) from None


def _back(month: BillingMonth):
    return redirect(f"{reverse('chargeback:statement')}?month={month}")


@require_POST
def close(request, month: str):
    billing_month = _month_or_404(month)
    if not user_can_close_months(user=request.user):
        raise PermissionDenied("only finance closes months")
    try:
        _, created = month_close(month=billing_month, user=request.user)
    except MonthCloseError as exc:
        messages.error(request, str(exc))
        return _back(billing_month)
    if created:
        messages.success(request, f"{billing_month} is closed; its statement is frozen.")
    else:
        messages.info(request, f"{billing_month} was already closed.")
    return _back(billing_month)


@require_POST
def reopen(request, month: str):
    billing_month = _month_or_404(month)
    if not user_can_reopen_months(user=request.user):
        raise PermissionDenied("only fleet admins reopen months")
    try:
        month_reopen(month=billing_month, user=request.user, reason=request.POST.get("reason", ""))
    except MonthCloseError as exc:
        messages.error(request, str(exc))
        return _back(billing_month)
    messages.success(request, f"{billing_month} is open again; its statement is live.")
    return _back(billing_month)
