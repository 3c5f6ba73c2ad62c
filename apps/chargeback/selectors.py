"""Reads of the rate card (the price of a GPU-hour for a model, a cluster and a day) and the
monthly chargeback statements computed from the rollups and the rate card."""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import re
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

from django.conf import settings

from apps.chargeback.models import GpuModel, GpuModelAlias, MonthClose, Rate

ZERO = Decimal("0")


def gpu_model_name_normalise(name: str) -> str:
    """Case and spacing do not make another model: "NVIDIA  h100" == "nvidia H100"."""
    return " ".join(name.split()).lower()


@dataclass
class RateLookup:
    """The whole rate card in memory (it has tens of rows) for many look-ups in one request.

    ``rate(model_name=..., cluster_id=..., day=...)`` returns the price per GPU-hour in force
    on that day: the newest cluster-specific rate effective by then, else the newest fleet-wide
    one, else zero (an unpriced model costs nothing rather than failing a report).
    """

    aliases: dict[str, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    # (gpu_model_id, cluster_id or None) -> sorted effective dates and their prices
    dates: dict[tuple[int, int | None], list[dt.date]] = field(default_factory=dict)
    prices: dict[tuple[int, int | None], list[Decimal]] = field(default_factory=dict)

    @classmethod
    def load(cls) -> RateLookup:
        lookup = cls()
        lookup.aliases = {alias.name: alias.gpu_model_id for alias in GpuModelAlias.objects.all()}
        for gpu_model in GpuModel.objects.all():
            lookup.names[gpu_model.pk] = gpu_model.name
            # A model's own name and slug mean it too, so a fresh model needs no alias rows.
            for spelling in (gpu_model.name, gpu_model.slug):
                lookup.aliases.setdefault(gpu_model_name_normalise(spelling), gpu_model.pk)
        grouped: dict[tuple[int, int | None], list[tuple[dt.date, Decimal]]] = defaultdict(list)
        for rate in Rate.objects.order_by("effective_from"):
            grouped[(rate.gpu_model_id, rate.cluster_id)].append(
                (rate.effective_from, rate.price_per_gpu_hour)
            )
        for key, entries in grouped.items():
            lookup.dates[key] = [day for day, _ in entries]
            lookup.prices[key] = [price for _, price in entries]
        return lookup

    def gpu_model_id(self, *, model_name: str) -> int | None:
        return self.aliases.get(gpu_model_name_normalise(model_name))

    def gpu_model_label(self, *, model_name: str) -> str:
        """The rate card's name of a reported model, or the reported name when it has none."""
        gpu_model_id = self.gpu_model_id(model_name=model_name)
        if gpu_model_id is None or gpu_model_id not in self.names:
            return " ".join(model_name.split())
        return self.names[gpu_model_id]

    def effective_dates(self) -> set[dt.date]:
        """Every date on which some price changes (statements split their month there)."""
        return {day for dates in self.dates.values() for day in dates}

    def _in_force(self, key: tuple[int, int | None], day: dt.date) -> Decimal | None:
        dates = self.dates.get(key)
        if not dates:
            return None
        position = bisect.bisect_right(dates, day)
        return self.prices[key][position - 1] if position else None

    def rate(self, *, model_name: str, cluster_id: int | None, day: dt.date) -> Decimal:
        gpu_model_id = self.gpu_model_id(model_name=model_name)
        if gpu_model_id is None:
            return ZERO
        if cluster_id is not None:
            price = self._in_force((gpu_model_id, cluster_id), day)
            if price is not None:
                return price
        price = self._in_force((gpu_model_id, None), day)
        return ZERO if price is None else price

    def gpu_rate(
        self, *, model_name: str, mig_profile: str, cluster_id: int | None, day: dt.date
    ) -> Decimal:
        """The price of one hour of this GPU: the model's rate, times the instance's fraction
        of its parent for MIG instances (``model_name`` is the parent's model)."""
        rate = self.rate(model_name=model_name, cluster_id=cluster_id, day=day)
        return rate * mig_fraction(mig_profile=mig_profile, model_name=model_name)


# Compute slices of a whole GPU per MIG-capable model family: a "3g.40gb" instance of an H100
# is 3/7 of the GPU, a "2g.12gb" of an A30 is 2/4.
_MIG_SLICES = {"a30": 4}
_MIG_DEFAULT_SLICES = 7
_MIG_PROFILE = re.compile(r"(?:^|\D)(\d+)g\.", re.IGNORECASE)


def mig_fraction(*, mig_profile: str, model_name: str = "") -> Decimal:
    """The fraction of its parent GPU that a MIG instance is priced at (1 for a whole GPU).

    A profile names its compute slices ("1g.10gb", "3g.40gb", "1c.3g.40gb" counts 3);
    an unreadable profile is priced as a whole GPU rather than as free.
    """
    if not mig_profile:
        return Decimal(1)
    matches = _MIG_PROFILE.findall(mig_profile)
    if not matches:
        return Decimal(1)
    slices = _MIG_DEFAULT_SLICES
    normalised = gpu_model_name_normalise(model_name)
    for family, family_slices in _MIG_SLICES.items():
        if family in normalised.split() or f" {family}" in f" {normalised}":
            slices = family_slices
    return min(Decimal(1), Decimal(int(matches[-1])) / Decimal(slices))


def gpu_hour_rate(*, model_name: str, cluster_id: int | None, day: dt.date) -> Decimal:
    """The price of one GPU-hour (see ``RateLookup.rate``); load a RateLookup for many."""
    return RateLookup.load().rate(model_name=model_name, cluster_id=cluster_id, day=day)


# --- Monthly statements -----------------------------------------------------------------------

CENT = Decimal("0.01")
HOURS_PLACES = Decimal("0.000001")  # stored precision of GPU-hours (3.6 ms)
RATE_PLACES = Decimal("0.000001")
PLATFORM_TEAM = "platform"
UNALLOCATED_PROJECT = "unallocated capacity"
UNALLOCATED_SHARE_PROJECT = "unallocated capacity (share)"
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


class MonthError(ValueError):
    """A month that is not YYYY-MM."""


@dataclass(frozen=True, order=True)
class BillingMonth:
    """A calendar month in the billing time zone (``FLOPWATCH_BILLING_TIME_ZONE``)."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> BillingMonth:
        match = _MONTH.match(text.strip())
        if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1970:
            raise MonthError(f"expected a month as YYYY-MM, got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def containing(cls, moment: dt.datetime) -> BillingMonth:
        local = moment.astimezone(billing_time_zone())
        return cls(local.year, local.month)

    @classmethod
    def from_date(cls, day: dt.date) -> BillingMonth:
        return cls(day.year, day.month)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def first_day(self) -> dt.date:
        return dt.date(self.year, self.month, 1)

    def next(self) -> BillingMonth:
        return BillingMonth(self.year + self.month // 12, self.month % 12 + 1)

    def previous(self) -> BillingMonth:
        if self.month == 1:
            return BillingMonth(self.year - 1, 12)
        return BillingMonth(self.year, self.month - 1)

    def start(self) -> dt.datetime:
        return local_midnight(day=self.first_day)

    def end(self) -> dt.datetime:
        return self.next().start()


def billing_time_zone() -> ZoneInfo:
    return ZoneInfo(settings.FLOPWATCH_BILLING_TIME_ZONE)


def local_midnight(*, day: dt.date) -> dt.datetime:
    """Midnight starting ``day`` in the billing time zone (rates change at local midnight)."""
    return dt.datetime.combine(day, dt.time.min, tzinfo=billing_time_zone())


def _epoch(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def _dec(value: float | int | None) -> Decimal:
    # str() gives the shortest repr of a float: sums of whole seconds stay exact.
    return Decimal(str(value or 0))


def _cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass
class StatementRow:
    """One line of a statement: a team x project x GPU model (or a platform line).

    Hours keep six decimals; ``cost``, ``idle_cost`` and ``busy_cost`` are rounded to cents
    once, from the exact sum of hours x the rate in force for each hour. ``rate`` is the rate
    when one applied all month, else the effective (cost-weighted) rate.
    """

    kind: str  # "usage", "platform" (unallocated capacity) or "share" (spread unallocated)
    team_id: int | None
    team: str
    cost_center: str
    project_id: int | None
    project: str
    gpu_model: str
    allocated_gpu_hours: Decimal
    observed_gpu_hours: Decimal
    busy_gpu_hours: Decimal
    idle_gpu_hours: Decimal
    rate: Decimal
    cost: Decimal
    idle_cost: Decimal
    busy_cost: Decimal
    mixed_rates: bool = False

    @property
    def efficiency(self) -> Decimal | None:
        if self.observed_gpu_hours <= 0:
            return None
        return self.busy_gpu_hours / self.observed_gpu_hours

    @property
    def efficiency_pct(self) -> Decimal | None:
        efficiency = self.efficiency
        if efficiency is None:
            return None
        return (efficiency * 100).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)

    _DECIMALS = (
        "allocated_gpu_hours",
        "observed_gpu_hours",
        "busy_gpu_hours",
        "idle_gpu_hours",
        "rate",
        "cost",
        "idle_cost",
        "busy_cost",
    )

    def to_json(self) -> dict:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in self._DECIMALS:
            data[name] = str(data[name])
        return data

    @classmethod
    def from_json(cls, data: dict) -> StatementRow:
        values = dict(data)
        for name in cls._DECIMALS:
            values[name] = Decimal(values[name])
        return cls(**values)


@dataclass
class StatementData:
    """A month's statement: live (computed now) or frozen (stored at month close)."""

    month: BillingMonth
    currency: str
    billing_time_zone: str
    spread_unallocated: bool
    rows: list[StatementRow]
    computed_at: dt.datetime
    month_close: MonthClose | None = None

    @property
    def is_closed(self) -> bool:
        return self.month_close is not None

    def totals(self) -> StatementRow:
        """The TOTAL line: sums of the rows (costs are sums of rounded rows), pooled
        efficiency."""
        total = StatementRow(
            kind="total",
            team_id=None,
            team="TOTAL",
            cost_center="",
            project_id=None,
            project="",
            gpu_model="",
            allocated_gpu_hours=ZERO,
            observed_gpu_hours=ZERO,
            busy_gpu_hours=ZERO,
            idle_gpu_hours=ZERO,
            rate=ZERO,
            cost=ZERO,
            idle_cost=ZERO,
            busy_cost=ZERO,
        )
        for row in self.rows:
            for name in StatementRow._DECIMALS:
                if name != "rate":
                    setattr(total, name, getattr(total, name) + getattr(row, name))
        return total

    def filtered(self, *, rows: list[StatementRow]) -> StatementData:
        return StatementData(
            month=self.month,
            currency=self.currency,
            billing_time_zone=self.billing_time_zone,
            spread_unallocated=self.spread_unallocated,
            rows=rows,
            computed_at=self.computed_at,
            month_close=self.month_close,
        )


@dataclass
class _Acc:
    allocated_s: Decimal = ZERO
    observed_s: Decimal = ZERO
    busy_s: Decimal = ZERO
    idle_s: Decimal = ZERO
    cost_s: Decimal = ZERO  # sum of seconds x rate: divided by 3600 once, at the end
    idle_cost_s: Decimal = ZERO
    busy_cost_s: Decimal = ZERO
    rates: set[Decimal] = field(default_factory=set)

    def add(
        self, *, allocated: Decimal, observed: Decimal, busy: Decimal, idle: Decimal, rate: Decimal
    ) -> None:
        self.allocated_s += allocated
        self.observed_s += observed
        self.busy_s += busy
        self.idle_s += idle
        self.cost_s += allocated * rate
        self.idle_cost_s += idle * rate
        self.busy_cost_s += busy * rate
        if allocated > 0:
            self.rates.add(rate)

    def row(self, **labels) -> StatementRow:
        hours = self.allocated_s / 3600
        cost_exact = self.cost_s / 3600
        if len(self.rates) == 1:
            (rate,) = self.rates
            rate = rate.quantize(RATE_PLACES, rounding=ROUND_HALF_UP)
        elif hours > 0:
            rate = (cost_exact / hours).quantize(RATE_PLACES, rounding=ROUND_HALF_UP)
        else:
            rate = ZERO
        return StatementRow(
            allocated_gpu_hours=hours.quantize(HOURS_PLACES, rounding=ROUND_HALF_UP),
            observed_gpu_hours=(self.observed_s / 3600).quantize(HOURS_PLACES),
            busy_gpu_hours=(self.busy_s / 3600).quantize(HOURS_PLACES),
            idle_gpu_hours=(self.idle_s / 3600).quantize(HOURS_PLACES),
            rate=rate,
            cost=_cents(cost_exact),
            idle_cost=_cents(self.idle_cost_s / 3600),
            busy_cost=_cents(self.busy_cost_s / 3600),
            mixed_rates=len(self.rates) > 1,
            **labels,
        )


def _rate_segments(
    *, month: BillingMonth, lookup: RateLookup
) -> list[tuple[dt.datetime, dt.datetime]]:
    """The month cut wherever some price changes: inside a segment every rate is constant."""
    start, end = month.start(), month.end()
    cuts = {start, end}
    for day in lookup.effective_dates():
        moment = local_midnight(day=day)
        if start < moment < end:
            cuts.add(moment)
    ordered = sorted(cuts)
    return list(itertools.pairwise(ordered))


def statement_compute(*, month: BillingMonth, now: dt.datetime | None = None) -> StatementData:
    """The month's statement from the rollups and the rate card as they are now.

    Hourly rows of ``AllocationGpuHourly`` belong to the billing month that contains the
    start of their hour, so months partition the hours even in a non-UTC billing zone.
    """
    from django.db.models import Sum
    from django.utils import timezone

    from apps.fleet.models import Gpu
    from apps.telemetry.models import AllocationGpuHourly, CapacityDaily
    from apps.tenancy.models import Allocation, Project

    lookup = RateLookup.load()
    segments = _rate_segments(month=month, lookup=lookup)
    usage: dict[tuple[int, str], _Acc] = defaultdict(_Acc)
    # Grouped by allocation and GPU without joins (a join per hourly row is what makes the
    # query slow on a big month); the few thousand groups are resolved in bulk afterwards.
    groups: list[tuple[dt.date, dict]] = []
    for seg_start, seg_end in segments:
        day = seg_start.astimezone(billing_time_zone()).date()
        grouped = (
            AllocationGpuHourly.objects.filter(
                hour__gte=_epoch(seg_start), hour__lt=_epoch(seg_end)
            )
            .values("allocation_id", "gpu_id")
            .annotate(
                allocated=Sum("allocated_s"),
                observed=Sum("observed_s"),
                busy=Sum("busy_s"),
                idle=Sum("idle_s"),
            )
            .order_by()
        )
        groups += [(day, group) for group in grouped]
    project_of = dict(
        Allocation.objects.filter(pk__in={g["allocation_id"] for _, g in groups}).values_list(
            "pk", "project_id"
        )
    )
    gpus = Gpu.objects.select_related("node", "mig_parent").in_bulk(
        {g["gpu_id"] for _, g in groups}
    )
    for day, group in groups:
        gpu = gpus[group["gpu_id"]]
        # A MIG instance is priced and reported as its parent's model.
        model_name = gpu.mig_parent.model_name if gpu.mig_parent_id else gpu.model_name
        rate = lookup.gpu_rate(
            model_name=model_name,
            mig_profile=gpu.mig_profile,
            cluster_id=gpu.node.cluster_id,
            day=day,
        )
        label = lookup.gpu_model_label(model_name=model_name)
        usage[(project_of[group["allocation_id"]], label)].add(
            allocated=_dec(group["allocated"]),
            observed=_dec(group["observed"]),
            busy=_dec(group["busy"]),
            idle=_dec(group["idle"]),
            rate=rate,
        )

    projects = Project.objects.select_related("team").in_bulk({pid for pid, _ in usage})
    rows = []
    for (project_id, label), acc in usage.items():
        project = projects[project_id]
        rows.append(
            acc.row(
                kind="usage",
                team_id=project.team_id,
                team=project.team.name,
                cost_center=project.team.cost_center,
                project_id=project_id,
                project=project.name,
                gpu_model=label,
            )
        )
    rows.sort(key=lambda row: (row.team.lower(), row.project.lower(), row.gpu_model))

    # Unallocated capacity: daily rows are UTC days; each is spread evenly over its day and
    # cut at the month's and the rates' boundaries.
    unallocated: dict[str, _Acc] = defaultdict(_Acc)
    first_utc = month.start().astimezone(dt.UTC).date() - dt.timedelta(days=1)
    last_utc = month.end().astimezone(dt.UTC).date()
    for capacity in CapacityDaily.objects.filter(
        day__gte=first_utc, day__lte=last_utc, unallocated_s__gt=0
    ):
        day_start = dt.datetime.combine(capacity.day, dt.time.min, tzinfo=dt.UTC)
        day_end = day_start + dt.timedelta(days=1)
        label = lookup.gpu_model_label(model_name=capacity.gpu_model)
        for seg_start, seg_end in segments:
            overlap = (min(day_end, seg_end) - max(day_start, seg_start)).total_seconds()
            if overlap <= 0:
                continue
            rate = lookup.gpu_rate(
                model_name=capacity.gpu_model,
                mig_profile="",
                cluster_id=capacity.cluster_id,
                day=seg_start.astimezone(billing_time_zone()).date(),
            )
            seconds = _dec(capacity.unallocated_s) * Decimal(int(overlap)) / Decimal(86400)
            unallocated[label].add(
                allocated=seconds, observed=ZERO, busy=ZERO, idle=ZERO, rate=rate
            )
    platform_rows = [
        unallocated[label].row(
            kind="platform",
            team_id=None,
            team=PLATFORM_TEAM,
            cost_center="",
            project_id=None,
            project=UNALLOCATED_PROJECT,
            gpu_model=label,
        )
        for label in sorted(unallocated)
    ]
    spread = settings.FLOPWATCH_SPREAD_UNALLOCATED
    if spread and sum((row.cost for row in rows), ZERO) > 0:
        rows = _unallocated_spread(rows=rows, platform_rows=platform_rows)
    else:
        rows += platform_rows
    return StatementData(
        month=month,
        currency=settings.FLOPWATCH_CURRENCY,
        billing_time_zone=settings.FLOPWATCH_BILLING_TIME_ZONE,
        spread_unallocated=spread,
        rows=rows,
        computed_at=now or timezone.now(),
    )


def cents_apportion(*, total: Decimal, weights: list[Decimal]) -> list[Decimal]:
    """Split ``total`` (whole cents) in proportion to ``weights`` so that the parts, each in
    whole cents, add up to it exactly (largest remainder; ties go to the earlier weight)."""
    total_cents = int((total / CENT).to_integral_value())
    weight_sum = sum(weights, ZERO)
    if weight_sum <= 0:
        raise ValueError("weights must add up to more than zero")
    exact = [Decimal(total_cents) * weight / weight_sum for weight in weights]
    parts = [int(value.to_integral_value(rounding=ROUND_FLOOR)) for value in exact]
    remainder = total_cents - sum(parts)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - parts[i]), i))
    for index in order[:remainder]:
        parts[index] += 1
    return [Decimal(part) * CENT for part in parts]


