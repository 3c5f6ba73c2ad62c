"""What a user may see and do: decided here and only here.

Every page, API endpoint, CSV export and notification asks these selectors; none filters by
role on its own. Fleet admins and finance see every team; everyone else sees the teams they
are members of and the projects they own.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q, QuerySet

from apps.fleet.models import Gpu
from apps.tenancy.models import Allocation, Membership, Project, Team
from apps.tenancy.roles import FINANCE_GROUP, FLEET_ADMINS_GROUP, Role

User = AbstractBaseUser | AnonymousUser


def _group_names(user: User) -> frozenset[str]:
    # Cached on the user object: a page asks several selectors per request.
    cached = getattr(user, "_flopwatch_groups", None)
    if cached is None:
        cached = frozenset(user.groups.values_list("name", flat=True))
        user._flopwatch_groups = cached
    return cached


def user_is_fleet_admin(*, user: User) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    return user.is_superuser or FLEET_ADMINS_GROUP in _group_names(user)


def user_is_finance(*, user: User) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    return FINANCE_GROUP in _group_names(user)


def user_sees_all_teams(*, user: User) -> bool:
    """Fleet admins and finance see every team, project and cost."""
    return user_is_fleet_admin(user=user) or user_is_finance(user=user)


def user_roles(*, user: User) -> frozenset[Role]:
    """Every role the user holds (a user may hold several)."""
    if not user.is_authenticated or not user.is_active:
        return frozenset()
    roles: set[Role] = set()
    if user_is_fleet_admin(user=user):
        roles.add(Role.FLEET_ADMIN)
    if user_is_finance(user=user):
        roles.add(Role.FINANCE)
    if user.owned_projects.exists():
        roles.add(Role.PROJECT_OWNER)
    if user.memberships.exists():
        roles.add(Role.TEAM_MEMBER)
    return frozenset(roles)


def teams_visible_to(*, user: User) -> QuerySet[Team]:
    if user_sees_all_teams(user=user):
        return Team.objects.all()
    if not user.is_authenticated or not user.is_active:
        return Team.objects.none()
    return Team.objects.filter(Q(memberships__user=user) | Q(projects__owners=user)).distinct()


def projects_visible_to(*, user: User) -> QuerySet[Project]:
    if user_sees_all_teams(user=user):
        return Project.objects.all()
    if not user.is_authenticated or not user.is_active:
        return Project.objects.none()
    return Project.objects.filter(Q(team__memberships__user=user) | Q(owners=user)).distinct()


def allocations_visible_to(*, user: User) -> QuerySet[Allocation]:
    return Allocation.objects.filter(project__in=projects_visible_to(user=user))


def gpus_visible_to(*, user: User) -> QuerySet[Gpu]:
    """All GPUs for fleet admins and finance; for others the GPUs their projects have held."""
    if user_sees_all_teams(user=user):
        return Gpu.objects.all()
    return Gpu.objects.filter(
        allocation_gpus__allocation__project__in=projects_visible_to(user=user)
    ).distinct()


def user_can_act_on_project(*, user: User, project: Project) -> bool:
    """May acknowledge, snooze and resolve the project's findings."""
    if user_is_fleet_admin(user=user):
        return True
    if not user.is_authenticated or not user.is_active:
        return False
    if project.owners.filter(pk=user.pk).exists():
        return True
    return Membership.objects.filter(
        user=user, team_id=project.team_id, role=Membership.Role.MANAGER
    ).exists()


def user_can_configure_fleet(*, user: User) -> bool:
    return user_is_fleet_admin(user=user)
