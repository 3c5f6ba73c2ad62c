"""dcgm-exporter parser on a real scrape, label drift, sentinels and malformed input."""

from __future__ import annotations

import pytest

from agents.attribution import Kubernetes
from agents.sources.dcgm import DcgmParseError, DcgmSource, parse_metrics


def test_real_scrape(fixtures_dir):
    text = (fixtures_dir / "dcgm" / "datadog-integrations-core-metrics.txt").read_text()
    gpus, readings = DcgmSource(fetch=lambda: text).read(now=5.0)
    by = {r.gpu: r.values for r in readings}
    t4 = by["GPU-20c56d28-0da5-6d26-a36a-e7af1ce2586e"]
    assert t4 == {
        "sm_clock_mhz": 300,
        "temp_c": 25,
        "power_w": 8.969,
        "energy_mj": 128996013.0,
        "util_pct": 0.0,
        "xid": 0,
        "mem_used_mib": 0,
    }
    info = {g.uuid: g for g in gpus}
    assert info["GPU-20c56d28-0da5-6d26-a36a-e7af1ce2586e"].mem_total_mib == 15109  # used + free
    assert info["GPU-20c56d28-0da5-6d26-a36a-e7af1ce2586e"].model == "Tesla T4"
    # The A10G line carries pod labels -> Kubernetes attribution.
    allocs = Kubernetes().attribute(gpus=gpus)
    assert allocs == {
        "GPU-abc": {"job": "k8s:ray-llm/ray-1111111", "project": "ray-llm", "user": None}
    }
    # Label-less dummy families are not attributed to any GPU.
    assert set(info) == {
        "GPU-20c56d28-0da5-6d26-a36a-e7af1ce2586e",
        "GPU-9ef1b6d0-3643-5dd7-b823-c0ec20dcf2d5",
        "GPU-abc",
    }


def test_label_drift_mig_empty_pod_and_blank_sentinel():
    text = (
        "# TYPE DCGM_FI_PROF_GR_ENGINE_ACTIVE gauge\n"
        'DCGM_FI_PROF_GR_ENGINE_ACTIVE{gpu="0",uuid="GPU-x",GPU_I_ID="2",GPU_I_PROFILE="3g.40gb",hostname="h",pod="",namespace=""} 0.25\n'
        "# TYPE DCGM_FI_DEV_FB_USED gauge\n"
        'DCGM_FI_DEV_FB_USED{gpu="0",uuid="GPU-x",GPU_I_ID="2",GPU_I_PROFILE="3g.40gb",hostname="h"} 11091\n'
        "# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n"
        'DCGM_FI_DEV_GPU_TEMP{gpu="0",uuid="GPU-x",GPU_I_ID="2",hostname="h"} 2147483632\n'
    )
    gpus, readings = DcgmSource(fetch=lambda: text).read(now=1.0)
    [g], [r] = gpus, readings
    assert g.uuid == "GPU-x/gi2"
    assert g.mig_parent == "GPU-x"
    assert g.mig_profile == "3g.40gb"
    assert r.values == {"gr_engine_active": 0.25, "mem_used_mib": 11091}  # blank temp dropped
    assert Kubernetes().attribute(gpus=gpus) == {}


@pytest.mark.parametrize(
    "bad",
    [
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-1" 5\n',
        "DCGM_FI_DEV_GPU_UTIL{} not-a-number\n",
        "\x00\x01garbage{{{\n",
    ],
)
def test_malformed_input_is_a_clear_error(bad):
    with pytest.raises(DcgmParseError, match="invalid Prometheus text format"):
        parse_metrics(bad)