def _unallocated_spread(
    *, rows: list[StatementRow], platform_rows: list[StatementRow]
) -> list[StatementRow]:
    """Share each GPU model's unallocated cost out over the teams in proportion to each
    team's cost; whole cents per share, the shares adding up to the platform line exactly."""
    team_cost: dict[int, Decimal] = defaultdict(lambda: ZERO)
    team_info: dict[int, tuple[str, str]] = {}
    for row in rows:
        team_cost[row.team_id] += row.cost
        team_info[row.team_id] = (row.team, row.cost_center)
    team_ids = sorted(team_cost, key=lambda team_id: team_info[team_id][0].lower())
    weights = [team_cost[team_id] for team_id in team_ids]
    weight_sum = sum(weights, ZERO)
    shares: list[StatementRow] = []
    for platform in platform_rows:
        parts = cents_apportion(total=platform.cost, weights=weights)
        for team_id, weight, part in zip(team_ids, weights, parts, strict=True):
            if part == 0 and weight == 0:
                continue
            fraction = weight / weight_sum
            shares.append(
                StatementRow(
                    kind="share",
                    team_id=team_id,
                    team=team_info[team_id][0],
                    cost_center=team_info[team_id][1],
                    project_id=None,
                    project=UNALLOCATED_SHARE_PROJECT,
                    gpu_model=platform.gpu_model,
                    allocated_gpu_hours=(platform.allocated_gpu_hours * fraction).quantize(
                        HOURS_PLACES, rounding=ROUND_HALF_UP
                    ),
                    observed_gpu_hours=ZERO,
                    busy_gpu_hours=ZERO,
                    idle_gpu_hours=ZERO,
                    rate=platform.rate,
                    cost=part,
                    idle_cost=ZERO,
                    busy_cost=ZERO,
                    mixed_rates=platform.mixed_rates,
                )
            )
    merged = rows + shares
    merged.sort(
        key=lambda row: (row.team.lower(), row.kind == "share", row.project.lower(), row.gpu_model)
    )
    return merged


