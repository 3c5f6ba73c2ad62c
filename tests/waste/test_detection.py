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


LAST = END + FIVE_MIN  # data runs one bucket past END, so END is complete at LAST


@pytest.fixture
def fleet(personas):
    """The labelled fleet without telemetry yet."""
    from apps.waste.models import Policy

    # Project a2 needs only 10 GPU-hours for low_efficiency (a project override).
    Policy.objects.create(scope="project", project=personas.project_a2,
                          low_efficiency_min_gpu_hours=10)  # fmt: skip
    scenario = labelled_scenario()
    built = fleet_build(scenario, personas)
    built.expected = scenario.expected
    return built


@pytest.fixture
def built(fleet):
    """The labelled fleet with all six hours of rollups in (history imported in one go)."""
    rollups_build(fleet)
    return fleet


def _hours(moment: dt.datetime) -> float:
    return (moment - T0).total_seconds() / 3600


def _live(fleet, *, step: dt.timedelta, held_back: dict | None = None) -> None:
    """Time travel: rollups arrive bucket by bucket and detection runs every ``step``.
    ``held_back`` maps a GPU to the time its data (spooled until then) arrives."""
    from apps.waste.services import waste_detect

    held_back = held_back or {}
    others = set(fleet.gpus) - set(held_back)
    done_until = dict.fromkeys(fleet.gpus, T0)
    now = T0 + step
    while now <= LAST:
        groups: dict[dt.datetime, set] = {}
        for key in fleet.gpus:
            if key not in held_back or now >= held_back[key]:
                groups.setdefault(done_until[key], set()).add(key)
        for since, keys in groups.items():
            rollups_build(fleet, start_h=_hours(since), end_h=_hours(now), only=keys)
            done_until.update(dict.fromkeys(keys, now))
        last_seen_set(fleet, now=now)
        for key, arrives in held_back.items():
            if now < arrives:
                from apps.fleet.models import Gpu

                Gpu.objects.filter(pk=fleet.gpus[key].pk).update(last_seen_at=T0)
        waste_detect(now=now)
        now += step
    assert others  # the rest arrived live


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


def test_live_detection_fires_each_rule_on_its_subjects_at_the_right_time(fleet):
    _live(fleet, step=FIVE_MIN)
    built = fleet
    observed = findings_observed(built)
    _assert_matches_expected(built, observed)
    opens_at = {_key(e): e["opens_at"] for e in built.expected}
    for o in observed:
        # flagged within one detection period after its threshold window has passed (the
        # bucket that completes the window counts once the next bucket has data)
        assert opens_at[_key(o)] < o["detected_at"] <= opens_at[_key(o)] + FIVE_MIN, o
        assert o["late"] is False
        assert o["status"] == ("resolved" if o["ended"] else "open")


def test_bulk_detection_gives_the_same_findings_as_live(built):
    from apps.waste.models import Finding, FindingEvent, Notification
    from apps.waste.services import waste_detect

    last_seen_set(built, now=LAST)
    summary = waste_detect(now=LAST)
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
    waste_detect(now=LAST)
    assert findings_observed(built) == observed


@pytest.mark.parametrize("end", [h(4), h(4) + dt.timedelta(minutes=20)])
def test_allocation_end_resolves_and_keeps_totals(built, end):
    from apps.tenancy.models import Allocation
    from apps.waste.models import DetectionCursor, Finding
    from apps.waste.services import waste_detect

    Allocation.objects.filter(external_id__in=["slurm:1006", "slurm:1007"]).update(end=end)
    last_seen_set(built, now=LAST)
    waste_detect(now=LAST)
    oversized = Finding.objects.get(rule="oversized_gpu")
    assert oversized.status == "resolved"
    assert oversized.ended == end
    hours = (end - T0).total_seconds() / 3600
    assert oversized.wasted_gpu_hours == pytest.approx(0.9 * 8 * hours)
    low = Finding.objects.get(rule="low_efficiency")
    assert (low.status, low.ended) == ("resolved", end)
    ended = DetectionCursor.objects.filter(allocation__end__isnull=False)
    assert ended.count() == 2 and all(c.done for c in ended)


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
    last_seen_set(built, now=LAST)
    waste_detect(now=LAST)
    rules = set(Finding.objects.values_list("rule", flat=True))
    assert "idle_allocation" not in rules  # switched off for team A
    assert "partial_use" not in rules  # 2 h of partial use < the cluster's 150 min
    assert "memory_held_idle" in rules


def test_late_data_after_an_outage_yields_the_same_finding(fleet):
    """The idle job's agent is cut off from 0h to 4h, then its spool arrives: same finding."""
    from apps.waste.models import Finding

    _live(fleet, step=3 * FIVE_MIN, held_back={"n1/0": h(4)})
    finding = Finding.objects.get(rule="idle_allocation")
    assert (finding.started, finding.ended) == (h(1), h(3))
    assert finding.wasted_gpu_hours == pytest.approx(2.0)
    assert finding.wasted_cost == 4
    assert finding.detected_late is True  # it had ended before its data arrived
    # while it was cut off, silence was reported, and cleared when it came back
    silent = Finding.objects.get(rule="silent_gpu", gpus=fleet.gpus["n1/0"])
    assert silent.status == "resolved"


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


def test_silent_gpu_clears_when_its_node_is_made_inactive(built):
    from apps.fleet.models import Node
    from apps.waste.models import Finding
    from apps.waste.services import waste_detect

    last_seen_set(built, now=LAST)
    waste_detect(now=LAST)
    silent = Finding.objects.get(rule="silent_gpu")
    assert silent.status == "open"
    Node.objects.filter(hostname="n3").update(is_active=False)
    waste_detect(now=LAST + FIVE_MIN)
    silent.refresh_from_db()
    assert silent.status == "resolved"
    assert list(silent.events.values_list("kind", flat=True)) == ["opened", "cleared"]
