"""Property-based fuzzing of POST /api/v1/samples: 1,000 generated bodies, never a 5xx.

Bodies are drawn from three families: arbitrary JSON, contract-shaped batches with hostile
values (wrong types, out-of-range and huge numbers, ragged arrays, unknown keys), and raw
bytes (with and without a gzip header). Whatever comes in, the answer is one of the
contract's, and a refused batch leaves no rows behind.
"""

from __future__ import annotations

import gzip
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.telemetry.models import RawSample
from apps.telemetry.services import ingest_caches_clear
from tests.telemetry.ingest_helpers import SAMPLES_URL, node_with_token

NOW = int(time.time())
FIELDS = [
    "util_pct",
    "sm_active",
    "sm_occupancy",
    "tensor_active",
    "dram_active",
    "gr_engine_active",
    "mem_used_mib",
    "power_w",
    "temp_c",
    "sm_clock_mhz",
    "energy_mj",
    "xid",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
any_json = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
numbers = (
    st.floats(min_value=-1, max_value=150, allow_nan=False)
    | st.integers(min_value=-5, max_value=200)
    | st.none()
    | st.sampled_from([1e300, -1e300, 2**64 - 1, 0.5, True, "1", [], {}])
)


@st.composite
def batches(draw):
    n = draw(st.integers(min_value=0, max_value=6))
    start = NOW - draw(st.sampled_from([30, 600, 86_400, 10 * 86_400, -3600, NOW]))
    series = []
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        gpu = draw(st.sampled_from(["GPU-fuzz-0", "GPU-fuzz-1", "GPU-other", "", 7]))
        step = draw(st.sampled_from([10, 1, 0, -10]))
        ts = [start + i * step for i in range(n)]
        if draw(st.booleans()):
            ts = draw(st.lists(numbers, min_size=n, max_size=n)) if n else ts
        entry = {"gpu": gpu, "ts": ts}
        for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
            length = draw(st.sampled_from([n, n, n, max(n - 1, 0), n + 1]))
            entry[name] = draw(st.lists(numbers, min_size=length, max_size=length) | st.none())
        if draw(st.booleans()):
            entry["alloc"] = draw(
                st.none()
                | st.fixed_dictionaries(
                    {"job": st.sampled_from(["slurm:1", "k8s:ns/p", "", "x" * 300, 5])},
                    optional={"project": st.text(max_size=12) | st.none(), "user": any_json},
                )
                | any_json
            )
        if draw(st.integers(0, 9)) == 0:
            entry[draw(st.text(min_size=1, max_size=5))] = draw(any_json)
        series.append(entry)
    body = {
        "node": draw(st.sampled_from(["fuzz-node", "fuzz-node", "other-node", None, 3])),
        "agent": draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "version": any_json,
                    "interval_s": numbers,
                    "stats": any_json,
                    "source": st.text(max_size=30),
                },
            )
            | any_json
        ),
        "gpus": draw(
            st.lists(
                st.fixed_dictionaries(
                    {"uuid": st.sampled_from(["GPU-fuzz-0", "GPU-fuzz-1", "", 1])},
                    optional={
                        "index": st.integers(-2, 40000) | any_json,
                        "model": st.text(max_size=10) | st.none(),
                        "mem_total_mib": numbers,
                        "mig_parent": st.sampled_from(["GPU-fuzz-0", None, "GPU-nope", 4]),
                        "mig_profile": st.text(max_size=60) | st.none(),
                    },
                ),
                max_size=3,
            )
            | any_json
        ),
        "series": series if draw(st.integers(0, 9)) else draw(any_json),
    }
    return body


bodies = (
    batches().map(lambda b: ("json", orjson.dumps(b)))
    | any_json.map(lambda b: ("json", orjson.dumps(b)))
    | st.binary(max_size=200).map(lambda b: ("raw", b))
    | batches().map(lambda b: ("gzip", gzip.compress(orjson.dumps(b))))
    | st.binary(max_size=100).map(lambda b: ("gzip", b"\x1f\x8b\x08\x00" + b))
)


@pytest.mark.django_db
@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(body=bodies)
def test_no_generated_body_gets_a_5xx(client, body):
    from apps.fleet.models import Node

    node = Node.objects.filter(hostname="fuzz-node").first()
    if node is None:
        ingest_caches_clear()
        _node, token = node_with_token("fuzz-node")
        node_with_token("other-node")
        test_no_generated_body_gets_a_5xx.token = token
    token = test_no_generated_body_gets_a_5xx.token
    kind, data = body
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    if kind == "gzip":
        headers["HTTP_CONTENT_ENCODING"] = "gzip"
    before = RawSample.objects.count()
    r = client.post(SAMPLES_URL, data=data, content_type="application/json", **headers)
    assert r.status_code in (202, 400, 403, 413), (r.status_code, r.content[:500], data[:500])
    if r.status_code != 202:
        assert RawSample.objects.count() == before
        assert r.json()["detail"]
    else:
        assert RawSample.objects.count() == before + r.json()["accepted"]
