"""The labelled scenario end to end: contract sample batches through ingest, the real rollup,
then detection, stepping through six hours as an agent would deliver them."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.waste.scenario import (
    DATA_END_H,
    T0,
    findings_observed,
    labelled_scenario,
    rate_card_ensure,
)

STEP = dt.timedelta(minutes=15)


def test_labelled_fleet_through_ingest_rollups_and_detection(personas):
    from apps.fleet.models import Gpu, Node
    from apps.fleet.services import node_get_or_create
    from apps.telemetry.rollups import rollups_run_pending
    from apps.telemetry.services import gpu_samples_ingest, ingest_caches_clear
    from apps.waste.models import Policy
    from apps.waste.services import waste_detect

    Policy.objects.create(scope="project", project=personas.project_a2,
                          low_efficiency_min_gpu_hours=10)  # fmt: skip
    scenario = labelled_scenario()
    nodes: dict[str, Node] = {}
    for spec in scenario.gpus:
        if spec.node not in nodes:
            nodes[spec.node], _ = node_get_or_create(hostname=spec.node, cluster_slug="c1")
    rate_card_ensure(cluster=nodes["n1"].cluster)

    end = T0 + dt.timedelta(hours=DATA_END_H)
    now, done = T0 + STEP, 0
    while True:
        now = min(now, end)
        upto = int((now - T0).total_seconds())
        # ingest writes last-seen at most every 10 s of wall-clock time; time travels faster
        ingest_caches_clear()
        for hostname, batch in _batches(scenario, done, upto):
            gpu_samples_ingest(node=nodes[hostname], batch=batch, now=now)
        done = upto
        rollups_run_pending(now=now)
        waste_detect(now=now)
        if now >= end:
            break
        now += STEP

    class Built:  # the shape findings_observed expects
        gpus = {f"{s.node}/{s.index}": Gpu.objects.get(uuid=f"GPU-{s.node}-{s.index}-0000")
                for s in scenario.gpus}  # fmt: skip

    observed = {(o["rule"], o["job"]): o for o in findings_observed(Built)}
    expected = {(e["rule"], e["job"]): e for e in scenario.expected}
    assert set(observed) == set(expected), sorted(map(str, observed))
    for key, e in expected.items():
        o = observed[key]
        assert o["gpus"] == e["gpus"], key
        assert o["started"] == e["started"], key
        assert o["ended"] == e["ended"], key
        assert o["hours"] == pytest.approx(e["hours"]), key
        assert o["cost"] == e["cost"], key
        assert e["opens_at"] < o["detected_at"] <= e["opens_at"] + STEP, key


def _batches(scenario, start_s, end_s):
    from tests.waste.scenario import sample_batches

    return sample_batches(scenario, start_s=start_s, end_s=end_s)
