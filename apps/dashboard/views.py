"""The pages. Each view parses the shared filters, asks the selectors (always through the
visibility selectors of ``apps.tenancy``) and renders; objects a user may not see are 404,
pages a role may not open are 403."""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path

import plotly
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET

from apps.chargeback.selectors import RateLookup
from apps.dashboard import charts
from apps.dashboard import selectors as sel
from apps.dashboard.filters import RANGE_LABELS, FilterError, filters_parse
from apps.fleet.models import Gpu
from apps.tenancy.selectors import (
    allocations_visible_to,
    gpus_visible_to,
    projects_visible_to,
    teams_visible_to,
    user_sees_all_teams,
)


def _projects_scope(user):
    """The visibility filter for efficiency_by: None (everything) for whole-fleet roles."""
    return None if user_sees_all_teams(user=user) else projects_visible_to(user=user)


def with_filters(*, keep: tuple[str, ...] = ()):
    """Parse the shared filters; a bad value answers 400 naming the parameter."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            try:
                filters = filters_parse(query=request.GET, keep=keep)
            except FilterError as exc:
                return render(
                    request, "dashboard/bad_filters.html", {"errors": exc.errors}, status=400
                )
            return view(request, filters, *args, **kwargs)

        return wrapper

    return decorator


def _base_context(request, filters) -> dict:
    return {
        "filters": filters,
        "range_labels": RANGE_LABELS,
        "clusters": sel.clusters_known(),
        "gpu_models": sel.gpu_models_known(),
        "whole_fleet": user_sees_all_teams(user=request.user),
    }


@require_GET
@with_filters()
def home(request, filters):
    """Overview: what is running now, how well, what it costs, and the worst waste."""
    user = request.user
    scope = _projects_scope(user)
    # One "now" for every window, so a window equal to the page's range is the same range.
    now = filters.end if filters.range_key != "custom" else timezone.now()
    teams = teams_visible_to(user=user)
    projects = projects_visible_to(user=user).select_related("team")
    # The page's range feeds the team table; a KPI window equal to it reuses its rows
    # (efficiency_by is the expensive part of this page).
    rates = RateLookup.load()  # once for the five ranges below
    range_rows = sel.efficiency_rows(group="team", filters=filters, projects=scope, rates=rates)
    efficiency = {}
    for key in ("24h", "7d", "30d"):
        if key == filters.range_key:
            efficiency[key] = sel.totals_of(range_rows)
            continue
        windowed = filters_parse(query={"range": key}, now=now)
        efficiency[key] = sel.totals_of(
            sel.efficiency_rows(
                group="team",
                filters=filters,
                projects=scope,
                start=windowed.start,
                end=now,
                rates=rates,
            )
        )
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    month = sel.totals_of(
        sel.efficiency_rows(
            group="team", filters=filters, projects=scope, start=month_start, end=now, rates=rates
        )
    )
    whole_fleet = user_sees_all_teams(user=user)
    gpus = gpus_visible_to(user=user)
    capacity = sel.capacity_series(filters=filters, projects=scope, whole_fleet=whole_fleet)
    leaderboard = sel.team_leaderboard(teams=teams, rows=range_rows, sort="efficiency")
    context = _base_context(request, filters) | {
        "teams": teams,
        "projects": projects,
        "now_counts": sel.gpus_now(gpus=gpus, filters=filters, now=now),
        "efficiency": efficiency,
        "month": month,
        "month_start": month_start,
        "findings": sel.findings_open(projects=scope),
        "capacity_json": charts.figure_json(charts.capacity_figure(capacity)),
        "capacity_has_data": any(capacity.busy) or any(capacity.idle_allocated),
        "leaderboard": leaderboard,
        "has_gpus": Gpu.objects.exists(),
        "uses_charts": True,
    }
    return render(request, "dashboard/overview.html", context)


@require_GET
@with_filters(keep=("sort",))
def teams(request, filters):
    user = request.user
    sort = request.GET.get("sort", "efficiency")
    if sort not in sel.TEAM_SORTS:
        return render(
            request,
            "dashboard/bad_filters.html",
            {"errors": [("sort", f"expected one of {', '.join(sel.TEAM_SORTS)}, got {sort!r}")]},
            status=400,
        )
    rows = sel.efficiency_rows(group="team", filters=filters, projects=_projects_scope(user))
    leaderboard = sel.team_leaderboard(teams=teams_visible_to(user=user), rows=rows, sort=sort)
    context = _base_context(request, filters) | {
        "leaderboard": leaderboard,
        "sort": sort,
        "totals": sel.totals_of(rows),
    }
    return render(request, "dashboard/teams.html", context)


@require_GET
@with_filters()
def projects(request, filters):
    table = sel.project_table(projects=projects_visible_to(user=request.user), filters=filters)
    context = _base_context(request, filters) | {"projects": table}
    return render(request, "dashboard/projects.html", context)


@require_GET
@with_filters()
def team(request, filters, slug: str):
    user = request.user
    team = get_object_or_404(teams_visible_to(user=user), slug=slug)
    projects = projects_visible_to(user=user).filter(team=team)
    table = sel.project_table(projects=projects, filters=filters)
    trend = sel.efficiency_trend(filters=filters, projects=projects)
    context = _base_context(request, filters) | {
        "team": team,
        "projects": table,
        "totals": sel.totals_of(r["row"] for r in table if r["row"] is not None),
        "trend_json": charts.figure_json(charts.trend_figure(trend)),
        "trend_has_data": any(v is not None for v in trend.efficiency),
        "uses_charts": True,
    }
    return render(request, "dashboard/team.html", context)


@require_GET
@with_filters()
def project(request, filters, slug: str):
    user = request.user
    project = get_object_or_404(projects_visible_to(user=user).select_related("team"), slug=slug)
    one = type(project).objects.filter(pk=project.pk)
    rows = sel.efficiency_rows(group="project", filters=filters, projects=one)
    trend = sel.efficiency_trend(filters=filters, projects=one)
    heatmap = sel.project_heatmap(project=project, filters=filters)
    context = _base_context(request, filters) | {
        "project": project,
        "totals": sel.totals_of(rows),
        "jobs": sel.allocation_table(project=project, filters=filters),
        "findings": sel.findings_open(projects=one, limit=20),
        "trend_json": charts.figure_json(charts.trend_figure(trend)),
        "trend_has_data": any(v is not None for v in trend.efficiency),
        "heatmap_json": charts.figure_json(charts.heatmap_figure(heatmap)),
        "heatmap": heatmap,
        "heatmap_has_data": any(v is not None for row in heatmap.z for v in row),
        "uses_charts": True,
    }
    return render(request, "dashboard/project.html", context)


@require_GET
@with_filters()
def job(request, filters, pk: int):
    allocation = get_object_or_404(
        allocations_visible_to(user=request.user).select_related("project__team"), pk=pk
    )
    gpus = list(allocation.gpus.select_related("node__cluster").order_by("node__hostname", "index"))
    end = allocation.end or timezone.now()
    lines = sel.gpu_lines(
        gpus=gpus, start=allocation.start, end=max(end, allocation.start + dt.timedelta(minutes=5))
    )
    context = _base_context(request, filters) | {
        "allocation": allocation,
        "gpus": gpus,
        "row": sel.allocation_figures(allocation=allocation, filters=filters),
        "duration_s": (end - allocation.start).total_seconds(),
        "charts": _line_charts(lines),
        "has_data": any(v is not None for s in lines.series for v in s["activity"]),
        "uses_charts": True,
    }
    return render(request, "dashboard/job.html", context)


def _line_charts(lines) -> list[dict]:
    return [
        {
            "id": field,
            "title": title,
            "json": charts.figure_json(
                charts.gpu_lines_figure(lines, field=field, y_title=y_title, unit=unit)
            ),
        }
        for field, title, y_title, unit in (
            ("activity", "Activity", "activity %", "%"),
            ("memory", "Memory used", "GiB", "GiB"),
            ("power", "Power", "W", "W"),
        )
    ]


def _fleet_context(request, filters) -> dict:
    # URLs built once, not per row: the table has a row per GPU and is re-rendered every 5 s.
    return {
        "clusters_state": sel.fleet_state(gpus=gpus_visible_to(user=request.user), filters=filters),
        "refreshed_at": timezone.now(),
        "query": filters.query(),
        "gpu_prefix": reverse("gpu", args=["x"])[:-2],
        "job_prefix": reverse("job", args=[0])[:-2],
    }


def _require_fleet_view(user) -> None:
    # The fleet page shows every GPU and who holds it: only roles that see every team.
    if not user_sees_all_teams(user=user):
        raise PermissionDenied("The fleet page is for fleet admins and finance.")


@require_GET
@with_filters()
def fleet(request, filters):
    _require_fleet_view(request.user)
    context = _base_context(request, filters) | _fleet_context(request, filters)
    return render(request, "dashboard/fleet.html", context)


@require_GET
@with_filters()
def fleet_fragment(request, filters):
    """The fleet table alone, for the page to swap in place every few seconds."""
    _require_fleet_view(request.user)
    context = {"filters": filters} | _fleet_context(request, filters)
    response = render(request, "dashboard/_fleet_table.html", context)
    response["Cache-Control"] = "no-store"
    return response


@require_GET
@with_filters()
def gpu(request, filters, uuid: str):
    user = request.user
    gpu = get_object_or_404(gpus_visible_to(user=user).select_related("node__cluster"), uuid=uuid)
    lines = sel.gpu_lines(gpus=[gpu], start=filters.start, end=filters.end)
    last = sel.gpu_last_bucket(gpu=gpu)
    context = _base_context(request, filters) | {
        "gpu": gpu,
        "allocations": sel.gpu_allocations(gpu=gpu, projects=_projects_scope(user)),
        "charts": _line_charts(lines),
        "has_data": any(v is not None for s in lines.series for v in s["activity"]),
        "last_bucket": dt.datetime.fromtimestamp(last, tz=dt.UTC) if last else None,
        "uses_charts": True,
    }
    return render(request, "dashboard/gpu.html", context)


# --- plotly.js from the installed package -----------------------------------------------------

PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


@require_GET
@cache_control(max_age=365 * 86400, immutable=True, public=True)
def plotly_js(request, version: str):
    """plotly.min.js as shipped with the plotly package (no CDN); the version is in the URL,
    so browsers may cache it for a year."""
    if version != plotly.__version__:
        raise Http404("unknown plotly version")
    if not PLOTLY_JS.exists():  # pragma: no cover - a broken install
        return HttpResponse(plotly.offline.get_plotlyjs(), content_type="text/javascript")
    return FileResponse(PLOTLY_JS.open("rb"), content_type="text/javascript")
