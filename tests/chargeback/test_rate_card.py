"""The rate card: model aliases, effective dates, cluster overrides, set_rate."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from apps.chargeback.models import GpuModel, GpuModelAlias, Rate
from apps.chargeback.selectors import RateLookup
from apps.chargeback.services import rate_card_demo_seed
from apps.fleet.models import Cluster

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("spelling", "slug"),
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("H100-SXM5-80GB", "h100"),
        ("nvidia  h100 80gb hbm3", "h100"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA L40S", "l40s"),
        ("l40s", "l40s"),
    ],
)
def test_default_aliases_map_spellings_to_one_model(spelling, slug):
    lookup = RateLookup.load()
    assert lookup.gpu_model_id(model_name=spelling) == GpuModel.objects.get(slug=slug).pk


def test_alias_is_stored_normalised():
    model = GpuModel.objects.create(slug="b200", name="NVIDIA B200")
    alias = GpuModelAlias.objects.create(gpu_model=model, name="  NVIDIA   B200-SXM  ")
    assert alias.name == "nvidia b200-sxm"
    assert RateLookup.load().gpu_model_label(model_name="nvidia B200-SXM") == "NVIDIA B200"


def _set_rate(*args) -> str:
    out = StringIO()
    call_command("set_rate", *args, stdout=out)
    return out.getvalue()


def test_set_rate_is_idempotent_and_updates():
    assert _set_rate("H100-SXM5-80GB", "4.25", "--from", "2026-01-01").startswith("created")
    assert _set_rate("h100", "4.25", "--from", "2026-01-01").startswith("unchanged")
    assert _set_rate("h100", "4.50", "--from", "2026-01-01").startswith("updated")
    assert Rate.objects.get().price_per_gpu_hour == Decimal("4.5")


def test_effective_dates_and_cluster_override():
    cluster = Cluster.objects.create(slug="beta", name="Beta")
    _set_rate("h100", "4.00", "--from", "2026-01-01")
    _set_rate("h100", "5.00", "--from", "2026-03-15")
    _set_rate("h100", "3.00", "--from", "2026-02-01", "--cluster", "beta")
    lookup = RateLookup.load()

    def rate(day, cluster_id=None):
        return lookup.rate(model_name="NVIDIA H100 80GB HBM3", cluster_id=cluster_id, day=day)

    assert rate(dt.date(2025, 12, 31)) == 0
    assert rate(dt.date(2026, 1, 1)) == Decimal("4.00")
    assert rate(dt.date(2026, 3, 14)) == Decimal("4.00")
    assert rate(dt.date(2026, 3, 15)) == Decimal("5.00")
    assert rate(dt.date(2026, 1, 20), cluster.pk) == Decimal("4.00")
    assert rate(dt.date(2026, 2, 1), cluster.pk) == Decimal("3.00")
    assert rate(dt.date(2026, 6, 1), cluster.pk) == Decimal("3.00")
    mig = lookup.gpu_rate(
        model_name="NVIDIA H100 80GB HBM3",
        mig_profile="1g.10gb",
        cluster_id=None,
        day=dt.date(2026, 1, 2),
    )
    assert mig.quantize(Decimal("0.000001")) == Decimal("0.571429")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope-gpu", "1", "--from", "2026-01-01"], "unknown GPU model 'nope-gpu'"),
        (["h100", "abc", "--from", "2026-01-01"], "price must be a decimal number"),
        (["h100", "-1", "--from", "2026-01-01"], "price must be a number >= 0"),
        (["h100", "1.00001", "--from", "2026-01-01"], "at most 4 decimal places"),
        (["h100", "1", "--from", "2026-02-30"], "date must be YYYY-MM-DD"),
        (["h100", "1", "--from", "2026-01-01", "--cluster", "nowhere"], "unknown cluster"),
    ],
)
def test_set_rate_errors_name_the_problem(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("set_rate", *args)
    assert not Rate.objects.exists()


def test_set_rate_create_new_model():
    _set_rate("NVIDIA B200", "6", "--from", "2026-01-01", "--create")
    assert RateLookup.load().rate(
        model_name="nvidia b200", cluster_id=None, day=dt.date(2026, 2, 1)
    ) == Decimal("6")


def test_demo_rate_card_seed_is_idempotent():
    rate_card_demo_seed()
    rate_card_demo_seed()
    prices = {r.gpu_model.slug: r.price_per_gpu_hour for r in Rate.objects.all()}
    assert set(prices) == {"h100", "a100", "l40s"}


def test_finance_and_admins_may_edit_the_rate_card(personas):
    for user in (personas.finance, personas.admin):
        assert user.has_perm("chargeback.change_rate")
        assert user.has_perm("chargeback.add_gpumodelalias")
    assert not personas.member.has_perm("chargeback.change_rate")


def test_alias_clean_normalises_before_the_uniqueness_check():
    from django.core.exceptions import ValidationError

    model = GpuModel.objects.get(slug="h100")
    alias = GpuModelAlias(gpu_model=model, name="NVIDIA   H100")
    with pytest.raises(ValidationError):
        alias.full_clean()
