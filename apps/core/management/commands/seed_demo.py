from django.core.management.base import BaseCommand

from apps.core.demo import DEMO_PASSWORD, DEMO_USERS, demo_organisation_seed


class Command(BaseCommand):
    help = "Create or update the demo organisation (teams, projects, fleet, one user per role)."

    def handle(self, *args, **options):
        counts = demo_organisation_seed()
        summary = ", ".join(f"{n} {what}" for what, n in counts.items())
        self.stdout.write(self.style.SUCCESS(f"Demo organisation ready: {summary}."))
        self.stdout.write(f"Demo users (password: {DEMO_PASSWORD}):")
        for user in DEMO_USERS:
            self.stdout.write(f"  {user.username:<8} {user.role}")
