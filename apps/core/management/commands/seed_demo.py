import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.core.demo import (
    DEMO_PASSWORD,
    DEMO_USERS,
    demo_history_seed,
    demo_node_tokens_issue,
    demo_organisation_seed,
    demo_pipeline_run,
)


class Command(BaseCommand):
    help = (
        "Create or update the demo organisation (teams, projects, fleet, rate card, one user "
        "per role), give it --history-days of simulated history through the real ingest path, "
        "roll it up and look for waste. Safe to run again: it only adds what is missing."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--tokens",
            type=Path,
            default=settings.VAR_DIR / "demo-tokens.json",
            help="Where to write hostname -> node token for the simulated agents.",
        )
        parser.add_argument(
            "--history-days",
            type=int,
            default=30,
            help="Days of simulated history to generate up to now (0: none). Default 30.",
        )
        parser.add_argument("--no-progress", action="store_true", help="No progress bars.")

    def handle(self, *args, **options):
        days = options["history_days"]
        if days < 0 or days > 400:
            raise CommandError(f"--history-days: expected 0 to 400, got {days}")
        counts = demo_organisation_seed()
        summary = ", ".join(f"{n} {what}" for what, n in counts.items())
        self.stdout.write(self.style.SUCCESS(f"Demo organisation ready: {summary}."))
        progress = not options["no_progress"]
        if days:
            started = time.monotonic()
            history = demo_history_seed(days=days, progress=progress)
            self.stdout.write(
                f"History: {history['batches']} batches, {history['accepted']:,} samples stored "
                f"({history['duplicates']:,} already there) in {time.monotonic() - started:.0f} s."
            )
            started = time.monotonic()
            for line in demo_pipeline_run(progress=progress).values():
                self.stdout.write(f"  {line}")
            # That took a while: bring the history up to now again (a few minutes of
            # samples), so the live agents carry on without a gap that would look like
            # silent GPUs.
            demo_history_seed(days=days, progress=False)
            demo_pipeline_run(progress=False)
            self.stdout.write(f"Pipeline caught up in {time.monotonic() - started:.0f} s.")
        issued = demo_node_tokens_issue(path=options["tokens"])
        self.stdout.write(f"Issued {issued} node tokens for the simulated agents.")
        self.stdout.write(f"Demo users (password: {DEMO_PASSWORD}):")
        for user in DEMO_USERS:
            self.stdout.write(f"  {user.username:<8} {user.role}")