def month_close_in_force(*, month: BillingMonth) -> MonthClose | None:
    return (
        MonthClose.objects.filter(month=month.first_day, reopened_at__isnull=True)
        .select_related("closed_by", "statement")
        .first()
    )


def month_close_history(*, month: BillingMonth) -> list[MonthClose]:
    """Every close of the month, newest first, with who reopened it, when and why."""
    return list(
        MonthClose.objects.filter(month=month.first_day).select_related("closed_by", "reopened_by")
    )


def statement_for_month(*, month: BillingMonth, now: dt.datetime | None = None) -> StatementData:
    """The frozen statement when the month is closed, else the live one."""
    close = month_close_in_force(month=month)
    if close is None:
        return statement_compute(month=month, now=now)
    frozen = close.statement
    return StatementData(
        month=month,
        currency=frozen.currency,
        billing_time_zone=frozen.billing_time_zone,
        spread_unallocated=frozen.spread_unallocated,
        rows=[StatementRow.from_json(data) for data in frozen.rows],
        computed_at=frozen.computed_at,
        month_close=close,
    )


class StatementNotVisible(Exception):
    """The user may not see this team's statement (404) or any statement at all (403)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def statement_visible_to(
    *, statement: StatementData, user, team_slug: str | None = None
) -> StatementData:
    """The rows of ``statement`` that ``user`` may see, optionally of one team only.

    Finance and fleet admins see every row including the platform lines; others see the rows
    of projects visible to them and their teams' shares of unallocated capacity. Raises
    ``StatementNotVisible`` (403) for a user who sees no team, (404) for a team they do not
    see.
    """
    from apps.tenancy.selectors import (
        projects_visible_to,
        teams_visible_to,
        user_sees_all_teams,
    )

    sees_all = user_sees_all_teams(user=user)
    team_ids = set(teams_visible_to(user=user).values_list("pk", flat=True))
    if not sees_all and not team_ids:
        raise StatementNotVisible("you are in no team and own no project", status=403)
    project_ids = set(projects_visible_to(user=user).values_list("pk", flat=True))
    only_team: int | None = None
    if team_slug:
        from apps.tenancy.models import Team

        team = Team.objects.filter(slug=team_slug, pk__in=team_ids).first()
        if team is None:
            raise StatementNotVisible(f"no team {team_slug!r}", status=404)
        only_team = team.pk

    def visible(row: StatementRow) -> bool:
        if only_team is not None and row.team_id != only_team:
            return False
        if row.kind == "usage":
            return sees_all or row.project_id in project_ids
        if row.kind == "share":
            return sees_all or row.team_id in team_ids
        return sees_all

    return statement.filtered(rows=[row for row in statement.rows if visible(row)])


def chargeback_history(
    *, user, last: BillingMonth, months: int = 6, team_slug: str | None = None
) -> dict[str, list]:
    """Cost and busy cost per team for the ``months`` months up to ``last`` (what ``user``
    sees): ``{"months": [...], "teams": {team: {"cost": [...], "busy_cost": [...]}}}``."""
    sequence = [last]
    for _ in range(months - 1):
        sequence.insert(0, sequence[0].previous())
    teams: dict[str, dict[str, list[Decimal]]] = {}
    for index, month in enumerate(sequence):
        statement = statement_visible_to(
            statement=statement_for_month(month=month), user=user, team_slug=team_slug
        )
        for row in statement.rows:
            series = teams.setdefault(
                row.team, {"cost": [ZERO] * len(sequence), "busy_cost": [ZERO] * len(sequence)}
            )
            series["cost"][index] += row.cost
            series["busy_cost"][index] += row.busy_cost
    return {"months": [str(month) for month in sequence], "teams": dict(sorted(teams.items()))}


def user_can_close_months(*, user) -> bool:
    """Finance closes billing months (README roles)."""
    from apps.tenancy.selectors import user_is_finance

    return user_is_finance(user=user)


def user_can_reopen_months(*, user) -> bool:
    """Fleet admins reopen closed months, giving a reason."""
    from apps.tenancy.selectors import user_is_fleet_admin

    return user_is_fleet_admin(user=user)
