"""``manage.py create_service_token NAME``: a token for schedulers to post allocations."""

from django.core.management.base import BaseCommand, CommandError

from apps.fleet.models import ServiceToken
from apps.fleet.services import service_token_create, service_token_revoke


class Command(BaseCommand):
    help = (
        "Create a service token (Slurm prolog/epilog, Kubernetes controller) for "
        "POST /api/v1/allocations and print it once. --revoke revokes the named token."
    )

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--revoke", action="store_true")

    def handle(self, *args, name: str, revoke: bool, **options):
        found = ServiceToken.objects.filter(name=name).first()
        if revoke:
            if found is None:
                raise CommandError(f"no service token {name!r}")
            service_token_revoke(service_token=found)
            self.stdout.write(f"revoked service token {name}")
            return
        if found is not None:
            raise CommandError(f"a service token named {name!r} exists; revoke it or pick a name")
        _, token = service_token_create(name=name)
        self.stderr.write(f"service token {name} (shown once):")
        self.stdout.write(token)
