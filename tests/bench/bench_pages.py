"""Page benchmark: 1,000 GPUs x 90 days of rollups; each page requested 50 times by a fleet
admin with the Django test client; prints p50/p95 server time per page.

Target: p95 under 100 ms for the overview, team and project pages.

Runs against its own PostgreSQL database (``<DATABASE_URL's name>_pages``, created and seeded
once, reused on later runs; ``--reseed`` rebuilds it) so that other benchmarks never see or
wipe its rows. Seeding is set-based SQL (``generate_series``), not Python loops.

    python tests/bench/run.py pages            # or: python tests/bench/bench_pages.py
    python tests/bench/bench_pages.py team project   # only these pages

Measured 2026-11-29 on the shared 2-core box with
``DATABASE_URL=postgres://postgres@127.0.0.1:5432/fw_dash python tests/bench/bench_pages.py``
(p50 / p95 ms; "before" is the tree of 938e42f):

    page          before (load 3.5-4.8)   after (load 0.7-0.9)   after, 1st run after --reseed
    overview      3062 / 3887               67 / 89                87 / 104
    team            79 / 100                21 / 23                27 / 34
    project        145 / 217                66 / 73                72 / 89
    overview 30d        -                   97 / 102              118 / 145

Targets met, with little margin on the overview (runs vary by ~20 ms on this box; the first
run after seeding competes with autovacuum and cold caches). Before, ``efficiency_by`` summed
every allocation x GPU x hour row of each range (the overview asks for five ranges: ~1 M
rows); now whole days come from ``UsageDaily``, the partial days at a range's ends and the
hourly capacity chart from ``UsageHourly`` (per-project sums of each hour), the project
heatmap is one statement and "GPUs now" picks each GPU's newest row in the database.
Not targeted and still slow: the fleet page and its refresh fragment (~220-280 / 300-350 ms:
they render all 1,000 GPUs in Python); ``overview 30d`` (its 3-hour capacity chart reads
30 days of ``UsageHourly``).
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

GPUS_PER_NODE = 8
NODES = 125  # 1,000 GPUs
DAYS = 90
TEAMS = 20
PROJECTS_PER_TEAM = 5
REQUESTS = 50
# 5-minute rollups only for the last days: they are what the heatmap, job and GPU charts read
# for the default 7-day range; 90 days of them (~20 M rows) take too long to seed on 2 cores.
ROLLUP_5M_DAYS = 8
SEED_MARK = "bench-pages-v1"


def _database_url() -> str:
    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/flopwatch_bench")
    if not url.startswith("postgres"):
        sys.exit("bench_pages needs PostgreSQL: set DATABASE_URL=postgres://...")
    base, name = url.rsplit("/", 1)
    return f"{base}/{name}_pages"


def _ensure_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def setup_django() -> None:
    url = _database_url()
    _ensure_database(url)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "apps.settings")
    os.environ.setdefault("FLOPWATCH_ENV", "test")
    os.environ.setdefault("FLOPWATCH_VAR_DIR", "/tmp/flopwatch-bench-pages")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def seeded() -> bool:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.filter(username="bench-admin").exists()


def _has_rows(table: str) -> bool:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {table})")  # noqa: S608 - fixed names
        return cursor.fetchone()[0]


def seed(*, fresh: bool) -> None:
    """1,000 GPUs in two clusters, 100 projects, jobs filling ~80 % of the time for 90 days,
    hourly and daily rollups for the 90 days and 5-minute rollups for the last
    ``ROLLUP_5M_DAYS`` days, consistent with those jobs. Stages already done are skipped
    (seeding takes minutes on a busy 2-core machine) unless ``fresh``."""
    import datetime as dt
    from decimal import Decimal

    from django.db import connection, transaction
    from django.utils import timezone
    from tqdm import tqdm

    from apps.chargeback.models import GpuModel, GpuModelAlias, Rate
    from apps.chargeback.selectors import gpu_model_name_normalise
    from apps.fleet.models import Cluster, Gpu, Node
    from apps.tenancy.models import Allocation, AllocationGpu, Project, Team

    rng = random.Random(7)
    now = timezone.now()
    t0 = now - dt.timedelta(days=DAYS)
    steps = tqdm(total=8, desc="seeding", unit="step")
    if not fresh and _has_rows("tenancy_allocationgpu"):
        _seed_rollups(now=now, steps=steps, connection=connection)
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE telemetry_gpurollup5m, telemetry_allocationgpuhourly, "
            "telemetry_usagehourly, telemetry_usagedaily, telemetry_capacitydaily, "
            "tenancy_allocationgpu, "
            "tenancy_allocation, tenancy_project_owners, tenancy_project, tenancy_membership, "
            "tenancy_team, fleet_gpu, fleet_node, fleet_cluster CASCADE"
        )
    models = {"bench-east": "NVIDIA H100 80GB HBM3", "bench-west": "NVIDIA A100-SXM4-80GB"}
    for name, price in zip(models.values(), ("2.50", "1.40"), strict=True):
        alias = GpuModelAlias.objects.filter(name=gpu_model_name_normalise(name)).first()
        if alias is None:
            model = GpuModel.objects.create(slug=f"bench-{price}", name=name)
            GpuModelAlias.objects.create(gpu_model=model, name=gpu_model_name_normalise(name))
        else:
            model = alias.gpu_model
        Rate.objects.get_or_create(
            gpu_model=model,
            cluster=None,
            effective_from=dt.date(2020, 1, 1),
            defaults={"price_per_gpu_hour": Decimal(price)},
        )
    with transaction.atomic():
        clusters = [
            Cluster.objects.create(slug=slug, name=slug.title(), description=SEED_MARK)
            for slug in models
        ]
        nodes = Node.objects.bulk_create(
            Node(
                cluster=clusters[i % 2],
                hostname=f"bench-node-{i:03d}",
                last_seen_at=now,
                agent_source="sim",
            )
            for i in range(NODES)
        )
        gpus = Gpu.objects.bulk_create(
            Gpu(
                uuid=f"GPU-bench-{node.hostname}-{index}",
                node=node,
                index=index,
                model_name=models[clusters[i % 2].slug],
                mem_total_mib=81559,
                first_seen_at=t0,
                last_seen_at=now,
            )
            for i, node in enumerate(nodes)
            for index in range(GPUS_PER_NODE)
        )
        teams = Team.objects.bulk_create(
            Team(slug=f"team-{t:02d}", name=f"Team {t:02d}", cost_center=f"CC-{t:02d}")
            for t in range(TEAMS)
        )
        projects = Project.objects.bulk_create(
            Project(team=team, slug=f"{team.slug}-p{p}", name=f"{team.name} project {p}")
            for team in teams
            for p in range(PROJECTS_PER_TEAM)
        )
    steps.update()
    # Jobs: each node runs whole-node or half-node jobs of 4-72 h with gaps of 0-12 h.
    allocations, links = [], []
    by_node = {}
    for gpu in gpus:
        by_node.setdefault(gpu.node_id, []).append(gpu)
    n = 0
    for node in nodes:
        node_gpus = by_node[node.id]
        for half in (node_gpus[:4], node_gpus[4:]):
            t = t0 + dt.timedelta(hours=rng.uniform(0, 12))
            while t < now:
                length = dt.timedelta(hours=rng.uniform(4, 72))
                end = t + length
                n += 1
                allocations.append(
                    Allocation(
                        source="bench",
                        external_id=f"bench:{n}",
                        project=rng.choice(projects),
                        user_name=f"user{rng.randint(1, 200)}",
                        start=t,
                        end=None if end >= now else end,
                    )
                )
                links.append(half)
                t = end + dt.timedelta(hours=rng.uniform(0, 12))
    with transaction.atomic():
        allocations = Allocation.objects.bulk_create(allocations, batch_size=5000)
        AllocationGpu.objects.bulk_create(
            (
                AllocationGpu(allocation=a, gpu=g)
                for a, half in zip(allocations, links, strict=True)
                for g in half
            ),
            batch_size=10000,
        )
    steps.update()
    _seed_rollups(now=now, steps=steps, connection=connection)


def _seed_rollups(*, now, steps, connection) -> None:
    now_ts = int(now.timestamp())
    since_5m = now_ts - ROLLUP_5M_DAYS * 86400
    with connection.cursor() as cursor:
        # Deterministic "activity" per (GPU, project, time): a daily wave scaled per project.
        activity = (
            "LEAST(1.0, GREATEST(0.0, (0.15 + 0.8 * ((a.project_id * 37) % 100) / 100.0)"
            " * (0.55 + 0.45 * sin(ag.gpu_id * 0.37 + {t} / 13750.0))))"
        )
        if not _has_rows("telemetry_allocationgpuhourly"):
            cursor.execute(
                f"""
                INSERT INTO telemetry_allocationgpuhourly
                    (allocation_id, gpu_id, hour, allocated_s, observed_s, busy_s, idle_s,
                     mem_held_idle_s)
                SELECT ag.allocation_id, ag.gpu_id, h, s, s * 0.98,
                       s * 0.98 * {activity.format(t="h")},
                       s * 0.98 * GREATEST(0, 0.35 - {activity.format(t="h")}),
                       s * 0.98 * GREATEST(0, 0.35 - {activity.format(t="h")}) * 0.6
                FROM tenancy_allocationgpu ag
                JOIN tenancy_allocation a ON a.id = ag.allocation_id,
                LATERAL generate_series(
                    (floor(extract(epoch FROM a.start) / 3600) * 3600)::bigint,
                    extract(epoch FROM COALESCE(a."end", to_timestamp({now_ts})))::bigint - 1,
                    3600) AS h,
                LATERAL (SELECT LEAST(3600.0,
                    extract(epoch FROM COALESCE(a."end", to_timestamp({now_ts}))) - h,
                    h + 3600 - extract(epoch FROM a.start))::float AS s) AS secs
                """  # noqa: S608 - only constants are formatted in
            )
        steps.update()
        cursor.execute("TRUNCATE telemetry_gpurollup5m")
        cursor.execute(
            f"""
            INSERT INTO telemetry_gpurollup5m
                (gpu_id, bucket, samples, covered_s, missing_s, allocated_s, busy_s, idle_s,
                 mem_held_idle_s, util_mean, util_max, sm_active_mean, mem_used_mean_mib,
                 mem_used_max_mib, power_mean_w, energy_j, activity_source)
            SELECT ag.gpu_id, b, 30, 294.0, 6.0, 300.0,
                   294.0 * {activity.format(t="b")},
                   CASE WHEN {activity.format(t="b")} < 0.2 THEN 294.0 ELSE 0 END,
                   CASE WHEN {activity.format(t="b")} < 0.2 THEN 294.0 ELSE 0 END,
                   100 * {activity.format(t="b")}, 100, {activity.format(t="b")},
                   20000 + 40000 * {activity.format(t="b")}, 60000,
                   90 + 500 * {activity.format(t="b")}, 300 * 400, 'sm_active'
            FROM tenancy_allocationgpu ag
            JOIN tenancy_allocation a ON a.id = ag.allocation_id,
            LATERAL generate_series(
                GREATEST({since_5m}, (floor(extract(epoch FROM a.start) / 300) * 300)::bigint),
                extract(epoch FROM COALESCE(a."end", to_timestamp({now_ts})))::bigint - 1,
                300) AS b
            WHERE COALESCE(a."end", to_timestamp({now_ts})) > to_timestamp({since_5m})
            ON CONFLICT DO NOTHING
            """  # noqa: S608 - only constants are formatted in
        )
        steps.update()
        cursor.execute(
            "TRUNCATE telemetry_usagehourly, telemetry_usagedaily, telemetry_capacitydaily"
        )
        cursor.execute(
            """
            INSERT INTO telemetry_usagehourly
                (hour, project_id, cluster_id, gpu_model, mig_profile, allocated_s, observed_s,
                 busy_s, idle_s, mem_held_idle_s)
            SELECT h.hour, a.project_id, n.cluster_id, g.model_name, g.mig_profile,
                   sum(h.allocated_s), sum(h.observed_s), sum(h.busy_s), sum(h.idle_s),
                   sum(h.mem_held_idle_s)
            FROM telemetry_allocationgpuhourly h
            JOIN tenancy_allocation a ON a.id = h.allocation_id
            JOIN fleet_gpu g ON g.id = h.gpu_id
            JOIN fleet_node n ON n.id = g.node_id
            GROUP BY 1, 2, 3, 4, 5
            ORDER BY 1
            """  # in time order, as the rollups write them (pages read time ranges)
        )
        cursor.execute(
            """
            INSERT INTO telemetry_usagedaily
                (day, team_id, project_id, cluster_id, gpu_model, allocated_s, observed_s,
                 busy_s, idle_s, mem_held_idle_s)
            SELECT (to_timestamp(h.hour) AT TIME ZONE 'UTC')::date, p.team_id, a.project_id,
                   n.cluster_id, g.model_name, sum(h.allocated_s), sum(h.observed_s),
                   sum(h.busy_s), sum(h.idle_s), sum(h.mem_held_idle_s)
            FROM telemetry_allocationgpuhourly h
            JOIN tenancy_allocation a ON a.id = h.allocation_id
            JOIN tenancy_project p ON p.id = a.project_id
            JOIN fleet_gpu g ON g.id = h.gpu_id
            JOIN fleet_node n ON n.id = g.node_id
            GROUP BY 1, 2, 3, 4, 5
            ORDER BY 1
            """  # in time order, as the rollups write them (pages read time ranges)
        )
        steps.update()
        cursor.execute(
            f"""
            INSERT INTO telemetry_capacitydaily
                (day, cluster_id, gpu_model, capacity_s, allocated_s, unallocated_s, busy_s)
            SELECT d.day, n.cluster_id, g.model_name, count(*) * 86400.0,
                   COALESCE(sum(u.allocated_s), 0),
                   count(*) * 86400.0 - COALESCE(sum(u.allocated_s), 0),
                   COALESCE(sum(u.busy_s), 0)
            FROM (SELECT DISTINCT (to_timestamp(t) AT TIME ZONE 'UTC')::date AS day
                  FROM generate_series(({now_ts} - {DAYS} * 86400)::bigint, {now_ts}, 86400) t) d
            CROSS JOIN fleet_gpu g
            JOIN fleet_node n ON n.id = g.node_id
            LEFT JOIN (
                SELECT gpu_id, (to_timestamp(hour) AT TIME ZONE 'UTC')::date AS day,
                       sum(allocated_s) AS allocated_s, sum(busy_s) AS busy_s
                FROM telemetry_allocationgpuhourly GROUP BY 1, 2
            ) u ON u.gpu_id = g.id AND u.day = d.day
            GROUP BY 1, 2, 3
            """  # noqa: S608 - only constants are formatted in
        )
        steps.update()
        cursor.execute(
            "ANALYZE telemetry_gpurollup5m, telemetry_allocationgpuhourly, "
            "telemetry_usagehourly, telemetry_usagedaily, telemetry_capacitydaily, "
            "tenancy_allocation, "
            "tenancy_allocationgpu, fleet_gpu"
        )
        steps.update()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from apps.tenancy.roles import FLEET_ADMINS_GROUP, role_groups_ensure

    role_groups_ensure()
    admin, _ = get_user_model().objects.get_or_create(username="bench-admin")
    admin.groups.add(Group.objects.get(name=FLEET_ADMINS_GROUP))
    steps.update()
    steps.close()


def counts() -> dict[str, int]:
    from django.db import connection

    out = {}
    with connection.cursor() as cursor:
        for table in (
            "fleet_gpu",
            "tenancy_allocation",
            "telemetry_gpurollup5m",
            "telemetry_allocationgpuhourly",
            "telemetry_usagehourly",
            "telemetry_usagedaily",
            "telemetry_capacitydaily",
        ):
            cursor.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed names
            out[table] = cursor.fetchone()[0]
    return out


def pages() -> dict[str, str]:
    from django.urls import reverse

    from apps.fleet.models import Gpu
    from apps.telemetry.models import AllocationGpuHourly
    from apps.tenancy.models import Allocation, Project, Team

    team = Team.objects.order_by("slug").first()
    project = Project.objects.filter(team=team).order_by("slug").first()
    job = Allocation.objects.filter(project=project).order_by("-start").first()
    gpu = Gpu.objects.order_by("id").first()
    assert AllocationGpuHourly.objects.exists()
    return {
        "overview": reverse("home"),
        "overview 30d": reverse("home") + "?range=30d",
        "teams": reverse("teams"),
        "team": reverse("team", args=[team.slug]),
        "projects": reverse("projects"),
        "project": reverse("project", args=[project.slug]),
        "job": reverse("job", args=[job.pk]),
        "fleet": reverse("fleet"),
        "fleet state": reverse("fleet-fragment"),
        "gpu": reverse("gpu", args=[gpu.uuid]),
    }


def measure() -> None:
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client(HTTP_HOST="localhost")
    client.force_login(get_user_model().objects.get(username="bench-admin"))
    print(f"{'page':<14} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    only = [a for a in sys.argv[1:] if not a.startswith("--")]
    for name, url in pages().items():
        if only and name not in only:
            continue
        response = client.get(url)  # warm caches, check it works
        assert response.status_code == 200, (url, response.status_code)
        times = []
        for _ in range(REQUESTS):
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
        times.sort()
        p50 = statistics.median(times)
        p95 = times[int(0.95 * len(times)) - 1]
        target = " (target p95 < 100 ms)" if name in ("overview", "team", "project") else ""
        print(f"{name:<14} {p50:8.1f} {p95:8.1f} {times[-1]:8.1f}{target}", flush=True)


def main() -> int:
    setup_django()
    if "--reseed" in sys.argv or not seeded():
        started = time.monotonic()
        seed(fresh="--reseed" in sys.argv)
        print(f"seeded in {time.monotonic() - started:.0f} s")
    print(", ".join(f"{table}: {n:,}" for table, n in counts().items()))
    measure()
    return 0


if __name__ == "__main__":
    sys.exit(main())
