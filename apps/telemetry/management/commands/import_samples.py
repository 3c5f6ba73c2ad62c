"""``manage.py import_samples FILE.csv``: import the wide samples CSV (DESIGN.md)."""

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from apps.telemetry.ingest_csv import CsvImportError, csv_lines_count
from apps.telemetry.services import samples_csv_import


class Command(BaseCommand):
    help = (
        "Import samples from a wide CSV (timestamp,node,gpu_uuid,gpu_model,util_pct,sm_active,"
        "mem_used_mib,mem_total_mib,power_w,job,project,team). Creates unknown nodes, GPUs, "
        "teams, projects and allocations; accepts history older than the live window; "
        "re-running it changes nothing. Bad rows are reported by line and skipped."
    )

    def add_arguments(self, parser):
        parser.add_argument("file")
        parser.add_argument("--cluster", default="imported", help="cluster of new nodes")
        parser.add_argument("--chunk-rows", type=int, default=100_000)
        parser.add_argument(
            "--show-rejects", type=int, default=50, help="rejected rows to list (default 50)"
        )
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, file: str, cluster: str, chunk_rows: int, show_rejects: int,
               no_progress: bool, **options):  # fmt: skip
        if chunk_rows < 1:
            raise CommandError("--chunk-rows must be at least 1")
        try:
            total = csv_lines_count(file)
        except OSError as exc:
            raise CommandError(f"{file}: {exc}") from None
        bar = tqdm(total=total, unit="rows", disable=no_progress, file=self.stderr._out)
        try:
            result = samples_csv_import(
                path=file, cluster=cluster, chunk_rows=chunk_rows, progress=bar.update
            )
        except CsvImportError as exc:
            raise CommandError(str(exc)) from None
        finally:
            bar.close()
        for line, reason in result.rejects[:show_rejects]:
            self.stderr.write(f"line {line}: {reason}")
        if result.rejected > show_rejects:
            self.stderr.write(f"... and {result.rejected - show_rejects} more rejected rows")
        self.stdout.write(
            f"{result.rows} rows: {result.accepted} samples stored, {result.duplicates} "
            f"duplicates, {result.rejected} rejected; {len(result.nodes)} nodes"
        )
