"""``manage.py detect_waste``: run waste detection now, synchronously, and send what is due."""

import datetime as dt

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime
from tqdm import tqdm

from apps.waste.services import notifications_send_due, waste_detect


class Command(BaseCommand):
    help = "Evaluate the waste rules up to now (or --now), queue and send notifications."

    def add_arguments(self, parser):
        parser.add_argument("--now", help="Evaluate as of this ISO-8601 time (UTC if naive).")
        parser.add_argument("--no-send", action="store_true", help="Queue but do not send.")

    def handle(self, *args, **options):
        now = None
        if options["now"]:
            now = parse_datetime(options["now"])
            if now is None:
                raise CommandError(f"--now: expected an ISO-8601 time, got {options['now']!r}")
            if now.tzinfo is None:
                now = now.replace(tzinfo=dt.UTC)

        def progress(items):
            return tqdm(items, desc="allocations", unit="alloc", disable=len(items) < 50)

        summary = waste_detect(now=now, progress=progress)
        self.stdout.write(
            f"detect_waste: {summary.allocations} allocations, {summary.buckets} buckets, "
            f"{summary.projects} projects; "
            f"findings opened {summary.opened} (late {summary.late}), resolved {summary.resolved}; "
            f"silent GPUs opened {summary.silent_opened}, resolved {summary.silent_resolved}; "
            f"notifications queued {summary.notifications}"
        )
        if not options["no_send"]:
            sent = notifications_send_due(now=now)
            self.stdout.write(
                f"notifications: sent {sent.sent}, retrying {sent.retried}, failed {sent.failed}, "
                f"skipped {sent.skipped}"
            )
