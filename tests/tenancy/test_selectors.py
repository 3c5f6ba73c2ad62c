"""Role visibility: what each role may see is decided by the selectors, for every role."""

import pytest
from django.contrib.auth.models import AnonymousUser

from apps.tenancy.roles import Role
from apps.tenancy.selectors import (
    projects_visible_to,
    teams_visible_to,
    user_can_act_on_project,
    user_can_configure_fleet,
    user_roles,
)

pytestmark = pytest.mark.django_db

EXPECTED_PROJECTS = {
    "admin": {"a1", "a2", "b1"},
    "finance": {"a1", "a2", "b1"},
    "owner": {"a1"},
    "member": {"a1", "a2"},
    "manager": {"a1", "a2"},
    "outsider": {"b1"},
    "nobody": set(),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PROJECTS))
def test_projects_visible_to_each_role(personas, name):
    user = personas.all_users()[name]
    assert (
        set(projects_visible_to(user=user).values_list("slug", flat=True))
        == (EXPECTED_PROJECTS[name])
    )


@pytest.mark.parametrize(
    ("name", "teams"),
    [
        ("admin", {"team-a", "team-b"}),
        ("finance", {"team-a", "team-b"}),
        ("owner", {"team-a"}),
        ("member", {"team-a"}),
        ("outsider", {"team-b"}),
        ("nobody", set()),
    ],
)
def test_teams_visible_to_each_role(personas, name, teams):
    user = personas.all_users()[name]
    assert set(teams_visible_to(user=user).values_list("slug", flat=True)) == teams


def test_anonymous_sees_nothing(personas):
    assert not projects_visible_to(user=AnonymousUser()).exists()
    assert not teams_visible_to(user=AnonymousUser()).exists()
    assert user_roles(user=AnonymousUser()) == frozenset()


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("admin", True),
        ("owner", True),
        ("manager", True),
        ("member", False),
        ("finance", False),
        ("outsider", False),
        ("nobody", False),
    ],
)
def test_who_may_act_on_project_findings(personas, name, allowed):
    user = personas.all_users()[name]
    assert user_can_act_on_project(user=user, project=personas.project_a1) is allowed


def test_only_fleet_admins_configure_the_fleet(personas):
    allowed = {n for n, u in personas.all_users().items() if user_can_configure_fleet(user=u)}
    assert allowed == {"admin"}


def test_roles(personas):
    assert user_roles(user=personas.admin) == {Role.FLEET_ADMIN}
    assert user_roles(user=personas.finance) == {Role.FINANCE}
    assert user_roles(user=personas.owner) == {Role.PROJECT_OWNER}
    assert user_roles(user=personas.member) == {Role.TEAM_MEMBER}


def test_inactive_user_sees_nothing(personas):
    personas.admin.is_active = False
    personas.admin.save()
    assert not projects_visible_to(user=personas.admin).exists()
