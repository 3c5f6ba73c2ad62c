"""NVML source against a fake NVML fed with real nvidia-smi captures."""

from __future__ import annotations

from fake_nvml import FakeNvml, parse_capture

from agents.sources.nvml import NvmlSource


def _dev(fixtures_dir, name, phase):
    text = (fixtures_dir / "nvidia-smi" / name).read_text()
    return parse_capture(text, phase)


H100 = "linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01.txt"
MIG = "linux-x86_64__nvidia-h100-mig__590.48.01.txt"
L40S = "linux-x86_64__nvidia-l40s__595.80.txt"


def test_h100_load_and_idle(fixtures_dir):
    load = _dev(fixtures_dir, H100, "load")
    idle = _dev(fixtures_dir, H100, "idle")
    idle.uuid = "GPU-idle"
    src = NvmlSource(nvml=FakeNvml([load, idle]))
    gpus, readings = src.read(now=100.0)
    g, r = gpus[0], readings[0]
    assert g.model == "NVIDIA H100 80GB HBM3"
    assert g.mem_total_mib == 81559
    assert g.mig_parent is None
    assert r.values["util_pct"] == 100.0
    assert r.values["mem_used_mib"] == 19818
    assert r.values["power_w"] == 629.4 or abs(r.values["power_w"] - 629.45) < 0.1
    assert r.values["temp_c"] == 59
    assert r.values["sm_clock_mhz"] == 1980
    assert r.values["energy_mj"] is None  # not supported by the fake: null, no crash
    assert [p["pid"] for p in g.processes] == [11327, 11328, 11345]
    assert readings[1].values["mem_used_mib"] < 100


def test_utilization_is_averaged_over_new_samples_only(fixtures_dir):
    dev = _dev(fixtures_dir, H100, "load")
    dev.util_samples = [(10, 20), (20, 40), (30, 60)]
    src = NvmlSource(nvml=FakeNvml([dev]))
    assert src.read(now=1)[1][0].values["util_pct"] == 40.0
    dev.util_samples += [(40, 100), (50, 80)]
    assert src.read(now=2)[1][0].values["util_pct"] == 90.0  # only samples after ts 30
    # No new samples: falls back to the instantaneous reading instead of failing.
    assert src.read(now=3)[1][0].values["util_pct"] == float(dev.util)


def test_first_read_averages_only_the_last_window(fixtures_dir):
    """NVML's buffer reaches back before the agent started; the first sample must not carry
    the tail of a job that ended before it (a real H200 whose load had just stopped read 47 %)."""
    dev = _dev(fixtures_dir, H100, "load")
    dev.util_samples = [(50_000_000, 100), (95_000_000, 20), (99_000_000, 40)]
    src = NvmlSource(nvml=FakeNvml([dev]), first_window_s=10)
    assert src.read(now=100.0)[1][0].values["util_pct"] == 30.0
    dev.util_samples.append((105_000_000, 90))
    assert src.read(now=110.0)[1][0].values["util_pct"] == 90.0


def test_memory_used_leaves_out_the_driver_reservation(fixtures_dir):
    """nvidia-smi's "Used" (NVML v2); v1 counts the reservation (479 MiB on the H100 capture,
    615 MiB on a real idle H200) as used, which no idle GPU should show."""
    idle = _dev(fixtures_dir, H100, "idle")
    assert (idle.mem_used, idle.mem_reserved) == (0, 479 * 2**20)
    fake = FakeNvml([idle])
    assert fake.nvmlDeviceGetMemoryInfo(idle).used == 479 * 2**20  # what v1 says
    gpus, readings = NvmlSource(nvml=fake).read(now=1.0)
    assert readings[0].values["mem_used_mib"] == 0
    assert gpus[0].mem_total_mib == 81559


