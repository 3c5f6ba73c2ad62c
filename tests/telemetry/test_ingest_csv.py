"""manage.py import_samples: good rows in, bad rows reported by line, idempotent re-runs."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command

from apps.fleet.models import Cluster, Gpu, Node
from apps.telemetry.models import RawSample
from apps.telemetry.services import ingest_caches_clear, samples_csv_import
from apps.tenancy.models import Allocation, Project, Team

pytestmark = pytest.mark.django_db

HEADER = "timestamp,node,gpu_uuid,gpu_model,util_pct,sm_active,mem_used_mib,mem_total_mib,power_w,job,project,team\n"
T0 = int((datetime.now(tz=UTC) - timedelta(days=40)).timestamp())  # older than the live window
T0 -= T0 % 60


@pytest.fixture(autouse=True)
def _fresh_caches():
    ingest_caches_clear()
    yield
    ingest_caches_clear()


def write(tmp_path, lines: list[str]):
    path = tmp_path / "samples.csv"
    path.write_text(HEADER + "".join(line + "\n" for line in lines))
    return path


def good_rows() -> list[str]:
    rows = []
    for i in range(5):
        ts = T0 + 60 * i
        iso = datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")
        rows.append(
            f"{ts},n1,GPU-c1,NVIDIA A100,{10 * i},0.{i},1000,40960,100.5,slurm:77,vision,ml-team"
        )
        rows.append(f"{iso},n1,GPU-c2,NVIDIA A100,50,,2000,40960,,slurm:77,vision,ml-team")
        rows.append(f"{ts},n2,GPU-c3,NVIDIA H100,5,0.05,0,81559,70,,,")
    return rows


def test_import_creates_what_it_does_not_know(tmp_path):
    result = samples_csv_import(path=str(write(tmp_path, good_rows())), cluster="legacy")
    assert (result.rows, result.accepted, result.rejected) == (15, 15, 0)
    assert Cluster.objects.get(slug="legacy")
    assert set(Node.objects.values_list("hostname", flat=True)) == {"n1", "n2"}
    assert Gpu.objects.get(uuid="GPU-c3").model_name == "NVIDIA H100"
    assert Gpu.objects.get(uuid="GPU-c1").mem_total_mib == 40960
    assert sorted(Gpu.objects.filter(node__hostname="n1").values_list("index", flat=True)) == [0, 1]
    project = Project.objects.get(slug="vision")
    assert project.team == Team.objects.get(slug="ml-team")
    allocation = Allocation.objects.get()
    assert (allocation.source, allocation.external_id, allocation.project) == (
        "slurm",
        "slurm:77",
        project,
    )
    assert allocation.start == datetime.fromtimestamp(T0, tz=UTC)
    # History: closed at its last sample plus one interval (the CSV's, 60 s).
    assert Node.objects.get(hostname="n1").sample_interval_s == 60
    assert allocation.end == datetime.fromtimestamp(T0 + 240 + 60, tz=UTC)
    assert set(allocation.gpus.values_list("uuid", flat=True)) == {"GPU-c1", "GPU-c2"}
    c2 = RawSample.objects.filter(gpu__uuid="GPU-c2").order_by("ts")
    assert [s.sm_active for s in c2] == [None] * 5
    assert RawSample.objects.filter(gpu__uuid="GPU-c1", ts=T0 + 120).get().util_pct == 20.0


def test_bad_rows_reported_by_line_good_rows_in(tmp_path):
    rows = good_rows()
    bad = [
        f"{T0},n1,GPU-c1,NVIDIA A100,150,0.5,1000,40960,100,slurm:77,vision,ml-team",  # util
        "yesterday,n1,GPU-c1,NVIDIA A100,50,0.5,1000,40960,100,,,",  # timestamp
        f"{T0 + 7},,GPU-c1,NVIDIA A100,50,0.5,1000,40960,100,,,",  # node empty
        f"{T0 + 8},n1,GPU-c1,NVIDIA A100,50,1.5,1000,40960,100,,,",  # sm_active
        f"{T0 + 9},n1,GPU-c1,NVIDIA A100,fast,0.5,1000,40960,100,,,",  # not a number
        f"{T0 + 11},n1,GPU-c1,NVIDIA A100,50,0.5,-1,40960,100,,,",  # negative memory
        f"{T0 + 10**9},n1,GPU-c1,NVIDIA A100,50,0.5,1,40960,100,,,",  # future
    ]
    lines = rows[:3] + bad + rows[3:]
    result = samples_csv_import(path=str(write(tmp_path, lines)), chunk_rows=4)
    assert result.accepted == 15
    assert result.rejected == 7
    by_line = dict(result.rejects)
    assert set(by_line) == {5, 6, 7, 8, 9, 10, 11}
    assert "util_pct above 100" in by_line[5]
    assert "timestamp" in by_line[6]
    assert "node is empty" in by_line[7]
    assert "sm_active above 1" in by_line[8]
    assert "util_pct is not a number" in by_line[9]
    assert "mem_used_mib below 0" in by_line[10]
    assert "future" in by_line[11]
    assert RawSample.objects.count() == 15


def test_rerun_is_idempotent_and_command_reports(tmp_path):
    path = write(tmp_path, [*good_rows(), f"{T0},n1,GPU-c1,X,999,,,,,,,"])
    out, err = io.StringIO(), io.StringIO()
    call_command("import_samples", str(path), "--no-progress", stdout=out, stderr=err)
    assert "15 samples stored" in out.getvalue()
    assert "line 17: util_pct above 100" in err.getvalue()
    snapshot = list(RawSample.objects.order_by("gpu_id", "ts").values_list())
    out = io.StringIO()
    call_command("import_samples", str(path), "--no-progress", stdout=out, stderr=io.StringIO())
    assert "0 samples stored, 15 duplicates" in out.getvalue()
    assert list(RawSample.objects.order_by("gpu_id", "ts").values_list()) == snapshot
    assert Allocation.objects.count() == 1 and Node.objects.count() == 2


def test_missing_file_and_bad_header(tmp_path):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("import_samples", str(tmp_path / "nope.csv"), "--no-progress")
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(CommandError, match="header lacks"):
        call_command("import_samples", str(path), "--no-progress")


def test_simulator_csv_imports(tmp_path):
    """The agent simulator writes the same format (used by the demo seeding)."""
    from agents.sources.sim import Fleet, demo_fleet

    path = tmp_path / "sim.csv"
    fleet = Fleet(seed=3, nodes=demo_fleet(seed=0).nodes[:2])
    end = datetime.now(tz=UTC).timestamp() - 30 * 86400
    written = fleet.write_csv(path, end - 3600, end, interval=60)
    result = samples_csv_import(path=str(path))
    assert result.rejected == 0
    assert result.accepted == written


def test_nul_character_refuses_the_row_not_the_import(tmp_path):
    # PostgreSQL text cannot hold U+0000: the row is reported, the others go in.
    rows = good_rows()
    bad = f"{T0 + 13},n1,GPU-c1,NVIDIA A100,50,0.5,1000,40960,100,slurm:\x0077,vision,ml-team"
    result = samples_csv_import(path=str(write(tmp_path, [*rows[:3], bad, *rows[3:]])))
    assert result.accepted == 15
    assert dict(result.rejects) == {5: "job contains a NUL character"}
    assert RawSample.objects.count() == 15
