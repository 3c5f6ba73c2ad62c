from django.shortcuts import render

from apps.tenancy.selectors import (
    projects_visible_to,
    teams_visible_to,
    user_can_configure_fleet,
    user_is_finance,
)


def home(request):
    """The landing page: what this user's roles let them see."""
    teams = teams_visible_to(user=request.user).prefetch_related("projects")
    projects = projects_visible_to(user=request.user).select_related("team")
    return render(
        request,
        "dashboard/home.html",
        {
            "teams": teams,
            "projects": projects,
            "can_configure_fleet": user_can_configure_fleet(user=request.user),
            "is_finance": user_is_finance(user=request.user),
        },
    )
