"""The four roles of flopwatch and the Django groups behind the two fleet-wide ones.

- team member: a ``Membership`` in a team; sees that team's projects.
- project owner: in ``Project.owners``; also acknowledges findings and receives alerts.
- fleet admin: in the "Fleet admins" group (or a superuser); sees and configures everything.
- finance: in the "Finance" group; sees all costs, exports chargeback, edits the rate card,
  but does not configure the fleet.
"""

from __future__ import annotations

from enum import StrEnum

FLEET_ADMINS_GROUP = "Fleet admins"
FINANCE_GROUP = "Finance"

# Apps whose models each group may change in the admin; view rights cover the rest.
_FLEET_ADMIN_APPS = ("fleet", "tenancy", "telemetry", "waste", "chargeback", "auth")
_FINANCE_APPS = ("chargeback",)
_FINANCE_VIEW_APPS = ("tenancy",)


class Role(StrEnum):
    FLEET_ADMIN = "fleet_admin"
    FINANCE = "finance"
    PROJECT_OWNER = "project_owner"
    TEAM_MEMBER = "team_member"


def role_groups_ensure() -> None:
    """Create the two groups and give them their admin permissions (idempotent)."""
    from django.contrib.auth.models import Group, Permission

    admins, _ = Group.objects.get_or_create(name=FLEET_ADMINS_GROUP)
    admins.permissions.set(Permission.objects.filter(content_type__app_label__in=_FLEET_ADMIN_APPS))
    finance, _ = Group.objects.get_or_create(name=FINANCE_GROUP)
    finance.permissions.set(
        Permission.objects.filter(content_type__app_label__in=_FINANCE_APPS)
        | Permission.objects.filter(
            content_type__app_label__in=_FINANCE_VIEW_APPS, codename__startswith="view_"
        )
    )
