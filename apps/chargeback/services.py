"""Writes of chargeback: rate card entries, closing and reopening billing months."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from apps.chargeback.models import GpuModel, GpuModelAlias, MonthClose, Rate, Statement
from apps.chargeback.selectors import (
    BillingMonth,
    RateLookup,
    gpu_model_name_normalise,
    month_close_in_force,
    statement_compute,
)
from apps.fleet.models import Cluster


class RateCardError(ValueError):
    """Bad input to the rate card (unknown model or cluster, a bad price or date)."""


class MonthCloseError(ValueError):
    """A month that cannot be closed or reopened as asked."""


def price_parse(*, text: str) -> Decimal:
    """A price per GPU-hour: a non-negative decimal with at most four decimal places."""
    try:
        price = Decimal(text.strip())
    except (InvalidOperation, AttributeError):
        raise RateCardError(f"price must be a decimal number like 2.49, got {text!r}") from None
    if not price.is_finite() or price < 0:
        raise RateCardError(f"price must be a number >= 0, got {text!r}")
    if price.as_tuple().exponent < -4:
        raise RateCardError(f"price may have at most 4 decimal places, got {text!r}")
    if price >= Decimal("1e8"):
        raise RateCardError(f"price is implausibly large: {text!r}")
    return price


def date_parse(*, text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise RateCardError(f"date must be YYYY-MM-DD, got {text!r}") from None


def gpu_model_resolve(*, name: str, create: bool = False) -> GpuModel:
    """The rate card's model for a reported name, alias, model name or slug.

    With ``create`` an unknown name becomes a new model with itself as its alias.
    """
    gpu_model_id = RateLookup.load().gpu_model_id(model_name=name)
    if gpu_model_id is not None:
        return GpuModel.objects.get(pk=gpu_model_id)
    if not create:
        known = ", ".join(GpuModel.objects.values_list("slug", flat=True)) or "none"
        raise RateCardError(
            f"unknown GPU model {name!r} (known: {known}); add it or an alias in the admin, "
            "or pass --create"
        )
    clean = " ".join(name.split())
    slug = slugify(clean)[:50]
    if not slug:
        raise RateCardError(f"cannot make a model of {name!r}")
    gpu_model, _ = GpuModel.objects.get_or_create(slug=slug, defaults={"name": clean})
    GpuModelAlias.objects.get_or_create(
        name=gpu_model_name_normalise(clean), defaults={"gpu_model": gpu_model}
    )
    return gpu_model


@dataclass(frozen=True)
class RateSetResult:
    rate: Rate
    status: str  # "created", "updated" or "unchanged"


@transaction.atomic
def rate_set(
    *,
    model: str,
    price: Decimal,
    effective_from: dt.date,
    cluster_slug: str | None = None,
    create_model: bool = False,
) -> RateSetResult:
    """Set the price of a model from a date (fleet-wide, or for one cluster); idempotent."""
    if price < 0:
        raise RateCardError(f"price must be >= 0, got {price}")
    cluster = None
    if cluster_slug:
        cluster = Cluster.objects.filter(slug=cluster_slug).first()
        if cluster is None:
            known = ", ".join(Cluster.objects.values_list("slug", flat=True)) or "none"
            raise RateCardError(f"unknown cluster {cluster_slug!r} (known: {known})")
    gpu_model = gpu_model_resolve(name=model, create=create_model)
    rate = Rate.objects.filter(
        gpu_model=gpu_model, cluster=cluster, effective_from=effective_from
    ).first()
    if rate is None:
        rate = Rate.objects.create(
            gpu_model=gpu_model,
            cluster=cluster,
            effective_from=effective_from,
            price_per_gpu_hour=price,
        )
        return RateSetResult(rate, "created")
    if rate.price_per_gpu_hour == price:
        return RateSetResult(rate, "unchanged")
    rate.price_per_gpu_hour = price
    rate.save(update_fields=["price_per_gpu_hour"])
    return RateSetResult(rate, "updated")


# Demo prices per GPU-hour, roughly what clouds charged on demand in 2025.
DEMO_RATES = {"h100": "4.2500", "a100": "2.2000", "l40s": "1.3500"}
DEMO_RATES_FROM = dt.date(2025, 1, 1)


def gpu_models_default_ensure() -> int:
    """Create the default GPU models and aliases that are missing (migration ``0003`` seeds
    them too; a flushed database, or one whose admin deleted them, gets them back here).
    Returns how many models were created."""
    from apps.chargeback.gpu_models import DEFAULT_GPU_MODELS

    created = 0
    for slug, (name, aliases) in DEFAULT_GPU_MODELS.items():
        gpu_model, is_new = GpuModel.objects.get_or_create(slug=slug, defaults={"name": name})
        created += is_new
        for alias in aliases:
            GpuModelAlias.objects.get_or_create(
                name=gpu_model_name_normalise(alias), defaults={"gpu_model": gpu_model}
            )
    return created


def rate_card_demo_seed() -> int:
    """The demo organisation's rate card (idempotent); returns how many rates it set."""
    gpu_models_default_ensure()
    for slug, price in DEMO_RATES.items():
        rate_set(model=slug, price=Decimal(price), effective_from=DEMO_RATES_FROM)
    return len(DEMO_RATES)


def month_close(
    *, month: BillingMonth, user, now: dt.datetime | None = None
) -> tuple[MonthClose, bool]:
    """Close a finished month: freeze its statement as computed now. Closing a closed month
    changes nothing and returns the close in force; returns (close, created)."""
    now = now or timezone.now()
    if month.end() > now:
        raise MonthCloseError(f"{month} has not ended yet; a month can be closed once it is over")
    existing = month_close_in_force(month=month)
    if existing is not None:
        return existing, False
    statement = statement_compute(month=month, now=now)
    try:
        with transaction.atomic():
            close = MonthClose.objects.create(month=month.first_day, closed_at=now, closed_by=user)
            Statement.objects.create(
                month_close=close,
                currency=statement.currency,
                billing_time_zone=statement.billing_time_zone,
                spread_unallocated=statement.spread_unallocated,
                total_cost=statement.totals().cost,
                rows=[row.to_json() for row in statement.rows],
                computed_at=now,
            )
    except IntegrityError:
        # Someone closed it between our check and our insert: theirs stands.
        existing = month_close_in_force(month=month)
        if existing is None:
            raise
        return existing, False
    return close, True


def month_reopen(
    *, month: BillingMonth, user, reason: str, now: dt.datetime | None = None
) -> MonthClose:
    """Reopen a closed month (its statement goes live again); records who, when and why."""
    reason = reason.strip()
    if not reason:
        raise MonthCloseError("a reason is required to reopen a month")
    close = month_close_in_force(month=month)
    if close is None:
        raise MonthCloseError(f"{month} is not closed")
    now = now or timezone.now()
    # Conditional update: of two concurrent reopens exactly one records itself.
    changed = MonthClose.objects.filter(pk=close.pk, reopened_at__isnull=True).update(
        reopened_at=now, reopened_by=user, reopen_reason=reason
    )
    if changed != 1:
        raise MonthCloseError(f"{month} was reopened meanwhile")
    close.refresh_from_db()
    return close
