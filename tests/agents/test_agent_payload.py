"""Payload building (series, splitting) and attribution (static map, Slurm via /proc)."""

from __future__ import annotations

import json

from agents.attribution import Chain, Slurm, StaticMap
from agents.payload import build_payloads, build_series, count_samples
from agents.sources import GpuInfo, Reading


def _r(gpu, ts, job=None, **values):
    return Reading(
        gpu=gpu,
        ts=ts,
        values=values or {"util_pct": 1.0},
        alloc={"job": job, "project": "p", "user": "u"} if job else None,
    )


def test_series_split_on_job_change_and_fields():
    rs = [
        _r("g", 10, "slurm:1"),
        _r("g", 20, "slurm:1"),
        _r("g", 30, "slurm:2"),
        _r("h", 10),
        _r("g", 30, "slurm:2"),
    ]
    rs[3].values = {"util_pct": None, "power_w": 100.0}
    s = build_series(rs)
    assert [(e["gpu"], (e["alloc"] or {}).get("job"), e["ts"]) for e in s] == [
        ("g", "slurm:1", [10, 20]),
        ("g", "slurm:2", [30]),  # repeated timestamp collapsed
        ("h", None, [10]),
    ]
    assert "util_pct" not in s[2]
    assert s[2]["power_w"] == [100.0]


def test_split_by_sample_count_and_bytes():
    gpus = [GpuInfo(uuid=f"g{i}", index=i, model="m", mem_total_mib=1) for i in range(10)]
    rs = [_r(f"g{i}", t) for t in range(2500) for i in range(10)]
    ps = build_payloads(node="n", source="t", interval_s=1, gpus=gpus, readings=rs)
    assert [count_samples(p) for p in ps] == [10_000, 10_000, 5_000]
    assert len({p["batch_id"] for p in ps}) == 3
    ps = build_payloads(
        node="n", source="t", interval_s=1, gpus=gpus, readings=rs[:4000], max_bytes=50_000
    )
    assert all(len(json.dumps(p)) <= 50_000 for p in ps)
    assert sum(count_samples(p) for p in ps) == 4000


def test_static_map_and_slurm_from_proc(tmp_path):
    proc = tmp_path / "proc"
    (proc / "100").mkdir(parents=True)
    (proc / "100" / "environ").write_bytes(
        b"HOME=/x\0SLURM_JOB_ID=4242\0SLURM_JOB_ACCOUNT=llm-pretrain\0SLURM_JOB_USER=alice\0"
    )
    (proc / "200").mkdir()
    (proc / "200" / "environ").write_bytes(b"")  # unreadable in real life; empty here
    (proc / "200" / "cgroup").write_text(
        "0::/system.slice/slurmstepd.scope/job_777/step_0/user/task_0\n"
    )
    gpus = [
        GpuInfo(
            uuid="GPU-a",
            index=0,
            model="m",
            mem_total_mib=1,
            processes=[{"pid": 100, "mem_used_mib": 5}],
        ),
        GpuInfo(
            uuid="GPU-b",
            index=1,
            model="m",
            mem_total_mib=1,
            processes=[{"pid": 200, "mem_used_mib": 5}],
        ),
        GpuInfo(uuid="GPU-c", index=2, model="m", mem_total_mib=1, processes=[]),
        GpuInfo(
            uuid="GPU-d",
            index=3,
            model="m",
            mem_total_mib=1,
            processes=[{"pid": 999, "mem_used_mib": 5}],
        ),
    ]
    static = tmp_path / "map.json"
    static.write_text(
        json.dumps({"GPU-c": {"name": "reserved-c", "project": "rl-agents", "user": "quinn"}})
    )
    got = Chain([Slurm(proc_root=proc), StaticMap(path=static)]).attribute(gpus=gpus)
    assert got == {
        "GPU-a": {"job": "slurm:4242", "project": "llm-pretrain", "user": "alice"},
        "GPU-b": {"job": "slurm:777", "project": None, "user": None},
        "GPU-c": {"job": "static:reserved-c", "project": "rl-agents", "user": "quinn"},
    }


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["g0", "g1", "g2"]),
            st.integers(0, 50),
            st.sampled_from([None, "slurm:1", "k8s:ns/p"]),
            st.one_of(st.none(), st.floats(0, 100)),
        ),
        max_size=80,
    )
)
def test_series_invariants(rows):
    rs = [
        Reading(
            gpu=g,
            ts=float(t),
            values={"util_pct": u, "power_w": 1.0},
            alloc={"job": j} if j else None,
        )
        for g, t, j, u in rows
    ]
    series = build_series(rs)
    for s in series:
        assert all(a < b for a, b in zip(s["ts"], s["ts"][1:], strict=False))
        for k, v in s.items():
            if k not in ("gpu", "alloc"):
                assert len(v) == len(s["ts"])
    # Every (GPU, ts) appears; only exact repeats within one job run are collapsed.
    assert {(s["gpu"], t) for s in series for t in s["ts"]} == {(g, t) for g, t, _j, _u in rows}