def test_memory_falls_back_to_v1_on_a_driver_without_v2(fixtures_dir):
    idle = _dev(fixtures_dir, H100, "idle")
    idle.mem_v2 = False
    fake = FakeNvml([idle])
    calls = []
    real = fake.nvmlDeviceGetMemoryInfo
    fake.nvmlDeviceGetMemoryInfo = lambda d, version=None: calls.append(version) or real(d, version)
    src = NvmlSource(nvml=fake)
    assert src.read(now=1.0)[1][0].values["mem_used_mib"] == 479  # v1: reservation included
    assert src.read(now=2.0)[1][0].values["mem_used_mib"] == 479
    assert calls == [fake.nvmlMemory_v2, None, None]  # v2 asked once, then never again


def test_mig_instances_are_devices_with_parent(fixtures_dir):
    dev = _dev(fixtures_dir, MIG, "load")
    src = NvmlSource(nvml=FakeNvml([dev]))
    gpus, readings = src.read(now=1.0)
    parent, *migs = gpus
    assert len(migs) == 4
    assert all(m.mig_parent == parent.uuid for m in migs)
    assert [m.mig_profile for m in migs] == ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]
    assert migs[0].mem_total_mib == 40448
    # Utilization is N/A under MIG: null, and the parent sends no reading of its own.
    assert [r.gpu for r in readings] == [m.uuid for m in migs]
    assert all(r.values["util_pct"] is None for r in readings)
    assert readings[0].values["mem_used_mib"] == 11091


def test_l40s_reports_100_percent_while_idle(fixtures_dir):
    idle = _dev(fixtures_dir, L40S, "idle")
    assert idle.util == 100
    assert idle.mem_used == 0
    src = NvmlSource(nvml=FakeNvml([idle]))
    gpus, readings = src.read(now=1.0)
    assert readings[0].values["util_pct"] == 0.0
    assert "util_no_context" in gpus[0].notes
    load = _dev(fixtures_dir, L40S, "load")
    gpus, readings = NvmlSource(nvml=FakeNvml([load])).read(now=1.0)
    assert readings[0].values["util_pct"] == 9.0
    assert not gpus[0].notes


def test_a_job_that_ended_during_the_interval_keeps_its_samples(fixtures_dir):
    """No context at the end of an interval is not no context throughout it: the samples of
    the part before the job ended are real. Only a second empty read zeroes a phantom 100 %."""
    dev = _dev(fixtures_dir, H100, "load")
    dev.util_samples = [(1_000_000, 80)]
    src = NvmlSource(nvml=FakeNvml([dev]))
    assert src.read(now=2.0)[1][0].values["util_pct"] == 80.0
    dev.procs, dev.mem_used = [], 0  # the job exits
    dev.util_samples += [(2_500_000, 60), (3_000_000, 0)]
    gpus, readings = src.read(now=3.0)
    assert readings[0].values["util_pct"] == 30.0
    assert not gpus[0].notes
    dev.util_samples.append((3_500_000, 100))  # the board's phantom 100 % with no context
    gpus, readings = src.read(now=4.0)
    assert readings[0].values["util_pct"] == 0.0
    assert "util_no_context" in gpus[0].notes


def test_xid_events_are_reported_per_gpu(fixtures_dir):
    a = _dev(fixtures_dir, H100, "load")
    b = _dev(fixtures_dir, H100, "idle")
    b.uuid = "GPU-b"
    fake = FakeNvml([a, b])
    src = NvmlSource(nvml=fake)
    assert [r.values["xid"] for r in src.read(now=1)[1]] == [0, 0]
    fake.xid(b, 79)
    assert [r.values["xid"] for r in src.read(now=2)[1]] == [0, 79]
    assert [r.values["xid"] for r in src.read(now=3)[1]] == [0, 79]  # last XID stays
    # MIG instances cannot register events: xid is null there, not a crash.
    mig = NvmlSource(nvml=FakeNvml([_dev(fixtures_dir, MIG, "load")])).read(now=1)[1]
    assert all(r.values["xid"] is None for r in mig)
