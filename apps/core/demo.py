"""The demo organisation: teams, projects, clusters, nodes, GPUs and one user per role.

Seeding is idempotent: every row is found by its natural key and updated, so ``make demo`` can
run any number of times.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from apps.fleet.models import Cluster, Gpu, Node
from apps.fleet.services import node_token_issue
from apps.tenancy.models import Membership, Project, Team
from apps.tenancy.roles import FINANCE_GROUP, FLEET_ADMINS_GROUP, role_groups_ensure

DEMO_PASSWORD = "flopwatch-demo"


@dataclass(frozen=True)
class DemoUser:
    username: str
    role: str
    email: str


DEMO_USERS = (
    DemoUser("admin", "fleet admin", "admin@example.com"),
    DemoUser("finance", "finance", "finance@example.com"),
    DemoUser("owner", "project owner (llm-pretrain, llm-finetune)", "owner@example.com"),
    DemoUser("member", "team member (vision)", "member@example.com"),
)

DEMO_TEAMS = {
    "nlp": ("Language Models", "CC-1001"),
    "vision": ("Computer Vision", "CC-1002"),
    "research": ("Research", "CC-2001"),
}
DEMO_PROJECTS = {
    "llm-pretrain": ("nlp", "LLM pre-training"),
    "llm-finetune": ("nlp", "LLM fine-tuning"),
    "rag-serving": ("nlp", "RAG serving"),
    "detector-train": ("vision", "Detector training"),
    "video-gen": ("vision", "Video generation"),
    "labeling-infer": ("vision", "Auto-labeling inference"),
    "protein-fold": ("research", "Protein folding"),
    "rl-agents": ("research", "RL agents"),
}


def demo_fleet_nodes() -> list[dict]:
    """The demo fleet's inventory, from the simulator, so seeded nodes and simulated agents
    agree on every hostname and GPU UUID."""
    from agents.sim import demo_fleet

    return [
        {
            "cluster": node.cluster,
            "hostname": node.hostname,
            "gpus": [
                {
                    "uuid": gpu_uuid,
                    "index": index,
                    "model": node.gpu_model,
                    "mem_total_mib": node.mem_total,
                }
                for index, gpu_uuid in enumerate(node.gpu_uuids())
            ],
        }
        for node in demo_fleet().nodes
    ]


HISTORY_INTERVAL_S = 60
# Six hours of one node a batch (2,880 samples): few transactions, well under the batch limit.
HISTORY_BATCH_S = 6 * 3600


def demo_history_seed(*, days: int, progress: bool = True) -> dict[str, int]:
    """Give the demo fleet ``days`` of history, up to now, through the real ingest path.

    The simulator generates the batches its agents would have sent (a sample a minute, six
    hours of one node a batch) and each goes through ``gpu_samples_ingest`` like an agent's push, so
    validation, storage, attribution and rollup marking are the production code. Running it
    again is cheap and changes nothing: it resumes after the newest sample already stored
    (filling any gap left while the demo was stopped), and the samples it would repeat are
    duplicates anyway.
    """
    from tqdm import tqdm

    from agents.sim import demo_fleet
    from apps.telemetry.models import RawSample
    from apps.telemetry.services import gpu_samples_ingest

    fleet = demo_fleet()
    now_ts = int(timezone.now().timestamp())
    end = now_ts - now_ts % HISTORY_INTERVAL_S
    start = end - days * 86_400
    hostnames = [node.hostname for node in fleet.nodes]
    nodes = {node.hostname: node for node in Node.objects.filter(hostname__in=hostnames)}
    newest = (
        RawSample.objects.filter(gpu__node__in=nodes.values())
        .order_by("-ts")
        .values_list("ts", flat=True)
        .first()
    )
    if newest is not None:
        start = max(start, newest - newest % HISTORY_INTERVAL_S + HISTORY_INTERVAL_S)
    counts = {"batches": 0, "accepted": 0, "duplicates": 0}
    if start >= end:
        return counts
    chunks = -(-(end - start) // HISTORY_BATCH_S) + 1
    with tqdm(
        total=chunks * len(nodes),
        unit="batch",
        desc=f"history {days} d",
        disable=not progress,
        mininterval=1,
    ) as bar:
        batches = fleet.batches(
            start, end, interval=HISTORY_INTERVAL_S, batch_seconds=HISTORY_BATCH_S
        )
        for hostname, payload in batches:
            node = nodes.get(hostname)
            if node is None:
                continue
            result = gpu_samples_ingest(node=node, batch=payload, live=False)
            counts["batches"] += 1
            counts["accepted"] += result.accepted
            counts["duplicates"] += result.duplicates
            bar.update(1)
    return counts


def demo_pipeline_run(*, progress: bool = True) -> dict[str, str]:
    """What Celery beat would have done while the history happened: close the allocations
    whose jobs stopped reporting, roll everything up, and look for waste.

    Returns one human line per step, for the command to print.
    """
    from tqdm import tqdm

    from apps.telemetry.rollups import rollups_run_pending
    from apps.tenancy.services import allocations_close_stale
    from apps.waste.services import waste_detect

    closed = allocations_close_stale()
    with tqdm(desc="rollups", unit="bucket", disable=not progress, mininterval=1) as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        rollup = rollups_run_pending(progress=advance)
    found = waste_detect()
    return {
        "allocations": f"{closed:,} finished jobs closed",
        "rollups": f"{rollup['buckets']:,} five-minute buckets rolled up in {rollup['seconds']:.0f} s",
        "waste": (
            f"{found.allocations:,} allocations checked, {found.opened:,} findings opened "
            f"({found.resolved:,} since resolved)"
        ),
    }


def demo_node_tokens_issue(*, path: Path) -> int:
    """Give every demo node a fresh token and write hostname -> token to ``path`` (JSON), for
    the simulated agents. Tokens are stored hashed, so they are re-issued on every start."""
    tokens = {node.hostname: node_token_issue(node=node) for node in Node.objects.all()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tokens, indent=1))
    path.chmod(0o600)
    return len(tokens)


@transaction.atomic
def demo_organisation_seed() -> dict[str, int]:
    """Create or update the demo organisation; returns counts of what exists afterwards."""
    role_groups_ensure()
    teams = {}
    for slug, (name, cost_center) in DEMO_TEAMS.items():
        teams[slug], _ = Team.objects.update_or_create(
            slug=slug, defaults={"name": name, "cost_center": cost_center}
        )
    projects = {}
    for slug, (team_slug, name) in DEMO_PROJECTS.items():
        projects[slug], _ = Project.objects.update_or_create(
            slug=slug, defaults={"name": name, "team": teams[team_slug]}
        )

    now = timezone.now()
    for spec in demo_fleet_nodes():
        cluster, _ = Cluster.objects.get_or_create(
            slug=spec["cluster"], defaults={"name": spec["cluster"].replace("-", " ").title()}
        )
        node, _ = Node.objects.update_or_create(
            hostname=spec["hostname"],
            defaults={"cluster": cluster},
        )
        for gpu in spec["gpus"]:
            Gpu.objects.update_or_create(
                uuid=gpu["uuid"],
                defaults={
                    "node": node,
                    "index": gpu["index"],
                    "model_name": gpu["model"],
                    "mem_total_mib": gpu["mem_total_mib"],
                    "first_seen_at": now,
                },
            )

    User = get_user_model()
    users = {}
    for demo_user in DEMO_USERS:
        user, _ = User.objects.get_or_create(
            username=demo_user.username, defaults={"email": demo_user.email}
        )
        user.set_password(DEMO_PASSWORD)
        user.is_staff = demo_user.username in ("admin", "finance")
        user.save()
        users[demo_user.username] = user
    from apps.chargeback.services import rate_card_demo_seed

    rate_card_demo_seed()  # H100, A100 and L40S prices
    users["admin"].groups.add(Group.objects.get(name=FLEET_ADMINS_GROUP))
    users["finance"].groups.add(Group.objects.get(name=FINANCE_GROUP))
    Membership.objects.get_or_create(
        user=users["owner"], team=teams["nlp"], defaults={"role": Membership.Role.MEMBER}
    )
    projects["llm-pretrain"].owners.add(users["owner"])
    projects["llm-finetune"].owners.add(users["owner"])
    Membership.objects.get_or_create(
        user=users["member"], team=teams["vision"], defaults={"role": Membership.Role.MEMBER}
    )
    return {
        "teams": Team.objects.count(),
        "projects": Project.objects.count(),
        "clusters": Cluster.objects.count(),
        "nodes": Node.objects.count(),
        "gpus": Gpu.objects.count(),
    }
