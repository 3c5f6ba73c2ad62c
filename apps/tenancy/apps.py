from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _ensure_role_groups(sender, **kwargs) -> None:
    from apps.tenancy.roles import role_groups_ensure

    role_groups_ensure()


class TenancyConfig(AppConfig):
    name = "apps.tenancy"
    label = "tenancy"
    verbose_name = "Tenancy"

    def ready(self) -> None:
        # After every migrate, so permissions of models added later are granted too.
        post_migrate.connect(_ensure_role_groups, dispatch_uid="tenancy-role-groups")
