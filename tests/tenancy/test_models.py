import datetime as dt

import pytest
from django.db import IntegrityError, transaction

from apps.tenancy.models import Allocation, Membership

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def test_allocation_external_id_is_unique_per_source(personas):
    Allocation.objects.create(
        source="slurm", external_id="slurm:1", project=personas.project_a1, start=T0
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        Allocation.objects.create(
            source="slurm", external_id="slurm:1", project=personas.project_a2, start=T0
        )
    # The same id from another scheduler is another allocation.
    Allocation.objects.create(
        source="k8s", external_id="slurm:1", project=personas.project_a2, start=T0
    )


def test_allocation_cannot_end_before_it_starts(personas):
    with pytest.raises(IntegrityError), transaction.atomic():
        Allocation.objects.create(
            source="api",
            external_id="x",
            project=personas.project_a1,
            start=T0,
            end=T0 - dt.timedelta(seconds=1),
        )


def test_one_membership_per_user_and_team(personas):
    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.create(user=personas.member, team=personas.team_a)
