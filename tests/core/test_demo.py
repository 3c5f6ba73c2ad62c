"""``manage.py seed_demo``: the organisation, a day of history through the real ingest path,
rollups and waste findings; running it again adds nothing."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from apps.core.demo import DEMO_PASSWORD, DEMO_USERS
from apps.fleet.models import Gpu, Node
from apps.telemetry.models import AllocationGpuHourly, GpuRollup5m, RawSample, RollupPending
from apps.tenancy.models import Allocation, Project
from apps.waste.models import Finding

pytestmark = pytest.mark.django_db(transaction=True)


def seed(tmp_path, *args: str) -> str:
    out = StringIO()
    call_command(
        "seed_demo", "--no-progress", "--tokens", str(tmp_path / "tokens.json"), *args, stdout=out
    )
    return out.getvalue()


def test_seed_demo_gives_a_day_of_history_rolled_up_with_findings(tmp_path, client):
    out = seed(tmp_path, "--history-days", "1")

    assert Node.objects.count() == 16
    assert Gpu.objects.count() == 128
    assert Project.objects.count() >= 8
    # A sample a minute for every GPU over the day.
    assert RawSample.objects.count() >= 128 * 24 * 60
    assert Allocation.objects.exists()
    assert GpuRollup5m.objects.exists()
    assert AllocationGpuHourly.objects.exists()
    assert not RollupPending.objects.exists()
    assert Finding.objects.exists(), "the simulator's idle jobs should be found"
    # History reaches up to now: nothing looks silent to the live agents taking over.
    assert not Finding.objects.filter(rule="silent_gpu", status="open").exists()
    tokens = json.loads((tmp_path / "tokens.json").read_text())
    assert set(tokens) == set(Node.objects.values_list("hostname", flat=True))
    assert "History:" in out
    assert "Pipeline caught up" in out
    for user in DEMO_USERS:
        assert user.username in out
    assert client.login(username="admin", password=DEMO_PASSWORD)
    assert client.get("/").status_code == 200

    counts = (RawSample.objects.count(), Allocation.objects.count(), Finding.objects.count())
    seed(tmp_path, "--history-days", "1")
    samples, allocations, findings = counts
    # Only the minutes that passed between the two runs can be new.
    assert RawSample.objects.count() - samples <= 128 * 2
    assert Allocation.objects.count() - allocations <= 16
    assert Finding.objects.count() == findings
    assert get_user_model().objects.filter(username="admin").count() == 1


def test_seed_demo_refuses_a_bad_history_length(tmp_path):
    with pytest.raises(CommandError, match="--history-days"):
        seed(tmp_path, "--history-days", "-1")
    assert not Node.objects.exists(), "nothing is seeded when the arguments are wrong"
