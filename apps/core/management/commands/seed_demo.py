from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from apps.core.demo import (
    DEMO_PASSWORD,
    DEMO_USERS,
    demo_node_tokens_issue,
    demo_organisation_seed,
)


class Command(BaseCommand):
    help = "Create or update the demo organisation (teams, projects, fleet, one user per role)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--tokens",
            type=Path,
            default=settings.VAR_DIR / "demo-tokens.json",
            help="Where to write hostname -> node token for the simulated agents.",
        )

    def handle(self, *args, **options):
        counts = demo_organisation_seed()
        issued = demo_node_tokens_issue(path=options["tokens"])
        self.stdout.write(f"Issued {issued} node tokens for the simulated agents.")
        summary = ", ".join(f"{n} {what}" for what, n in counts.items())
        self.stdout.write(self.style.SUCCESS(f"Demo organisation ready: {summary}."))
        self.stdout.write(f"Demo users (password: {DEMO_PASSWORD}):")
        for user in DEMO_USERS:
            self.stdout.write(f"  {user.username:<8} {user.role}")
