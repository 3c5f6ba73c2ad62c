"""manage.py export_chargeback --month YYYY-MM [--out FILE]"""

import io
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.chargeback.export import statement_csv_write
from apps.chargeback.selectors import BillingMonth, MonthError, statement_for_month


class Command(BaseCommand):
    help = (
        "Write the chargeback CSV of a month (every team; the frozen statement when the month "
        "is closed) to a file or standard output."
    )

    def add_arguments(self, parser):
        parser.add_argument("--month", required=True, help="billing month, YYYY-MM")
        parser.add_argument("--out", help="file to write (default: standard output)")

    def handle(self, *args, **options):
        try:
            month = BillingMonth.parse(options["month"])
        except MonthError as exc:
            raise CommandError(f"--month: {exc}") from None
        statement = statement_for_month(month=month)
        if not options["out"]:
            buffer = io.StringIO()
            statement_csv_write(statement=statement, out=buffer)
            self.stdout.write(buffer.getvalue(), ending="")
            return
        path = Path(options["out"])
        if not path.parent.is_dir():
            raise CommandError(f"--out: directory {path.parent} does not exist")
        with path.open("w", newline="", encoding="utf-8") as out:
            rows = statement_csv_write(statement=statement, out=out)
        state = "closed" if statement.is_closed else "open"
        total = statement.totals().cost
        self.stderr.write(
            f"{month} ({state}): {rows} rows, total {total} {statement.currency} -> {path}"
        )
