"""Reads of the rate card: the price of a GPU-hour for a model, a cluster and a moment."""

from __future__ import annotations

import bisect
import datetime as dt
import re
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from apps.chargeback.models import GpuModelAlias, Rate

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
    # (gpu_model_id, cluster_id or None) -> sorted effective dates and their prices
    dates: dict[tuple[int, int | None], list[dt.date]] = field(default_factory=dict)
    prices: dict[tuple[int, int | None], list[Decimal]] = field(default_factory=dict)

    @classmethod
    def load(cls) -> RateLookup:
        lookup = cls()
        lookup.aliases = {alias.name: alias.gpu_model_id for alias in GpuModelAlias.objects.all()}
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
