"""The chargeback CSV (contract in DESIGN.md): one row per team x project x GPU model and a
final TOTAL row whose money cells are the sums of the rounded rows.

Text cells are neutralised against CSV injection (OWASP): a cell starting with ``=``, ``+``,
``-``, ``@``, tab or carriage return is prefixed with a single quote, so no spreadsheet reads
it as a formula. Number cells are written by us from Decimals and stay plain numbers.
"""

from __future__ import annotations

import csv
from decimal import ROUND_HALF_UP, Decimal
from typing import TextIO

from apps.chargeback.selectors import StatementData, StatementRow

COLUMNS = [
    "month",
    "team",
    "cost_center",
    "project",
    "gpu_model",
    "allocated_gpu_hours",
    "busy_gpu_hours",
    "efficiency_pct",
    "rate_per_gpu_hour",
    "cost",
    "idle_gpu_hours",
    "idle_cost",
    "currency",
]
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_HOURS = Decimal("0.0001")
_RATE = Decimal("0.0001")


def csv_text_cell(value: str) -> str:
    """A text cell that no spreadsheet will evaluate."""
    if value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _number(value: Decimal, places: Decimal) -> str:
    return str(value.quantize(places, rounding=ROUND_HALF_UP))


def _rate_text(row: StatementRow) -> str:
    # Effective (weighted) rates can carry more than four places; keep what they need.
    rate = row.rate.normalize()
    if rate.as_tuple().exponent >= -4:
        return _number(row.rate, _RATE)
    return str(rate)


def csv_row(*, month: str, row: StatementRow, currency: str, total: bool = False) -> list[str]:
    efficiency = row.efficiency_pct
    return [
        csv_text_cell(month),
        "TOTAL" if total else csv_text_cell(row.team),
        "" if total else csv_text_cell(row.cost_center),
        "" if total else csv_text_cell(row.project),
        "" if total else csv_text_cell(row.gpu_model),
        _number(row.allocated_gpu_hours, _HOURS),
        _number(row.busy_gpu_hours, _HOURS),
        "" if efficiency is None else str(efficiency),
        "" if total else _rate_text(row),
        str(row.cost.quantize(Decimal("0.01"))),
        _number(row.idle_gpu_hours, _HOURS),
        str(row.idle_cost.quantize(Decimal("0.01"))),
        csv_text_cell(currency),
    ]


def statement_csv_write(*, statement: StatementData, out: TextIO) -> int:
    """Write the statement as CSV to ``out``; returns the number of rows (TOTAL excluded)."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    month = str(statement.month)
    for row in statement.rows:
        writer.writerow(csv_row(month=month, row=row, currency=statement.currency))
    writer.writerow(
        csv_row(month=month, row=statement.totals(), currency=statement.currency, total=True)
    )
    return len(statement.rows)
