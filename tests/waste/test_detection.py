"""The detectors on rollup rows built from a labelled plan: every rule fires on exactly the
subjects it should, at the time it should, and live detection equals one bulk pass."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.waste.scenario import (
    END,
    T0,
    findings_observed,
    fleet_build,
    h,
    labelled_scenario,
    last_seen_set,
    rollups_build,
)

FIVE_MIN = dt.timedelta(minutes=5)


@pytest.fixture
def built(personas):
    from apps.waste.models import Policy

    # Project a2 needs only 10 GPU-hours for low_efficiency (a project override).
    Policy.objects.create(scope="project", project=personas.project_a2,
                          low_efficiency_min_gpu_hours=10)  # fmt: skip
    scenario = labelled_scenario()
    built = fleet_build(scenario, personas)
    rollups_build(built)
    built.expected = scenario.expected
    return built


def _key(f: dict) -> tuple:
    return (f["rule"], f["job"])


def _assert_matches_expected(built, observed: list[dict]) -> None:
    expected = {_key(e): e for e in built.expected}
    seen = {_key(o): o for o in observed}
    assert sorted(seen) == sorted(expected), "findings on other subjects than labelled"
    assert len(observed) == len(expected), "more than one finding per rule and subject"
    for key, e in expected.items():
        o = seen[key]
        assert o["gpus"] == e["gpus"], key
        assert o["started"] == e["started"], key
        assert o["ended"] == e["ended"], key
        assert o["hours"] == pytest.approx(e["hours"]), key
        assert o["cost"] == e["cost"], key


def test_live_detection_fires_each_rule_on_its_subjects_at_the_right_time(built):
    from apps.waste.services import waste_detect

    now = T0 + FIVE_MIN
    while now <= END:
        last_seen_set(built, now=now)
        waste_detect(now=now)
        now += FIVE_MIN
    observed = findings_observed(built)
    _assert_matches_expected(built, observed)
    opens_at = {_key(e): e["opens_at"] for e in built.expected}
    for o in observed:
        # flagged within one detection period after its threshold window has passed
        assert opens_at[_key(o)] <= o["detected_at"] <= opens_at[_key(o)] + FIVE_MIN, o
        assert o["late"] is False
        assert o["status"] == ("resolved" if o["ended"] else "open")


def test_bulk_detection_gives_the_same_findings_as_live(built):
    from apps.waste.models import Finding, FindingEvent, Notification
    from apps.waste.services import waste_detect

    last_seen_set(built, now=END)
    summary = waste_detect(now=END)
    observed = findings_observed(built)
    _assert_matches_expected(built, observed)
    late = {o["rule"] for o in observed if o["late"]}
    # ended before detection saw them: digest only, no e-mail or webhook each
    assert late == {"idle_allocation", "memory_held_idle", "partial_use"}
    assert summary.late == 3
    assert not Notification.objects.filter(
        finding__detected_late=True, kind__in=["opened", "reminder"]
    ).exists()
    # each ended finding has opened + cleared events
    for finding in Finding.objects.filter(ended__isnull=False):
        kinds = list(FindingEvent.objects.filter(finding=finding).values_list("kind", flat=True))
        assert kinds == ["opened", "cleared"]
    # running again changes nothing (idempotent)
    waste_detect(now=END)
    assert findings_observed(built) == observed


def test_allocation_end_resolves_and_keeps_totals(built):
    from apps.tenancy.models import Allocation
    from apps.waste.models import Finding
    from apps.waste.services import waste_detect

    Allocation.objects.filter(external_id="slurm:1006").update(end=h(4))
    last_seen_set(built, now=END)
    waste_detect(now=END)
    finding = Finding.objects.get(rule="oversized_gpu")
    assert finding.status == "resolved"
    assert finding.ended == h(4)
    assert finding.wasted_gpu_hours == pytest.approx(0.9 * 8 * 4)


def test_disabled_rule_and_policy_resolution(built, personas):
    from apps.waste.models import Finding, Policy
    from apps.waste.selectors import policy_resolve
    from apps.waste.services import waste_detect

    Policy.objects.create(scope="global", idle_minutes=90)
    Policy.objects.create(scope="team", team=personas.team_a, idle_allocation_enabled=False)
    Policy.objects.create(scope="cluster", cluster_id=built.gpus["n1/0"].node.cluster_id,
                          idle_minutes=30, partial_use_minutes=150)  # fmt: skip
    resolved = policy_resolve(
        project_id=personas.project_a1.id, team_id=personas.team_a.id,
        cluster_id=built.gpus["n1/0"].node.cluster_id,
    )  # fmt: skip
    assert resolved.idle_allocation_enabled is False
    assert resolved.idle_minutes == 30  # cluster beats global
    assert resolved.memory_held_idle_minutes == 30  # built-in default
    a2 = policy_resolve(project_id=personas.project_a2.id, team_id=personas.team_a.id)
    assert a2.low_efficiency_min_gpu_hours == 10  # project beats all
    assert a2.idle_minutes == 90
    last_seen_set(built, now=END)
    waste_detect(now=END)
    rules = set(Finding.objects.values_list("rule", flat=True))
    assert "idle_allocation" not in rules  # switched off for team A
    assert "partial_use" not in rules  # 2 h of partial use < the cluster's 150 min
    assert "memory_held_idle" in rules


def test_late_data_after_an_outage_yields_the_same_finding(built):
    """The idle job's agent is down 0h..4h, then its spool arrives: same finding."""
    from apps.fleet.models import Gpu
    from apps.waste.models import Finding
    from apps.waste.services import waste_detect

    gpu = built.gpus["n1/0"]
    now = T0 + FIVE_MIN
    while now <= END:
        last_seen_set(built, now=now)
        if now < h(4):
            Gpu.objects.filter(pk=gpu.pk).update(last_seen_at=T0)  # nothing arrived yet
        waste_detect(now=now)
        now += 3 * FIVE_MIN
    finding = Finding.objects.get(rule="idle_allocation")
    assert (finding.started, finding.ended) == (h(1), h(3))
    assert finding.wasted_gpu_hours == pytest.approx(2.0)
    assert finding.detected_late is True  # it had ended before its data arrived


def test_one_unresolved_finding_per_rule_and_subject(built):
    from django.db import IntegrityError, transaction

    from apps.waste.models import Finding

    kwargs = {"rule": "idle_allocation", "subject": "alloc:1", "started": T0, "last_seen": T0,
              "detected_at": T0}  # fmt: skip
    Finding.objects.create(**kwargs)
    with pytest.raises(IntegrityError), transaction.atomic():
        Finding.objects.create(**kwargs)
    Finding.objects.filter(subject="alloc:1").update(status="resolved")
    Finding.objects.create(**kwargs)  # a new stretch after the old one resolved
