"""``manage.py rollup``: run all pending rollup work now (and optionally prune)."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from tqdm import tqdm


class Command(BaseCommand):
    help = (
        "Recompute every pending 5-minute bucket and the hourly, daily usage and capacity "
        "rows it touches, synchronously. --prune also applies the retention settings."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--prune",
            action="store_true",
            help="Also delete 5-minute and hourly rollups past their retention.",
        )
        parser.add_argument(
            "--chunk", type=int, default=None, help="Pending buckets per transaction."
        )

    def handle(self, *args, prune: bool = False, chunk: int | None = None, **options):
        from apps.telemetry.models import RollupPending
        from apps.telemetry.rollups import rollups_prune, rollups_run_pending

        total = RollupPending.objects.count()
        bar = tqdm(
            total=total,
            unit="bucket",
            desc="rollup",
            disable=total < 10_000 or options["verbosity"] < 1,
        )

        def progress(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        summary = rollups_run_pending(chunk=chunk, progress=progress)
        bar.close()
        if summary.get("busy"):
            self.stdout.write("another rollup is running; it will do the pending work")
        self.stdout.write(
            f"rolled up {summary['buckets']} pending buckets in {summary['chunks']} chunk(s): "
            f"{summary['gpu_rows']} 5-minute rows, {summary['hourly_rows']} hourly rows, "
            f"{summary['days']} day(s) of usage and capacity in {summary['seconds']} s"
        )
        if prune:
            pruned = rollups_prune()
            self.stdout.write(
                f"pruned {pruned['gpu_5m']} 5-minute and {pruned['hourly']} hourly rows"
            )
