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
